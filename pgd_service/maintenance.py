"""Maintenance: the passes that keep the broker's copy of the queue honest.

The reaper turns worker loss (kill -9, OOM kill, reboot: the heartbeat stops)
into a new attempt, or into ``failed`` / ``worker_lost`` after ``max_attempts``;
the lifecycle settles students whose teacher has finished; the re-sender sends
every queued job again whose last send failed or is old (a worker only claims a
job that is ``queued`` with the attempt its message carries, so a duplicate is
harmless); the revoker terminates tasks that ignore a cancel. Every change is
one guarded UPDATE of pgd_service.lifecycle, so any number of processes may run
this at once.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from datetime import timedelta

from sqlalchemy import or_, select
from sqlalchemy.orm import Session, sessionmaker

from pgd_service import lifecycle
from pgd_service.db.models import Job
from pgd_service.db.types import utcnow
from pgd_service.queue import producer
from pgd_service.settings import Settings

log = logging.getLogger("pgd.maintenance")


@dataclass
class MaintenanceReport:
    resent: list[str] = field(default_factory=list)
    requeued: list[str] = field(default_factory=list)
    lost: list[str] = field(default_factory=list)
    cancelled: list[str] = field(default_factory=list)
    revoked: list[str] = field(default_factory=list)
    released: list[str] = field(default_factory=list)
    teacher_failed: list[str] = field(default_factory=list)


def reap(db_session: Session, settings: Settings) -> MaintenanceReport:
    """Jobs whose worker stopped beating: a new attempt, or failed / cancelled
    (lifecycle.lose_worker)."""
    report = MaintenanceReport()
    stale = utcnow() - timedelta(seconds=settings.heartbeat_timeout_s)
    buckets = {"cancelled": report.cancelled, "failed": report.lost, "queued": report.requeued}
    for job_id, state, attempt, lost_count, max_attempts in lifecycle.stale_jobs(db_session, stale):
        moved = lifecycle.lose_worker(
            db_session,
            job_id=job_id,
            state=state,
            attempt=attempt,
            lost_count=lost_count,
            max_attempts=max_attempts,
            stale=stale,
        )
        if moved is not None:
            log.warning(
                "job %s (attempt %d, %s): heartbeat stale -> %s", job_id, attempt, state, moved
            )
            buckets[moved].append(job_id)
    return report


def resend_unsent(db_session: Session, settings: Settings, report: MaintenanceReport) -> None:
    """Send queued jobs whose message failed, or may have been lost (old send)."""
    old = utcnow() - timedelta(seconds=settings.resend_after_s)
    rows = db_session.execute(
        select(Job.id, Job.attempt)
        .where(Job.state == "queued", or_(Job.enqueued_at.is_(None), Job.enqueued_at < old))
        .order_by(Job.seq)
        .limit(500)
    ).all()
    for job_id, attempt in rows:
        if lifecycle.resend(db_session, settings, job_id, attempt):
            report.resent.append(job_id)
        else:
            break  # the broker is down: try again at the next pass


def revoke_stuck_cancels(
    db_session: Session, settings: Settings, report: MaintenanceReport
) -> None:
    """Fallback for a task that does not stop when asked: terminate it."""
    old = utcnow() - timedelta(seconds=settings.cancel_grace_s)
    rows = db_session.execute(
        select(Job.id, Job.task_id).where(Job.state == "cancelling", Job.cancel_requested_at < old)
    ).all()
    for job_id, task_id in rows:
        if not task_id:
            continue
        try:
            producer(settings).control.revoke(task_id, terminate=True, signal="SIGKILL")
        except Exception as exc:  # noqa: BLE001
            log.warning("could not revoke task %s of job %s: %s", task_id, job_id, exc)
            continue
        report.revoked.append(job_id)


def maintain(session_factory: sessionmaker[Session], settings: Settings) -> MaintenanceReport:
    """One pass: reap stale jobs, settle students whose teacher has finished, resend
    unsent jobs, revoke stuck cancels."""
    with session_factory() as db_session:
        report = reap(db_session, settings)
        settled = lifecycle.settle_waiting(db_session, settings)
        report.released, report.teacher_failed = settled.released, settled.failed
        resend_unsent(db_session, settings, report)
        revoke_stuck_cancels(db_session, settings, report)
    return report


class MaintenanceThread(threading.Thread):
    """Runs :func:`maintain` every ``maintenance_interval_s`` until stopped."""

    def __init__(self, session_factory: sessionmaker[Session], settings: Settings) -> None:
        super().__init__(name="pgd-maintenance", daemon=True)
        self.session_factory = session_factory
        self.settings = settings
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.wait(self.settings.maintenance_interval_s):
            try:
                maintain(self.session_factory, self.settings)
            except Exception:  # noqa: BLE001 - a database hiccup must not end maintenance
                log.exception("maintenance pass failed; retrying at the next interval")

    def stop(self, timeout: float | None = 5.0) -> None:
        self.stopping.set()
        self.join(timeout)
