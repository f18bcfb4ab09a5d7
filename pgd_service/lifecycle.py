"""The job lifecycle: its states, who moves a job between them, and every UPDATE
that does it.

Read top to bottom, this module is the state machine of docs/architecture.md::

    (new) ---------------------------> queued | waiting        create, insert_jobs
    waiting --teacher succeeded------> queued                   release
    waiting --teacher failed/cancelled> failed (teacher_failed) fail_student
    queued --a worker takes it-------> running                  claim
    running/cancelling --beat--------> (same state)             beat
    running/cancelling --outcome-----> succeeded|failed|cancelled finish
    waiting/queued --cancel----------> cancelled                cancel
    running --cancel-----------------> cancelling               cancel
    running --heartbeat stale--------> queued (attempt + 1)     lose_worker
    running --lost max_attempts times> failed (worker_lost)     lose_worker
    running --a rank died------------> queued (attempt + 1)     requeue_lost_rank
    cancelling --heartbeat stale-----> cancelled                lose_worker
    failed/cancelled --retry---------> queued | waiting         retry

Every transition is one guarded UPDATE: a compare-and-set on the state (and on
the attempt wherever a worker is involved). Two actors racing for one job (a
worker finishing it while a user cancels it, two reapers, a duplicate message)
can never both win; the loser's UPDATE matches no row and it backs off.

A queued job is stored already marked as sent (a task id and ``enqueued_at``)
and published after its commit (:func:`send`); a send that fails clears
``enqueued_at`` (:func:`mark_unsent`) and the re-sender (pgd_service.maintenance)
sends every queued job whose send failed or is old (:func:`resend`). Nothing
else in the service writes ``jobs.state``: ``tests/test_layering.py`` checks it.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from functools import lru_cache
from typing import Any, cast

from sqlalchemy import ColumnElement, Table, and_, bindparam, case, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session, aliased
from sqlalchemy.sql.base import Executable

from pgd_service import queue
from pgd_service.db.models import JOB_STATES, Job, next_job_seq
from pgd_service.db.types import rowcount, utcnow
from pgd_service.settings import Settings

log = logging.getLogger("pgd.lifecycle")

# -- the states ---------------------------------------------------------------

#: Every state, in the order a job usually meets them (the schema's CHECK).
STATES = JOB_STATES
#: A worker holds the job and writes its heartbeat.
ACTIVE: tuple[str, ...] = ("running", "cancelling")
#: Nothing moves the job any more, except a retry of a failed or cancelled one.
TERMINAL: tuple[str, ...] = ("succeeded", "failed", "cancelled")
RETRYABLE: tuple[str, ...] = ("failed", "cancelled")
CANCELLABLE: tuple[str, ...] = ("waiting", "queued", "running")
#: States of a teacher job a new student may wait for (it is stored ``waiting``).
TEACHER_PENDING: tuple[str, ...] = ("waiting", "queued", "running")
#: Terminal states of a teacher that its students cannot start from.
TEACHER_LOST: tuple[str, ...] = ("failed", "cancelled")

#: (from, to) -> who makes the move. The functions below are the only writers.
TRANSITIONS: dict[tuple[str, str], str] = {
    ("waiting", "queued"): "release: the teacher job succeeded (worker, API, maintenance)",
    ("waiting", "failed"): "fail_student: the teacher job failed or was cancelled",
    ("waiting", "cancelled"): "cancel: the API",
    ("queued", "running"): "claim: a worker with the message of this attempt",
    ("queued", "cancelled"): "cancel: the API",
    ("running", "succeeded"): "finish: the worker",
    ("running", "failed"): "finish: the worker; lose_worker, requeue_lost_rank after "
    "max_attempts losses",
    ("running", "cancelled"): "finish: the worker stopped at a cancel it saw itself",
    ("running", "cancelling"): "cancel: the API (the worker stops at its next poll)",
    ("running", "queued"): "lose_worker: maintenance, heartbeat stale, attempts left; "
    "requeue_lost_rank: the worker, a rank of its multi-process run died",
    ("cancelling", "cancelled"): "finish: the worker stopped; lose_worker: maintenance; "
    "requeue_lost_rank",
    ("cancelling", "succeeded"): "finish: the worker ended before it saw the cancel",
    ("cancelling", "failed"): "finish: the worker failed before it saw the cancel",
    ("failed", "queued"): "retry: the API",
    ("failed", "waiting"): "retry: the API, the teacher job is unfinished",
    ("cancelled", "queued"): "retry: the API",
    ("cancelled", "waiting"): "retry: the API, the teacher job is unfinished",
}


def new_task_id() -> str:
    return str(uuid.uuid4())


def _jobs() -> Table:
    return cast(Table, Job.__table__)


def _set(
    db_session: Session, guard: Iterable[ColumnElement[bool]], values: Mapping[str, Any]
) -> bool:
    """The one way this module writes a job: UPDATE ... WHERE <guard>; True when the
    guard matched one row. The caller commits."""
    result = db_session.execute(
        update(Job).where(*guard).values(**values).execution_options(synchronize_session=False)
    )
    return rowcount(result) == 1


def _set_returning(
    db_session: Session, guard: Iterable[ColumnElement[bool]], values: Mapping[str, Any]
) -> dict[str, Any] | None:
    """:func:`_set`, returning what a sender needs of the row it wrote (id, attempt,
    spec, task_id) as the UPDATE left it, or None when the guard matched nothing.

    A transition that queues a job sends exactly the attempt it produced: reading
    the row again after the commit could see a later attempt (a cancel and a second
    retry in between) and send that one twice and this one never.
    """
    row = db_session.execute(
        update(Job)
        .where(*guard)
        .values(**values)
        .returning(*(getattr(Job, c) for c in _SEND_FIELDS))
        .execution_options(synchronize_session=False)
    ).first()
    return None if row is None else dict(row._mapping)


# -- (new) -> queued | waiting ---------------------------------------------------


def job_values(
    *,
    spec: Any,
    owner: str,
    max_attempts: int,
    spec_hash: str | None = None,
    sweep_id: str | None = None,
    study_id: str | None = None,
    teacher_job_id: str | None = None,
    waiting: bool = False,
    idempotency_key: str | None = None,
    job_id: str | None = None,
    now: datetime | None = None,
) -> dict[str, Any]:
    """Every column of a new job but ``seq`` (numbered by the database).

    ``spec`` is a pgd_core.spec.RunSpec. A queued job is stored already marked as
    sent (a task id and ``enqueued_at``), because it is sent right after its
    commit; a ``waiting`` job (its teacher job has not finished) is sent by
    :func:`release`. ``spec_hash``: ``spec.spec_hash()`` if the caller has it."""
    now = now or utcnow()
    baseline = spec.baseline_spec()
    return {
        "id": job_id or str(uuid.uuid4()),
        "kind": spec.kind,
        "detector": spec.detector,
        "dataset": spec.dataset.name,
        "method": spec.method,
        "spec": spec.model_dump(mode="json"),
        "spec_hash": spec_hash if spec_hash is not None else spec.spec_hash(),
        "config_hash": spec.config_hash(),
        "seed": spec.seed,
        "baseline_hash": baseline.config_hash() if baseline is not None else None,
        "state": "waiting" if waiting else "queued",
        "reason": None,
        "message": None,
        "attempt": 0,
        "max_attempts": max_attempts,
        "progress": 0.0,
        "heartbeat_at": None,
        "owner": owner,
        "idempotency_key": idempotency_key,
        "cancel_requested": False,
        "cancel_requested_at": None,
        "lost_count": 0,
        "enqueued_at": None if waiting else now,
        "task_id": None if waiting else new_task_id(),
        "worker": None,
        "sweep_id": sweep_id,
        "study_id": study_id,
        "teacher_job_id": teacher_job_id,
        "created_at": now,
        "updated_at": now,
        "started_at": None,
        "finished_at": None,
    }


@lru_cache(maxsize=4)
def insert_statement(dialect: str) -> Executable:
    """``INSERT INTO jobs ... ON CONFLICT DO NOTHING`` with one bound parameter per
    :func:`job_values` key (``v_<column>``). Nothing is looked up first: the unique
    (owner, idempotency_key) index turns a replayed key into no row."""
    jobs = _jobs()
    values: dict[str, Any] = {
        c.name: bindparam(f"v_{c.name}", type_=c.type, required=True)
        for c in jobs.c
        if c.name != "seq"
    }
    if dialect == "postgresql":
        statement: Any = postgresql.insert(jobs)
    elif dialect == "sqlite":
        values["seq"] = next_job_seq()
        statement = sqlite.insert(jobs)
    else:
        raise ValueError(f"unsupported database {dialect!r}: use PostgreSQL or SQLite")
    # RETURNING says whether the row was stored (psycopg reports no row count here).
    return statement.values(values).on_conflict_do_nothing().returning(jobs.c.id)


def insert_jobs(db_session: Session, rows: Sequence[Mapping[str, Any]]) -> list[bool]:
    """Store new jobs (each :func:`job_values`) in the caller's transaction, in order
    (a teacher before the students whose foreign key points at it); for each,
    whether it was stored (False: its idempotency key was used before). The only
    way a job is created: ``POST /jobs``, sweeps and studies all come here."""
    statement = insert_statement(db_session.get_bind().dialect.name)
    return [
        db_session.execute(statement, {f"v_{k}": v for k, v in row.items()}).first() is not None
        for row in rows
    ]


# -- publishing a queued job --------------------------------------------------


def mark_unsent(db_session: Session, job_ids: Sequence[str], *, attempt: int | None = None) -> None:
    """Clear ``enqueued_at`` of queued jobs whose message was not sent, so that the
    re-sender takes them at its next pass (commits)."""
    if not job_ids:
        return
    guard = [Job.id.in_(job_ids), Job.state == "queued"]
    if attempt is not None:
        guard.append(Job.attempt == attempt)
    db_session.execute(
        update(Job)
        .where(*guard)
        .values(enqueued_at=None, updated_at=utcnow())
        .execution_options(synchronize_session=False)
    )
    db_session.commit()


def send(db_session: Session, settings: Settings, job: Mapping[str, Any] | Job) -> bool:
    """Publish a committed queued job stored already marked as sent; a failed send
    clears ``enqueued_at`` (:func:`mark_unsent`). ``job``: a Job or its column values."""
    row = job if isinstance(job, Mapping) else {c: getattr(job, c) for c in _SEND_FIELDS}
    sent = queue.publish(
        settings,
        job_id=row["id"],
        attempt=row["attempt"],
        queue=queue.queue_for(row["spec"]),
        task_id=row["task_id"] or new_task_id(),
    )
    if not sent:
        mark_unsent(db_session, [row["id"]], attempt=row["attempt"])
    return sent


_SEND_FIELDS = ("id", "attempt", "spec", "task_id")


def send_all(db_session: Session, settings: Settings, jobs: Sequence[Job]) -> None:
    """Send committed queued jobs in order; after the first failure the rest are left
    unsent for the re-sender instead of each waiting for the broker."""
    for index, job in enumerate(jobs):
        if not send(db_session, settings, job):
            mark_unsent(db_session, [other.id for other in jobs[index + 1 :]])
            return


def resend(db_session: Session, settings: Settings, job_id: str, attempt: int) -> bool:
    """Send a queued job again under a new task id; True when the broker took it."""
    spec = db_session.scalar(
        select(Job.spec).where(Job.id == job_id, Job.state == "queued", Job.attempt == attempt)
    )
    if spec is None:
        return False
    task_id = new_task_id()
    if not queue.publish(
        settings, job_id=job_id, attempt=attempt, queue=queue.queue_for(spec), task_id=task_id
    ):
        return False
    guard = (Job.id == job_id, Job.state == "queued", Job.attempt == attempt)
    _set(db_session, guard, {"enqueued_at": utcnow(), "task_id": task_id})
    db_session.commit()
    return True


# -- waiting -> queued | failed -------------------------------------------------


@dataclass
class Settled:
    released: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)


def release(db_session: Session, settings: Settings, job_id: str) -> bool:
    """waiting -> queued, stored already marked as sent, then sent (commits)."""
    now = utcnow()
    produced = _set_returning(
        db_session,
        (Job.id == job_id, Job.state == "waiting"),
        {
            "state": "queued",
            "task_id": new_task_id(),
            "enqueued_at": now,
            "updated_at": now,
            "message": None,
        },
    )
    db_session.commit()
    if produced is None:
        return False
    send(db_session, settings, produced)
    return True


def fail_student(db_session: Session, job_id: str, teacher: Job) -> bool:
    """waiting -> failed (``teacher_failed``), naming the teacher and how it ended."""
    now = utcnow()
    why = f" ({teacher.reason})" if teacher.reason else ""
    failed = _set(
        db_session,
        (Job.id == job_id, Job.state == "waiting"),
        {
            "state": "failed",
            "reason": "teacher_failed",
            "message": f"teacher job {teacher.id} ended {teacher.state}{why}; "
            "retry the teacher, then this job",
            "finished_at": now,
            "updated_at": now,
        },
    )
    db_session.commit()
    return failed


def settle_students(db_session: Session, settings: Settings, teacher_job_id: str) -> Settled:
    """Release or fail the waiting students of one teacher, by the teacher's state.

    Called by the worker right after it records a teacher's outcome, by the API
    on cancel, retry and create, and by every maintenance pass
    (:func:`settle_waiting`) for anything those missed."""
    settled = Settled()
    teacher = db_session.get(Job, teacher_job_id, populate_existing=True)
    if teacher is None or teacher.state not in ("succeeded", *TEACHER_LOST):
        return settled
    students = db_session.scalars(
        select(Job.id)
        .where(Job.teacher_job_id == teacher_job_id, Job.state == "waiting")
        .order_by(Job.seq)
    ).all()
    for job_id in students:
        if teacher.state == "succeeded":
            if release(db_session, settings, job_id):
                settled.released.append(job_id)
        elif fail_student(db_session, job_id, teacher):
            settled.failed.append(job_id)
    if settled.released or settled.failed:
        log.info(
            "teacher %s %s: %d students queued, %d failed",
            teacher_job_id,
            teacher.state,
            len(settled.released),
            len(settled.failed),
        )
    return settled


def settle_waiting(db_session: Session, settings: Settings) -> Settled:
    """Every waiting job whose teacher has finished (the maintenance pass)."""
    teacher = aliased(Job)
    teachers = db_session.scalars(
        select(teacher.id)
        .join(Job, Job.teacher_job_id == teacher.id)
        .where(Job.state == "waiting", teacher.state.in_(("succeeded", *TEACHER_LOST)))
        .distinct()
    ).all()
    settled = Settled()
    for teacher_job_id in teachers:
        one = settle_students(db_session, settings, teacher_job_id)
        settled.released.extend(one.released)
        settled.failed.extend(one.failed)
    return settled


# -- queued -> running, and the worker's writes while it runs ------------------------


def owned(job_id: str, attempt: int) -> tuple[ColumnElement[bool], ...]:
    """The guard of every write of the worker running ``attempt``: the job is still
    that attempt's and still held by a worker (the reaper may have taken it over)."""
    return (Job.id == job_id, Job.attempt == attempt, Job.state.in_(ACTIVE))


