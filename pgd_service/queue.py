"""The queue contract: the task's name, the queues, and how a job is published.

The job row is committed before its message is sent, so the database always
knows of an accepted job. Sending can still fail (broker down) or the message
can later be lost (an API crash between commit and send, a broker restarted
without persistence): pgd_service.maintenance's re-sender sends every queued
job again whose last send failed or is old. Duplicate messages are harmless: a
worker only claims a job that is ``queued`` with the attempt its message
carries. Messages are Celery's own (``send_task``): nothing here writes a
broker's wire format.
"""

from __future__ import annotations

import logging
import uuid
from functools import lru_cache, partial
from typing import Any

import anyio
from celery import Celery
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from pgd_service.db.models import Job
from pgd_service.db.types import utcnow
from pgd_service.settings import Settings

log = logging.getLogger("pgd.queue")

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


def publish(settings: Settings, *, job_id: str, attempt: int, queue: str, task_id: str) -> bool:
    """Send the task message; False (logged) when the broker cannot take it now."""
    try:
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
    """:func:`publish` for the event loop: Celery's ``send_task`` in a worker thread
    (it blocks on the broker). One per event loop; close it when the loop's app stops."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    async def publish(self, *, job_id: str, attempt: int, queue: str, task_id: str) -> bool:
        send = partial(
            publish, self.settings, job_id=job_id, attempt=attempt, queue=queue, task_id=task_id
        )
        return await anyio.to_thread.run_sync(send)

    async def close(self) -> None:
        """Nothing to close: the producer's connection pool is Celery's."""


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
