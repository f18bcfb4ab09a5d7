"""The job state machine of pgd_service.lifecycle, executed: every transition its
TRANSITIONS table names happens through the function that owns it, no function
moves a job out of a state it does not own, and no other module writes a job's
state. On SQLite and PostgreSQL; the broker refuses connections, so a send fails
and leaves the job to the re-sender (``enqueued_at`` cleared)."""

from __future__ import annotations

import ast
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from db_helpers import migrated_app
from fastapi import FastAPI
from sqlalchemy.orm import Session

from pgd_core.presets import get_preset
from pgd_service import lifecycle
from pgd_service.db.models import JOB_STATES, Job
from pgd_service.db.types import utcnow

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def app(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[FastAPI]:
    yield from migrated_app(request.param, tmp_path_factory, broker_url="redis://127.0.0.1:1/0")


@pytest.fixture
def session(app: FastAPI) -> Iterator[Session]:
    with app.state.session_factory() as db_session:
        yield db_session


def _job(db_session: Session, state: str, *, teacher: str | None = None, **values: Any) -> str:
    """A job stored through lifecycle.insert_jobs, then put in ``state`` directly."""
    spec = get_preset("tiny-fcos-pgd" if teacher else "tiny-fcos-teacher")
    row = lifecycle.job_values(spec=spec, owner="lifecycle", max_attempts=3, teacher_job_id=teacher)
    assert lifecycle.insert_jobs(db_session, [row]) == [True]
    db_session.commit()
    job = db_session.get(Job, row["id"])
    assert job is not None
    job.state = state
    for name, value in values.items():
        setattr(job, name, value)
    db_session.commit()
    return row["id"]


def _state(db_session: Session, job_id: str) -> str:
    job = db_session.get(Job, job_id, populate_existing=True)
    assert job is not None
    return job.state


def _get(db_session: Session, job_id: str) -> Job:
    job = db_session.get(Job, job_id, populate_existing=True)
    assert job is not None
    return job


# Each move: (name, from, to, how) where how(session, settings, job_id) makes it.
Move = Callable[[Session, Any, str], Any]


def _release(s: Session, settings: Any, job_id: str) -> Any:
    teacher = _get(s, job_id).teacher_job_id
    assert teacher is not None
    _get(s, teacher).state = "succeeded"
    s.commit()
    return lifecycle.settle_students(s, settings, teacher)


def _teacher_lost(s: Session, settings: Any, job_id: str) -> Any:
    teacher = _get(s, job_id).teacher_job_id
    assert teacher is not None
    _get(s, teacher).state = "failed"
    s.commit()
    return lifecycle.settle_students(s, settings, teacher)


def _finish(state: str) -> Move:
    def move(s: Session, settings: Any, job_id: str) -> Any:
        ok = lifecycle.finish(s, job_id, _get(s, job_id).attempt, state=state)
        s.commit()
        return ok

    return move


def _lose(s: Session, settings: Any, job_id: str) -> Any:
    job = _get(s, job_id)
    return lifecycle.lose_worker(
        s,
        job_id=job_id,
        state=job.state,
        attempt=job.attempt,
        lost_count=job.lost_count,
        max_attempts=job.max_attempts,
        stale=utcnow(),
    )


def _rank_lost(s: Session, settings: Any, job_id: str) -> Any:
    return lifecycle.requeue_lost_rank(s, job_id, _get(s, job_id).attempt, "killed by SIGKILL")


def _claim(s: Session, settings: Any, job_id: str) -> Any:
    return lifecycle.claim(s, job_id, _get(s, job_id).attempt, "w1")


def _cancel(s: Session, settings: Any, job_id: str) -> Any:
    return lifecycle.cancel(s, settings, _get(s, job_id))


def _retry(s: Session, settings: Any, job_id: str) -> Any:
    return lifecycle.retry(s, settings, _get(s, job_id))


OLD = utcnow() - timedelta(hours=1)
#: (from, to): how the test puts a job in ``from`` (teacher state, extra columns)
#: and which function moves it.
CASES: dict[tuple[str, str], tuple[str | None, dict[str, Any], Move]] = {
    ("waiting", "queued"): ("running", {}, _release),
    ("waiting", "failed"): ("running", {}, _teacher_lost),
    ("waiting", "cancelled"): ("running", {}, _cancel),
    ("queued", "running"): (None, {}, _claim),
    ("queued", "cancelled"): (None, {}, _cancel),
    ("running", "succeeded"): (None, {}, _finish("succeeded")),
    ("running", "failed"): (None, {}, _finish("failed")),
    ("running", "cancelled"): (None, {}, _finish("cancelled")),
    ("running", "cancelling"): (None, {}, _cancel),
    ("running", "queued"): (None, {"heartbeat_at": OLD}, _lose),
    ("cancelling", "cancelled"): (None, {"heartbeat_at": OLD}, _lose),
    ("cancelling", "succeeded"): (None, {}, _finish("succeeded")),
    ("cancelling", "failed"): (None, {}, _finish("failed")),
    ("failed", "queued"): (None, {}, _retry),
    ("failed", "waiting"): ("running", {}, _retry),
    ("cancelled", "queued"): (None, {}, _retry),
    ("cancelled", "waiting"): ("running", {}, _retry),
}


def test_the_table_names_every_state_and_every_case() -> None:
    assert set(lifecycle.STATES) == set(JOB_STATES)
    assert set(CASES) == set(lifecycle.TRANSITIONS)
    moved = {s for pair in lifecycle.TRANSITIONS for s in pair}
    assert moved == set(JOB_STATES)
    # Nothing leaves succeeded; everything else can move on.
    assert {src for src, _ in lifecycle.TRANSITIONS} == set(JOB_STATES) - {"succeeded"}


@pytest.mark.parametrize("move", sorted(CASES), ids=lambda m: f"{m[0]}->{m[1]}")
def test_each_transition_happens_through_its_function(
    app: FastAPI, session: Session, move: tuple[str, str]
) -> None:
    source, target = move
    teacher_state, values, how = CASES[move]
    teacher = _job(session, teacher_state) if teacher_state else None
    job_id = _job(session, source, teacher=teacher, **values)
    how(session, app.state.settings, job_id)
    assert _state(session, job_id) == target


def test_the_lost_worker_fails_the_job_at_max_attempts(app: FastAPI, session: Session) -> None:
    job_id = _job(session, "running", heartbeat_at=OLD, lost_count=2)
    assert _lose(session, app.state.settings, job_id) == "failed"
    job = _get(session, job_id)
    assert (job.state, job.reason, job.lost_count) == ("failed", "worker_lost", 3)


def test_a_lost_rank_requeues_its_attempt_once_and_fails_at_max_attempts(
    app: FastAPI, session: Session
) -> None:
    job_id = _job(session, "running", attempt=1, lost_count=1)
    assert lifecycle.requeue_lost_rank(session, job_id, 0, "killed by SIGKILL") is None  # stale
    assert _rank_lost(session, app.state.settings, job_id) == "queued"
    job = _get(session, job_id)
    assert (job.state, job.attempt, job.lost_count, job.enqueued_at) == ("queued", 2, 2, None)
    assert job.message == "attempt 1: killed by SIGKILL; resuming from the last checkpoint"
    assert _rank_lost(session, app.state.settings, job_id) is None  # no longer running
    last = _job(session, "running", lost_count=2)
    assert _rank_lost(session, app.state.settings, last) == "failed"
    job = _get(session, last)
    assert (job.state, job.reason, job.lost_count) == ("failed", "worker_lost", 3)
    assert job.message == "a rank was lost (killed by SIGKILL) 3 times (max_attempts = 3)"
    stopping = _job(session, "cancelling")
    assert _rank_lost(session, app.state.settings, stopping) == "cancelled"


def test_a_queued_job_that_cannot_be_sent_is_left_to_the_resender(
    app: FastAPI, session: Session
) -> None:
    job_id = _job(session, "failed")
    assert _retry(session, app.state.settings, job_id) is True
    job = _get(session, job_id)
    assert (job.state, job.attempt, job.enqueued_at) == ("queued", 1, None)


#: Each function and the states it may move a job out of.
OWNERS: dict[str, tuple[tuple[str, ...], Move]] = {
    "claim": (("queued",), _claim),
    "finish": (lifecycle.ACTIVE, _finish("failed")),
    "cancel": (lifecycle.CANCELLABLE, _cancel),
    "retry": (lifecycle.RETRYABLE, _retry),
    "lose_worker": (lifecycle.ACTIVE, _lose),
    "requeue_lost_rank": (lifecycle.ACTIVE, _rank_lost),
}


@pytest.mark.parametrize("name", sorted(OWNERS))
def test_no_function_moves_a_job_out_of_a_state_it_does_not_own(
    app: FastAPI, session: Session, name: str
) -> None:
    owned, how = OWNERS[name]
    for state in JOB_STATES:
        if state in owned:
            continue
        job_id = _job(session, state, heartbeat_at=OLD)
        before = _get(session, job_id)
        attempt, updated = before.attempt, before.updated_at
        how(session, app.state.settings, job_id)
        after = _get(session, job_id)
        assert (after.state, after.attempt, after.updated_at) == (state, attempt, updated), (
            name,
            state,
        )


def test_a_stale_attempt_cannot_finish_or_beat(app: FastAPI, session: Session) -> None:
    job_id = _job(session, "running", attempt=2)
    assert lifecycle.finish(session, job_id, 1, state="succeeded") is False
    assert lifecycle.beat(session, job_id, 1, progress=0.5) is False
    session.commit()
    assert lifecycle.beat(session, job_id, 2, progress=0.5) is True
    session.commit()
    job = _get(session, job_id)
    assert (job.state, job.progress) == ("running", 0.5)
    with pytest.raises(ValueError, match="not a terminal state"):
        lifecycle.finish(session, job_id, 2, state="queued")


def _writers_of_jobs(path: Path) -> list[str]:
    """Calls in ``path`` that write the jobs table: ``update(Job)``, ``insert(Job)``,
    ``Job(...)`` and assignments to ``<x>.state``."""
    tree = ast.parse(path.read_text(), str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            func = node.func
            name = func.id if isinstance(func, ast.Name) else getattr(func, "attr", "")
            args = [a.id for a in node.args if isinstance(a, ast.Name)]
            if name in ("update", "insert") and "Job" in args:
                found.append(f"{path.name}:{node.lineno} {name}(Job)")
            if name == "Job":
                found.append(f"{path.name}:{node.lineno} Job(...)")
        elif isinstance(node, ast.Assign):
            for target in node.targets:
                if isinstance(target, ast.Attribute) and target.attr == "state":
                    found.append(f"{path.name}:{node.lineno} .state =")
    return found


def test_only_the_lifecycle_writes_a_job() -> None:
    """Every UPDATE, INSERT and state assignment of ``jobs`` in the service is in
    pgd_service/lifecycle.py (tests may set states directly; the service may not)."""
    lifecycle_file = ROOT / "pgd_service" / "lifecycle.py"
    assert _writers_of_jobs(lifecycle_file), "the scan finds nothing: it is broken"
    elsewhere = [
        hit
        for package in ("api", "worker", "pgd_service")
        for path in sorted((ROOT / package).rglob("*.py"))
        if path != lifecycle_file
        for hit in _writers_of_jobs(path)
    ]
    assert elsewhere == []


def test_routes_hold_no_sql_and_reach_the_app_one_way() -> None:
    """Route modules map HTTP to services: no SQL, no broker, no ``app.state``."""
    for path in sorted((ROOT / "api" / "routes").glob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module:
                root = node.module.split(".")[0]
                assert root not in ("kombu", "celery", "psycopg"), (path.name, node.module)
                if root == "sqlalchemy":
                    names = {a.name for a in node.names}
                    assert names <= {"Session", "sessionmaker", "Engine"}, (path.name, names)
            if isinstance(node, ast.Attribute) and node.attr == "state":
                assert not (isinstance(node.value, ast.Attribute) and node.value.attr == "app"), (
                    f"{path.name}:{node.lineno} reads app.state"
                )


@pytest.mark.parametrize("how", ["retry", "release"])
def test_a_transition_that_queues_sends_exactly_the_attempt_it_produced(
    app: FastAPI, session: Session, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    """Right after this transition commits, a cancel and a retry move the job on to
    the next attempt before the first sender sends. Each attempt must be sent once:
    reading the row again after the commit would send the second twice and the
    first never."""
    import sqlalchemy as sa

    from pgd_service import queue

    sent: list[int] = []
    monkeypatch.setattr(queue, "publish", lambda settings, **m: sent.append(m["attempt"]) or True)
    settings = app.state.settings
    if how == "retry":
        job_id = _job(session, "failed")
    else:
        teacher = _job(session, "succeeded")
        job_id = _job(session, "waiting", teacher=teacher)
    before = _get(session, job_id).attempt
    raced: list[bool] = []

    def race(committed: Session) -> None:
        if raced:
            return
        raced.append(True)
        with app.state.session_factory() as other:
            job = other.get(Job, job_id)
            assert lifecycle.cancel(other, settings, job)
            assert lifecycle.retry(other, settings, other.get(Job, job_id))

    sa.event.listen(session, "after_commit", race)
    try:
        if how == "retry":
            assert lifecycle.retry(session, settings, _get(session, job_id))
        else:
            assert lifecycle.release(session, settings, job_id)
    finally:
        sa.event.remove(session, "after_commit", race)
    produced = before + 1 if how == "retry" else before
    assert sorted(sent) == [produced, produced + 1]
    assert _get(session, job_id).attempt == produced + 1
