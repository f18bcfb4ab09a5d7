"""The worker's and the reaper's guarded transitions, on PostgreSQL and SQLite,
without a broker: claim, duplicate messages, take-over, reaping, outcomes."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from worker_helpers import Stack, stack, tiny_spec

from pgd_service.db.models import Job, MetricPoint
from pgd_service.db.types import utcnow
from pgd_service.lifecycle import job_values
from pgd_service.maintenance import reap
from worker.execution import Outcome, claim, execute, finish
from worker.reporting import LostOwnership, Reporter, forget_steps_after

BROKER_DOWN = "redis://127.0.0.1:1/0"


@pytest.fixture(params=["sqlite", "postgresql"])
def s(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Stack]:
    with stack(request.param, BROKER_DOWN, tmp_path) as result:
        yield result


def add_job(s: Stack, **values: object) -> str:
    job = Job(**job_values(spec=tiny_spec(), owner="u", max_attempts=3))
    for name, value in values.items():
        setattr(job, name, value)
    with s.sessions() as session:
        session.add(job)
        session.commit()
        return job.id


def age(s: Stack, job_id: str, seconds: float) -> None:
    """Make the job's heartbeat (and last update) ``seconds`` old."""
    then = utcnow() - timedelta(seconds=seconds)
    with s.sessions() as session:
        session.execute(
            sa.update(Job).where(Job.id == job_id).values(heartbeat_at=then, updated_at=then)
        )
        session.commit()


def test_claim_takes_only_the_queued_attempt_of_the_message(s: Stack):
    job_id = add_job(s, attempt=2)
    assert claim(s.sessions, job_id, 1, "w:1") is None  # an older attempt's message
    job = claim(s.sessions, job_id, 2, "w:2")
    assert (job.state, job.worker, job.started_at is not None) == ("running", "w:2", True)
    assert claim(s.sessions, job_id, 2, "w:3") is None  # a duplicate delivery
    assert s.job(job_id).worker == "w:2"


def test_duplicate_message_is_dropped_without_touching_the_job(s: Stack):
    job_id = add_job(s, state="cancelled")
    assert execute(job_id, 0, s.settings, worker="w", session_factory=s.sessions) == "dropped"
    job = s.job(job_id)
    assert (job.state, job.worker, job.started_at) == ("cancelled", None, None)


