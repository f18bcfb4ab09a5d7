"""The one task: run a job by id. All the work is in :mod:`worker.execution`.

torch, mmdet and pgd_core are imported here, in the worker's parent process,
so that each job's fresh child (one task per child) starts without paying for
those imports again. Importing torch does not initialise CUDA, so forking
afterwards is safe.
"""

from __future__ import annotations

import os
import socket

from sqlalchemy.exc import SQLAlchemyError

import pgd_core.runner  # noqa: F401 - imported once in the parent, shared by every forked child
from pgd_service.queue import TASK_NAME
from worker.app import celery_app
from worker.execution import execute

RETRY_DELAY_S = 10
RETRY_LIMIT = 60


@celery_app.task(name=TASK_NAME, bind=True)
def run_job(self, job_id: str, attempt: int) -> str:  # noqa: ANN001 - Celery's bound task
    """Claim the job's ``attempt`` and run it; a stale or duplicate message is dropped."""
    worker = f"{self.request.hostname or socket.gethostname()}:{os.getpid()}"
    try:
        return execute(job_id, attempt, celery_app.conf.pgd_settings, worker=worker)
    except SQLAlchemyError as exc:
        # The database was unreachable (before the claim, or while recording):
        # send the message again shortly rather than leave the job to the
        # re-sender. A redelivery claims nothing if the job moved on meanwhile.
        raise self.retry(exc=exc, countdown=RETRY_DELAY_S, max_retries=RETRY_LIMIT) from exc
