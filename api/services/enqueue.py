"""Handing jobs to the broker, and the periodic maintenance that keeps that reliable.

The job row is committed before its message is sent, so the database always
knows of an accepted job. Sending can still fail (broker down) or the message
can later be lost (API crash between commit and send, a broker restarted
without persistence): the re-sender sends every queued job again whose last
send failed or is old. Duplicate messages are harmless: a worker only claims a
job that is ``queued`` with the attempt number its message carries.

The reaper turns worker loss (kill -9, OOM kill, reboot: the heartbeat stops)
into a new attempt, or into ``failed`` / ``worker_lost`` after ``max_attempts``.
Every change is one guarded UPDATE, so any number of API processes may run
this maintenance at once.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import threading
import uuid
from dataclasses import dataclass, field
from datetime import timedelta
from functools import lru_cache, partial
from typing import Any

import anyio
import redis
from celery import Celery
from celery.utils.nodenames import anon_nodename
from redis.backoff import NoBackoff
from redis.retry import Retry
from sqlalchemy import and_, or_, select, update
from sqlalchemy.orm import Session, sessionmaker

from api.db.models import ACTIVE_STATES, Job
from api.db.types import rowcount, utcnow
from api.services.redis_push import RedisListPusher
from api.settings import Settings

log = logging.getLogger("pgd.enqueue")

TASK_NAME = "pgd.run_job"
QUEUES = ("gpu", "cpu")


def queue_for(spec: dict[str, Any]) -> str:
    """The queue of a job's resource class: ``cpu`` jobs never wait for a GPU worker."""
    return "cpu" if spec.get("device") == "cpu" else "gpu"


def transport_options(broker_url: str, visibility_timeout_s: int) -> dict[str, Any]:
    """Broker transport options: Redis (and SQS) redeliver unacknowledged messages
    after ``visibility_timeout``; the SQLAlchemy transport takes no such option."""
    if broker_url.split(":", 1)[0] in ("redis", "rediss", "sentinel", "sqs"):
        return {"visibility_timeout": visibility_timeout_s}
    return {}


@lru_cache(maxsize=8)
def _producer(broker_url: str, visibility_timeout_s: int, timeout_s: float) -> Celery:
    app = Celery("pgd-producer", broker=broker_url, set_as_current=False)
    app.conf.update(
        broker_transport_options=transport_options(broker_url, visibility_timeout_s),
        broker_connection_timeout=timeout_s,
        broker_connection_retry_on_startup=False,
        task_serializer="json",
        accept_content=["json"],
    )
    return app


def producer(settings: Settings) -> Celery:
    """A send-only Celery app for ``settings.broker_url`` (cached per broker)."""
    return _producer(settings.broker_url, settings.visibility_timeout_s, settings.broker_timeout_s)


def new_task_id() -> str:
    return str(uuid.uuid4())


#: Broker URL schemes whose messages this module writes itself; any other broker
#: (the embedded ``sqla+sqlite``, AMQP, sentinel) goes through Celery's send_task.
DIRECT_SCHEMES = ("redis", "rediss")
#: Where a worker would send a reply (we keep no results): one id per process, as
#: Celery's producer uses one per thread.
_REPLY_TO = str(uuid.uuid4())
_EMBED = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}


@lru_cache(maxsize=4)
def _origin_of(pid: int) -> str:
    return anon_nodename()  # "gen<pid>@<hostname>", as Celery's producer writes it


def _origin() -> str:
    return _origin_of(os.getpid())  # a forked API worker is another origin


def is_direct(broker_url: str) -> bool:
    """True when :func:`task_message` is pushed straight onto the broker's queue list."""
    return broker_url.split("://", 1)[0] in DIRECT_SCHEMES