def claim(db_session: Session, job_id: str, attempt: int, worker: str) -> Job | None:
    """queued -> running for exactly this attempt (commits); None when the message is
    stale (another attempt, or no longer queued)."""
    now = utcnow()
    guard = (Job.id == job_id, Job.attempt == attempt, Job.state == "queued")
    if not _set(
        db_session,
        guard,
        {"state": "running", "worker": worker, "heartbeat_at": now, "updated_at": now},
    ):
        db_session.rollback()
        return None
    _set(db_session, (Job.id == job_id, Job.started_at.is_(None)), {"started_at": now})
    db_session.commit()
    return db_session.get(Job, job_id, populate_existing=True)


def beat(db_session: Session, job_id: str, attempt: int, *, progress: float | None) -> bool:
    """The heartbeat (and progress) of the worker holding ``attempt``; False when it
    no longer holds the job. The caller commits (metric points go in the same
    transaction)."""
    values: dict[str, Any] = {"heartbeat_at": utcnow()}
    if progress is not None:
        values["progress"] = progress
    return _set(db_session, owned(job_id, attempt), values)


def finish(
    db_session: Session,
    job_id: str,
    attempt: int,
    *,
    state: str,
    reason: str | None = None,
    message: str | None = None,
) -> bool:
    """running / cancelling -> succeeded, failed or cancelled for the worker holding
    ``attempt``; False when it was taken over. The caller commits (the result and
    the artifacts go in the same transaction)."""
    if state not in TERMINAL:
        raise ValueError(f"finish: {state!r} is not a terminal state ({', '.join(TERMINAL)})")
    now = utcnow()
    values: dict[str, Any] = {
        "state": state,
        "reason": reason,
        "message": message,
        "finished_at": now,
        "heartbeat_at": now,
        "updated_at": now,
    }
    if state == "succeeded":
        values["progress"] = 1.0
    return _set(db_session, owned(job_id, attempt), values)


