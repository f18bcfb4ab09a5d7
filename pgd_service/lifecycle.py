"""Students that wait for their teacher job.

A distill job whose ``teacher_ref`` names a job that has not finished is stored
``waiting``. When the teacher succeeds, its waiting students become ``queued``
and are sent; when it ends any other way, they fail with reason
``teacher_failed`` and a message naming the teacher and why it ended.

Who settles them: the worker right after it records the teacher's outcome, the
cancel route for a teacher cancelled before it ran, and every maintenance pass
(:func:`settle_waiting`) for anything those missed (a process that died
between two commits, a teacher failed by the reaper). Every change is one
guarded UPDATE on ``state = 'waiting'``, so any number of them may run at once.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from sqlalchemy import select, update
from sqlalchemy.orm import Session, aliased

from pgd_service import queue as enqueue
from pgd_service.db.models import Job
from pgd_service.db.types import rowcount, utcnow
from pgd_service.settings import Settings

log = logging.getLogger("pgd.lifecycle")

#: Terminal states of a teacher that its students cannot start from.
TEACHER_LOST = ("failed", "cancelled")


@dataclass
class Settled:
    released: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)


def _release(db_session: Session, settings: Settings, job_id: str) -> bool:
    """waiting -> queued, stored already marked as sent (a task id and ``enqueued_at``,
    as a new job is), then sent: the re-sender only takes it if that send fails
    (``enqueued_at`` cleared) or never happens (``enqueued_at`` grows old)."""
    now = utcnow()
    result = db_session.execute(
        update(Job)
        .where(Job.id == job_id, Job.state == "waiting")
        .values(
            state="queued",
            task_id=enqueue.new_task_id(),
            enqueued_at=now,
            updated_at=now,
            message=None,
        )
        .execution_options(synchronize_session=False)
    )
    db_session.commit()
    if rowcount(result) != 1:
        return False
    job = db_session.get(Job, job_id, populate_existing=True)
    if job is not None and job.state == "queued":
        enqueue.send_job(db_session, settings, job)
    return True


def _fail(db_session: Session, job_id: str, teacher: Job) -> bool:
    now = utcnow()
    why = f" ({teacher.reason})" if teacher.reason else ""
    result = db_session.execute(
        update(Job)
        .where(Job.id == job_id, Job.state == "waiting")
        .values(
            state="failed",
            reason="teacher_failed",
            message=f"teacher job {teacher.id} ended {teacher.state}{why}; "
            "retry the teacher, then this job",
            finished_at=now,
            updated_at=now,
        )
        .execution_options(synchronize_session=False)
    )
    db_session.commit()
    return rowcount(result) == 1


def settle_students(db_session: Session, settings: Settings, teacher_job_id: str) -> Settled:
    """Release or fail the waiting students of one teacher, by the teacher's state."""
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
            if _release(db_session, settings, job_id):
                settled.released.append(job_id)
        elif _fail(db_session, job_id, teacher):
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


class TeacherNotReady(Exception):
    """A student cannot be retried: its teacher job failed or was cancelled."""