def test_concurrent_claims_one_winner(s: Stack):
    job_id = add_job(s)
    winners: list[str] = []
    barrier = threading.Barrier(6)

    def go(n: int) -> None:
        barrier.wait()
        if claim(s.sessions, job_id, 0, f"w:{n}") is not None:
            winners.append(f"w:{n}")

    threads = [threading.Thread(target=go, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(winners) == 1 and s.job(job_id).worker == winners[0]


def test_reaper_requeues_a_stale_job_then_fails_it_worker_lost(s: Stack):
    job_id = add_job(s, state="running", max_attempts=2)
    age(s, job_id, 1.0)
    assert reap_ids(s) == ([], [])  # 1 s old: within the 3 s timeout
    age(s, job_id, 10.0)
    assert reap_ids(s) == ([job_id], [])
    job = s.job(job_id)
    assert (job.state, job.attempt, job.lost_count, job.enqueued_at) == ("queued", 1, 1, None)
    claim(s.sessions, job_id, 1, "w")
    age(s, job_id, 10.0)
    assert reap_ids(s) == ([], [job_id])
    job = s.job(job_id)
    assert (job.state, job.reason, job.lost_count, job.attempt) == ("failed", "worker_lost", 2, 1)
    assert job.message == "the worker was lost 2 times (max_attempts = 2)"
    assert reap_ids(s) == ([], [])


def reap_ids(s: Stack) -> tuple[list[str], list[str]]:
    with s.sessions() as session:
        report = reap(session, s.settings)
    return report.requeued, report.lost


def test_reaper_finishes_a_stale_cancel_as_cancelled(s: Stack):
    job_id = add_job(s, state="cancelling", cancel_requested=True)
    age(s, job_id, 10.0)
    with s.sessions() as session:
        assert reap(session, s.settings).cancelled == [job_id]
    assert s.job(job_id).state == "cancelled"


def test_concurrent_reapers_requeue_once(s: Stack):
    job_id = add_job(s, state="running")
    age(s, job_id, 10.0)
    requeued: list[list[str]] = []
    barrier = threading.Barrier(4)

    def go() -> None:
        barrier.wait()
        requeued.append(reap_ids(s)[0])

    threads = [threading.Thread(target=go) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(map(len, requeued)) == [0, 0, 0, 1]
    assert (s.job(job_id).attempt, s.job(job_id).lost_count) == (1, 1)


def test_a_taken_over_worker_can_neither_report_nor_finish(s: Stack):
    job_id = add_job(s)
    claim(s.sessions, job_id, 0, "old")
    reporter = Reporter(s.sessions, job_id, 0, heartbeat_s=0.05, poll_s=0.05)
    reporter.start()
    reporter.on_metrics(1, {"loss": 1.5})
    time.sleep(0.3)
    assert s.points(job_id) == [("loss", 1, 1.5)]
    # The reaper gives the job a new attempt. The reporter beats every 50 ms, and a
    # beat landing between age() and the reaper's guarded UPDATE rightly keeps the
    # job (its worker is alive): age it again until the reaper wins once.
    deadline = time.monotonic() + 5
    while True:
        age(s, job_id, 10.0)
        reaped = reap_ids(s)[0]
        if reaped or time.monotonic() > deadline:
            break
    assert reaped == [job_id]
    reporter.on_metrics(2, {"loss": 1.25})
    deadline = time.monotonic() + 5
    while not reporter.lost and time.monotonic() < deadline:
        time.sleep(0.05)
    with pytest.raises(LostOwnership):
        reporter.should_stop()
    reporter.stop(flush=True)
    assert s.points(job_id) == [("loss", 1, 1.5)]  # nothing written after the take-over
    job = s.job(job_id)
    assert not finish(s.sessions, s.settings, job, 0, Outcome("succeeded", metrics={"AP": 1.0}))
    assert (s.job(job_id).state, s.results(job_id)) == ("queued", [])


def test_cancel_flag_reaches_should_stop(s: Stack):
    job_id = add_job(s)
    claim(s.sessions, job_id, 0, "w")
    reporter = Reporter(s.sessions, job_id, 0, heartbeat_s=0.2, poll_s=0.05)
    reporter.start()
    assert reporter.should_stop() is False
    with s.sessions() as session:
        session.execute(
            sa.update(Job).where(Job.id == job_id).values(state="cancelling", cancel_requested=True)
        )
        session.commit()
    deadline = time.monotonic() + 5
    while not reporter.should_stop() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert reporter.should_stop() is True
    reporter.stop()


def test_resume_drops_points_after_the_checkpoint_and_ignores_replayed_steps(s: Stack):
    job_id = add_job(s)
    claim(s.sessions, job_id, 0, "w")
    reporter = Reporter(s.sessions, job_id, 0, heartbeat_s=10, poll_s=10)
    reporter.start()
    for step in range(1, 7):
        reporter.on_metrics(step, {"loss": float(step)})
    reporter.stop(flush=True)
    assert forget_steps_after(s.sessions, job_id, 4) == 2
    reporter = Reporter(s.sessions, job_id, 0, heartbeat_s=10, poll_s=10)
    reporter.start()
    for step in range(4, 7):  # step 4 logged again by a resumed run: kept once
        reporter.on_metrics(step, {"loss": 10.0 * step})
    reporter.stop(flush=True)
    assert s.points(job_id) == [
        ("loss", 1, 1.0),
        ("loss", 2, 2.0),
        ("loss", 3, 3.0),
        ("loss", 4, 4.0),
        ("loss", 5, 50.0),
        ("loss", 6, 60.0),
    ]
    with s.sessions() as session:
        count = session.scalar(sa.select(sa.func.count()).select_from(MetricPoint))
    assert count == 6


def test_missing_teacher_checkpoint_fails_with_missing_file(s: Stack):
    spec = tiny_spec("tiny-fcos-pgd").model_copy(update={"teacher_ref": "no-such-teacher"})
    job = Job(**job_values(spec=spec, owner="u", max_attempts=3))
    with s.sessions() as session:
        session.add(job)
        session.commit()
    assert execute(job.id, 0, s.settings, worker="w", session_factory=s.sessions) == "failed"
    row = s.job(job.id)
    assert row.reason == "missing_file"
    assert "teacher_ref 'no-such-teacher'" in row.message and "does not exist" in row.message


def test_failure_reasons():
    import torch

    from pgd_core.data.manifest import DatasetError
    from pgd_core.runner import TrainingDiverged
    from worker.execution import JobInputError, _failure

    cases = [
        (TrainingDiverged(7, "loss_cls", float("nan")), "diverged"),
        (torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"), "out_of_memory"),
        (MemoryError(), "out_of_memory"),
        (FileNotFoundError("teacher checkpoint not found: /w/t.pth"), "missing_file"),
        (JobInputError("teacher_ref 'x': checkpoint file /w/x.pth does not exist"), "missing_file"),
        (DatasetError("instances_train.json: annotation 3 has a negative width"), "bad_dataset"),
        (ValueError("a distill run needs the teacher's checkpoint"), "invalid_spec"),
        (RuntimeError("something else"), "error"),
    ]
    for exc, reason in cases:
        outcome = _failure(exc)
        assert (outcome.state, outcome.reason) == ("failed", reason), exc
    assert _failure(cases[0][0]).message == "training diverged at iteration 7: loss_cls = nan"
    assert _failure(cases[-1][0]).message.startswith("RuntimeError: something else\n")


def test_the_api_process_runs_the_reaper(s: Stack):
    from fastapi.testclient import TestClient

    from api.main import create_app

    job_id = add_job(s, state="running")
    age(s, job_id, 10.0)
    settings = s.settings.model_copy(
        update={"run_maintenance": True, "maintenance_interval_s": 0.2}
    )
    app = create_app(settings)
    with TestClient(app):
        deadline = time.monotonic() + 10
        while s.job(job_id).state != "queued" and time.monotonic() < deadline:
            time.sleep(0.1)
    app.state.engine.dispose()
    assert (s.job(job_id).state, s.job(job_id).attempt) == ("queued", 1)


def test_a_stored_spec_that_no_longer_validates_fails_instead_of_looping(s: Stack):
    job_id = add_job(s)
    with s.sessions() as session:
        session.execute(sa.update(Job).where(Job.id == job_id).values(spec={"kind": "train"}))
        session.commit()
    assert execute(job_id, 0, s.settings, worker="w", session_factory=s.sessions) == "failed"
    job = s.job(job_id)
    assert (job.state, job.reason) == ("failed", "invalid_spec")
    assert "detector" in job.message and "dataset" in job.message