# -- cancel -------------------------------------------------------------------------


def cancel(db_session: Session, settings: Settings, job: Job) -> bool:
    """waiting / queued -> cancelled, running -> cancelling (commits); False when the
    job has already finished. Students waiting for a job cancelled at once fail
    with it. A second cancel of a job still stopping is accepted again."""
    now = utcnow()
    at_once = Job.state.in_(("waiting", "queued"))
    changed = _set(
        db_session,
        (Job.id == job.id, Job.state.in_(CANCELLABLE)),
        {
            "state": case((at_once, "cancelled"), else_="cancelling"),
            "cancel_requested": case((at_once, Job.cancel_requested), else_=True),
            "cancel_requested_at": case((at_once, Job.cancel_requested_at), else_=now),
            "finished_at": case((at_once, now), else_=Job.finished_at),
            "updated_at": now,
        },
    )
    db_session.commit()
    db_session.refresh(job)
    if job.state == "cancelled":
        settle_students(db_session, settings, job.id)
    return changed or job.state == "cancelling"


# -- a lost worker (maintenance) -------------------------------------------------------


def lose_worker(
    db_session: Session,
    *,
    job_id: str,
    state: str,
    attempt: int,
    lost_count: int,
    max_attempts: int,
    stale: datetime,
) -> str | None:
    """A job whose heartbeat is older than ``stale``: cancelling -> cancelled, running ->
    queued with the attempt raised (resumes from its last checkpoint) or, the
    ``max_attempts``-th time, failed (``worker_lost``). Commits; returns the new
    state, or None when the job moved meanwhile (its worker beat again) or ``state``
    is not one a worker holds."""
    if state not in ACTIVE:
        return None
    now = utcnow()
    values = _lost_values(
        state,
        attempt,
        lost_count,
        max_attempts,
        lost="the worker was lost",
        resumed=f"attempt {attempt} lost its worker",
    )
    values["updated_at"] = now
    guard = (
        Job.id == job_id,
        Job.state == state,
        Job.attempt == attempt,
        or_(Job.heartbeat_at < stale, Job.heartbeat_at.is_(None)),
    )
    moved = _set(db_session, guard, values)
    db_session.commit()
    return values["state"] if moved else None


