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
import os
import shutil
import subprocess
from functools import lru_cache
from typing import Any

from celery import Celery
from kombu import Connection

from pgd_service.settings import Settings

log = logging.getLogger("pgd.queue")

TASK_NAME = "pgd.run_job"
#: Most processes (GPUs) one job may ask for (pgd_core.spec.MAX_PROCESSES).
MAX_PROCESSES = 8


def queue_name(device: str, processes: int = 1) -> str:
    """``gpu`` / ``cpu`` for one process, ``gpu-x4`` for a job that needs four GPUs on
    one machine (``cpu-x2``: two gloo processes)."""
    return device if processes == 1 else f"{device}-x{processes}"


#: Every queue: a job of N processes reaches only a worker that declared N devices.
QUEUES: tuple[str, ...] = tuple(
    queue_name(device, n) for device in ("gpu", "cpu") for n in range(1, MAX_PROCESSES + 1)
)


def queue_for(spec: dict[str, Any]) -> str:
    """The queue of a job's resource class: ``cpu`` jobs never wait for a GPU worker,
    and a job of N processes waits for a worker with N devices."""
    device = "cpu" if spec.get("device") == "cpu" else "gpu"
    return queue_name(device, int(spec.get("processes") or 1))


def worker_queues(gpus: int, cpu_processes: int) -> list[str]:
    """The queues of a worker with ``gpus`` GPUs that may run up to ``cpu_processes``
    CPU processes for one job: every job size it can host."""
    if gpus < 0 or cpu_processes < 0:
        raise ValueError("device counts cannot be negative")
    return [queue_name("gpu", n) for n in range(1, min(gpus, MAX_PROCESSES) + 1)] + [
        queue_name("cpu", n) for n in range(1, min(cpu_processes, MAX_PROCESSES) + 1)
    ]


def parse_queues(text: str) -> list[str]:
    """A ``--queues`` value (comma-separated) checked against :data:`QUEUES`."""
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = sorted(set(names) - set(QUEUES))
    if unknown or not names:
        raise ValueError(
            f"unknown queue(s) {', '.join(unknown) or '(none given)'}; "
            "queues are gpu, cpu, and gpu-xN / cpu-xN for jobs of N processes (N = 2..8)"
        )
    return names


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


def detect_gpus() -> int:
    """GPUs this machine offers a worker, without initialising CUDA: the entries of
    ``CUDA_VISIBLE_DEVICES`` when it is set, else the lines of ``nvidia-smi -L``;
    0 without an NVIDIA driver."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        entries = [e for e in visible.split(",") if e.strip()]
        # CUDA stops at the first invalid entry ("-1" hides every GPU).
        count = 0
        for entry in entries:
            if entry.strip().startswith("-"):
                break
            count += 1
        return count
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return 0
    try:
        out = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=20, check=True)
    except (OSError, subprocess.SubprocessError):
        return 0
    return sum(1 for line in out.stdout.splitlines() if line.startswith("GPU "))


def local_queues() -> list[str]:
    """The queues of a worker that runs everything on this machine (``pgd up``): ``gpu``
    always (a GPU-less machine runs cuda jobs on its CPU), every GPU size it has, and
    CPU jobs of up to as many processes as it has cores (at most 8)."""
    return worker_queues(max(1, detect_gpus()), min(os.cpu_count() or 1, MAX_PROCESSES))