def task_message(*, job_id: str, attempt: int, task_id: str, queue: str) -> bytes:
    """The message of ``pgd.run_job(job_id, attempt)`` exactly as Celery 5 (task
    protocol 2, JSON) and kombu's Redis transport write it: an envelope whose
    ``body`` is the base64 of ``[args, kwargs, embed]``, pushed with LPUSH onto the
    list named after the queue (priority 0, the default exchange).

    Celery's send_task builds the same bytes in about 1.5 ms of Python per job
    (signals, routing, a binding lookup in Redis); this takes microseconds. The
    test suite checks it key by key against what send_task writes.
    """
    args = [job_id, attempt]
    body = json.dumps([args, {}, _EMBED])
    envelope = {
        "body": base64.b64encode(body.encode()).decode(),
        "content-encoding": "utf-8",
        "content-type": "application/json",
        "headers": {
            "lang": "py",
            "task": TASK_NAME,
            "id": task_id,
            "shadow": None,
            "eta": None,
            "expires": None,
            "group": None,
            "group_index": None,
            "retries": 0,
            "timelimit": [None, None],
            "root_id": task_id,
            "parent_id": None,
            "argsrepr": repr(args),
            "kwargsrepr": "{}",
            "origin": _origin(),
            "ignore_result": None,
            "replaced_task_nesting": 0,
            "stamped_headers": None,
            "stamps": {},
        },
        "properties": {
            "correlation_id": task_id,
            "reply_to": _REPLY_TO,
            "delivery_mode": 2,
            "delivery_info": {"exchange": "", "routing_key": queue},
            "priority": 0,
            "body_encoding": "base64",
            "delivery_tag": str(uuid.uuid4()),
        },
    }
    return json.dumps(envelope).encode()


@lru_cache(maxsize=8)
def _redis_client(broker_url: str, timeout_s: float) -> redis.Redis:
    # One retry at once, as send_task's retry policy had: a broker that is down
    # leaves the job to the re-sender instead of holding the request.
    return redis.Redis.from_url(
        broker_url,
        retry=Retry(NoBackoff(), 1),
        socket_timeout=timeout_s,
        socket_connect_timeout=timeout_s,
    )


def publish(settings: Settings, *, job_id: str, attempt: int, queue: str, task_id: str) -> bool:
    """Send the task message; False (logged) when the broker cannot take it now."""
    try:
        if is_direct(settings.broker_url):
            message = task_message(job_id=job_id, attempt=attempt, task_id=task_id, queue=queue)
            _redis_client(settings.broker_url, settings.broker_timeout_s).lpush(queue, message)
        else:
            producer(settings).send_task(
                TASK_NAME,
                args=[job_id, attempt],
                queue=queue,
                task_id=task_id,
                retry=True,
                retry_policy={
                    "max_retries": 1,
                    "interval_start": 0,
                    "interval_step": 0.2,
                    "interval_max": 0.5,
                },
            )
    except Exception as exc:  # noqa: BLE001 - any broker failure leaves it to the re-sender
        log.warning("could not send job %s (attempt %d) to the broker: %s", job_id, attempt, exc)
        return False
    return True