def _lost_values(
    state: str, attempt: int, lost_count: int, max_attempts: int, *, lost: str, resumed: str
) -> dict[str, Any]:
    """The columns of a job whose attempt ended without an outcome: cancelled if it
    was cancelling, queued for the next attempt (resuming from its last
    checkpoint), or failed (``worker_lost``) the ``max_attempts``-th time."""
    now = utcnow()
    if state == "cancelling":
        return {"state": "cancelled", "finished_at": now}
    if lost_count + 1 >= max_attempts:
        return {
            "state": "failed",
            "reason": "worker_lost",
            "message": f"{lost} {lost_count + 1} times (max_attempts = {max_attempts})",
            "lost_count": lost_count + 1,
            "finished_at": now,
        }
    return {
        "state": "queued",
        "attempt": attempt + 1,
        "lost_count": lost_count + 1,
        "worker": None,
        "heartbeat_at": None,
        # Never sent for the new attempt: the caller or the re-sender sends it.
        "enqueued_at": None,
        "message": f"{resumed}; resuming from the last checkpoint",
    }


def requeue_lost_rank(db_session: Session, job_id: str, attempt: int, how: str) -> str | None:
    """The worker holding ``attempt`` saw one rank of its multi-process run die (a
    signal, the OOM killer): running -> queued with the attempt raised, or failed
    (``worker_lost``) the ``max_attempts``-th time; cancelling -> cancelled. Commits;
    returns the new state, or None when the worker no longer holds the attempt."""
    job = db_session.execute(
        select(Job.state, Job.lost_count, Job.max_attempts).where(*owned(job_id, attempt))
    ).first()
    if job is None:
        return None
    values = _lost_values(
        job.state,
        attempt,
        job.lost_count,
        job.max_attempts,
        lost=f"a rank was lost ({how})",
        resumed=f"attempt {attempt}: {how}",
    )
    values["updated_at"] = utcnow()
    moved = _set(db_session, (*owned(job_id, attempt), Job.state == job.state), values)
    db_session.commit()
    return values["state"] if moved else None


