"""The Celery application, configured from the service's one settings object.

Start a worker with::

    celery -A worker.app:celery_app worker -Q gpu,cpu --concurrency 1
"""

from __future__ import annotations

import logging

from celery import Celery
from celery.signals import worker_ready
from kombu import Queue

from pgd_service.queue import QUEUES, transport_options
from pgd_service.settings import Settings, get_settings, redacted


def make_celery(settings: Settings | None = None) -> Celery:
    """A Celery app whose settings suit multi-hour GPU jobs (see docs/service.md)."""
    settings = settings or get_settings()
    app = Celery("pgd", broker=settings.broker_url, include=["worker.tasks"])
    app.conf.update(
        # A message is acknowledged only once its job has finished, and given
        # back to the broker if the process running it dies.
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        # One job at a time per process, and a fresh process for every job:
        # GPU memory is freed and CUDA is never used across a fork.
        worker_prefetch_multiplier=1,
        worker_max_tasks_per_child=1,
        # Redis re-delivers an unacknowledged message after this long (default
        # 1 h): it must exceed the longest job or a running job runs twice.
        broker_transport_options=transport_options(
            settings.broker_url, settings.visibility_timeout_s
        ),
        broker_connection_retry_on_startup=True,
        # A broker restart must not kill the jobs that are training.
        worker_cancel_long_running_tasks_on_connection_loss=False,
        task_serializer="json",
        accept_content=["json"],
        # The database row is the truth, not Celery's result backend.
        task_ignore_result=True,
        task_queues=[Queue(name) for name in QUEUES],
        task_default_queue="gpu",
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
    )
    app.conf.pgd_settings = settings
    return app


celery_app = make_celery()


@worker_ready.connect
def _say_where(sender: object = None, **_: object) -> None:
    """Which database, broker and folders this worker uses, absolute: a worker that
    reads another database than its API would otherwise wait in silence."""
    settings = celery_app.conf.pgd_settings
    logging.getLogger("pgd.worker").warning(
        "pgd worker ready: database %s, broker %s, work root %s, data root %s",
        redacted(settings.database_url),
        redacted(settings.broker_url),
        settings.work_root,
        settings.data_root,
    )
