"""The queue contract: the task's name, the queues, and how a message is published.

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
from functools import lru_cache
from typing import Any

from celery import Celery
from kombu import Connection

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


def broker_ok(settings: Settings) -> bool:
    """One connection attempt, bounded by ``broker_timeout_s`` (readiness; no server
    for ``sqla+``); False (logged) when the broker does not answer."""
    try:
        with Connection(settings.broker_url, connect_timeout=settings.broker_timeout_s) as conn:
            conn.ensure_connection(
                max_retries=1,
                interval_start=0,
                interval_step=0,
                timeout=settings.broker_timeout_s,
            )
    except Exception as exc:  # noqa: BLE001 - any failure means "not ready"
        log.warning("readiness: broker unreachable: %s", exc)
        return False
    return True