def stale_jobs(db_session: Session, stale: datetime) -> list[Any]:
    """(id, state, attempt, lost_count, max_attempts) of the jobs a worker holds whose
    heartbeat is older than ``stale``."""
    return list(
        db_session.execute(
            select(Job.id, Job.state, Job.attempt, Job.lost_count, Job.max_attempts).where(
                Job.state.in_(ACTIVE),
                or_(
                    Job.heartbeat_at < stale,
                    and_(Job.heartbeat_at.is_(None), Job.updated_at < stale),
                ),
            )
        ).all()
    )


# -- retry ----------------------------------------------------------------------------


class TeacherNotReady(Exception):
    """A student cannot be retried: its teacher job failed or was cancelled."""


def state_after_retry(db_session: Session, job: Job) -> str:
    """``queued``, or ``waiting`` while the job's teacher has not finished.

    Raises TeacherNotReady when the teacher failed or was cancelled."""
    if job.teacher_job_id is None:
        return "queued"
    state = db_session.scalar(select(Job.state).where(Job.id == job.teacher_job_id))
    if state in TEACHER_LOST:
        raise TeacherNotReady(
            f"job {job.id} needs its teacher job {job.teacher_job_id}, which is {state}: "
            "retry the teacher first"
        )
    return "queued" if state == "succeeded" or state is None else "waiting"