class AsyncPublisher:
    """:func:`publish` for the event loop: an LPUSH of :func:`task_message` on its own
    pipelined Redis connection for Redis brokers (api.services.redis_push),
    otherwise :func:`publish` in a worker thread. One per event loop (its
    connection belongs to the loop); close it when the loop's app stops."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._client: RedisListPusher | None = None
        if is_direct(settings.broker_url):
            self._client = RedisListPusher(settings.broker_url, settings.broker_timeout_s)

    async def publish(self, *, job_id: str, attempt: int, queue: str, task_id: str) -> bool:
        if self._client is None:
            send = partial(
                publish, self.settings, job_id=job_id, attempt=attempt, queue=queue, task_id=task_id
            )
            return await anyio.to_thread.run_sync(send)
        message = task_message(job_id=job_id, attempt=attempt, task_id=task_id, queue=queue)
        try:
            await self._client.lpush(queue, message)
        except Exception as exc:  # noqa: BLE001 - as publish()
            log.warning(
                "could not send job %s (attempt %d) to the broker: %s", job_id, attempt, exc
            )
            return False
        return True

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()


def send_job(db_session: Session, settings: Settings, job: Job) -> bool:
    """Publish a committed queued job stored already marked as sent (a task id and
    ``enqueued_at``, api.services.jobs.job_values); a failed send clears
    ``enqueued_at`` so that the re-sender picks the job up at its next pass."""
    sent = publish(
        settings,
        job_id=job.id,
        attempt=job.attempt,
        queue=queue_for(job.spec),
        task_id=job.task_id or new_task_id(),
    )
    if not sent:
        db_session.execute(
            update(Job)
            .where(Job.id == job.id, Job.state == "queued", Job.attempt == job.attempt)
            .values(enqueued_at=None)
            .execution_options(synchronize_session=False)
        )
        db_session.commit()
    return sent


def resend(db_session: Session, settings: Settings, job_id: str, attempt: int) -> bool:
    """Send a queued job again (a new task id); True when the broker took it."""
    task_id = new_task_id()
    row = db_session.execute(
        select(Job.spec).where(Job.id == job_id, Job.state == "queued", Job.attempt == attempt)
    ).first()
    if row is None:
        return False
    if not publish(
        settings, job_id=job_id, attempt=attempt, queue=queue_for(row.spec), task_id=task_id
    ):
        return False
    db_session.execute(
        update(Job)
        .where(Job.id == job_id, Job.state == "queued", Job.attempt == attempt)
        .values(enqueued_at=utcnow(), task_id=task_id)
        .execution_options(synchronize_session=False)
    )
    db_session.commit()
    return True


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
    """Jobs whose worker stopped beating: a new attempt, or failed / cancelled."""
    report = MaintenanceReport()
    now = utcnow()
    stale = now - timedelta(seconds=settings.heartbeat_timeout_s)
    rows = db_session.execute(
        select(Job.id, Job.state, Job.attempt, Job.lost_count, Job.max_attempts).where(
            Job.state.in_(ACTIVE_STATES),
            or_(Job.heartbeat_at < stale, and_(Job.heartbeat_at.is_(None), Job.updated_at < stale)),
        )
    ).all()
    for job_id, state, attempt, lost_count, max_attempts in rows:
        guard = (
            Job.id == job_id,
            Job.state == state,
            Job.attempt == attempt,
            or_(Job.heartbeat_at < stale, Job.heartbeat_at.is_(None)),
        )
        if state == "cancelling":
            values: dict[str, Any] = {"state": "cancelled", "finished_at": now}
            bucket = report.cancelled
        elif lost_count + 1 >= max_attempts:
            values = {
                "state": "failed",
                "reason": "worker_lost",
                "message": f"the worker was lost {lost_count + 1} times "
                f"(max_attempts = {max_attempts})",
                "lost_count": lost_count + 1,
                "finished_at": now,
            }
            bucket = report.lost
        else:
            values = {
                "state": "queued",
                "attempt": attempt + 1,
                "lost_count": lost_count + 1,
                "worker": None,
                "heartbeat_at": None,
                # Never sent for the new attempt: the re-sender below sends it.
                "enqueued_at": None,
                "message": f"attempt {attempt} lost its worker; resuming from the last checkpoint",
            }
            bucket = report.requeued
        result = db_session.execute(
            update(Job)
            .where(*guard)
            .values(updated_at=now, **values)
            .execution_options(synchronize_session=False)
        )
        db_session.commit()
        if rowcount(result) == 1:
            log.warning(
                "job %s (attempt %d, %s): heartbeat stale -> %s",
                job_id,
                attempt,
                state,
                values["state"],
            )
            bucket.append(job_id)
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
        if resend(db_session, settings, job_id, attempt):
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
    from api.services.dependencies import settle_waiting

    with session_factory() as db_session:
        report = reap(db_session, settings)
        settled = settle_waiting(db_session, settings)
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