def retry(db_session: Session, settings: Settings, job: Job) -> bool:
    """failed / cancelled -> queued with the attempt raised, then sent, or -> waiting
    while its teacher job is unfinished (commits); False for any other state.
    Raises TeacherNotReady when the teacher failed or was cancelled."""
    if job.state not in RETRYABLE:
        return False
    target = state_after_retry(db_session, job)
    waiting = target == "waiting"
    now = utcnow()
    produced = _set_returning(
        db_session,
        (Job.id == job.id, Job.state.in_(RETRYABLE)),
        {
            "state": target,
            "attempt": Job.attempt + 1,
            "reason": None,
            "message": None,
            "finished_at": None,
            "cancel_requested": False,
            "cancel_requested_at": None,
            "heartbeat_at": None,
            "task_id": None if waiting else new_task_id(),
            "enqueued_at": None if waiting else now,
            "lost_count": 0,
            "worker": None,
            "updated_at": now,
        },
    )
    db_session.commit()
    if produced is None:
        db_session.refresh(job)
        return False
    if waiting:
        # The teacher may have finished since it was read.
        settle_students(db_session, settings, job.teacher_job_id or "")
    else:
        # This retry's attempt, whatever happened to the row since (a failed send
        # leaves it to the re-sender).
        send(db_session, settings, produced)
    db_session.refresh(job)
    return True
