"""A real service stack for worker tests: database, broker, API app and Celery
worker processes started and killed the way an operator (or a crash) would."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from alembic import command
from db_helpers import alembic_config, database_url_for

from api.embedded import start_worker, stop_worker
from pgd_core.data.synthetic_shapes import make_coco_shapes
from pgd_core.presets import get_preset
from pgd_core.spec import RunSpec
from pgd_service.db.models import Artifact, EvalResult, Job, MetricPoint
from pgd_service.db.session import make_engine, make_session_factory
from pgd_service.maintenance import MaintenanceReport, maintain
from pgd_service.settings import Settings

# Fast failure detection for tests; production defaults are minutes.
FAST = {
    "heartbeat_interval_s": 0.3,
    "heartbeat_timeout_s": 3.0,
    "metrics_interval": 1,
    "run_maintenance": False,
    "broker_timeout_s": 1.0,
}


def tiny_spec(name: str = "tiny-fcos-student", *, seed: int = 0, **schedule: Any) -> RunSpec:
    """A tiny preset with a shorter schedule (validated again after the change)."""
    spec = get_preset(name)
    values = {"max_iters": 8, "milestones": (), "warmup_iters": 2, "checkpoint_interval": 4}
    values.update(schedule)
    data = spec.model_dump(mode="json")
    data["schedule"].update(values)
    data["seed"] = seed
    return RunSpec.model_validate(data)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class PrivateRedis:
    """A redis-server of our own on a free port, so a test may restart it."""

    def __init__(self, workdir: Path, *extra_args: str) -> None:
        if shutil.which("redis-server") is None:
            raise RuntimeError("redis-server is not installed")
        self.port = free_port()
        self.workdir = workdir
        self.extra_args = extra_args
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
                "redis-server",
                "--bind",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.workdir),
                *self.extra_args,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("private redis-server did not start")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()  # like a crash: nothing saved
            self.process.wait()
        self.process = None


@dataclass
class Stack:
    settings: Settings
    sessions: sa.orm.sessionmaker
    workers: list[subprocess.Popen[bytes]] = field(default_factory=list)
    logs: list[Path] = field(default_factory=list)

    def start_worker(self, *, ready_timeout: float = 120.0) -> subprocess.Popen[bytes]:
        log = self.settings.work_root / f"worker-{len(self.workers)}.log"
        process = start_worker(self.settings, log)
        self.workers.append(process)
        self.logs.append(log)
        deadline = time.monotonic() + ready_timeout
        while " ready." not in log.read_text(errors="replace"):
            if process.poll() is not None:
                raise RuntimeError(f"worker exited at start:\n{log.read_text()[-3000:]}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"worker not ready:\n{log.read_text()[-3000:]}")
            time.sleep(0.2)
        return process

    def kill_worker(self, process: subprocess.Popen[bytes]) -> None:
        """kill -9 of the worker and its pool children (a crash, an OOM kill)."""
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        process.wait()

    def stop_all(self) -> None:
        for process in self.workers:
            if process.poll() is None:
                stop_worker(process, timeout=10)

    def worker_log(self) -> str:
        return "\n".join(log.read_text(errors="replace") for log in self.logs if log.exists())

    def job(self, job_id: str) -> Job:
        with self.sessions() as session:
            job = session.get(Job, job_id)
            assert job is not None
            return job

    def wait(
        self,
        job_id: str,
        until: Callable[[Job], bool],
        timeout: float = 240.0,
        *,
        maintain_every: float | None = None,
    ) -> Job:
        deadline = time.monotonic() + timeout
        last_pass = 0.0
        while True:
            job = self.job(job_id)
            if until(job):
                return job
            if maintain_every is not None and time.monotonic() - last_pass > maintain_every:
                self.maintain()
                last_pass = time.monotonic()
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"job {job_id} stuck in {job.state} ({job.reason}, {job.message}) "
                    f"progress {job.progress}\n--- worker logs ---\n{self.worker_log()[-4000:]}"
                )
            time.sleep(0.1)

    def maintain(self) -> MaintenanceReport:
        return maintain(self.sessions, self.settings)

    def points(self, job_id: str) -> list[tuple[str, int, float]]:
        with self.sessions() as session:
            return [
                tuple(row)
                for row in session.execute(
                    sa.select(MetricPoint.name, MetricPoint.step, MetricPoint.value)
                    .where(MetricPoint.job_id == job_id)
                    .order_by(MetricPoint.name, MetricPoint.step)
                )
            ]

    def results(self, job_id: str) -> list[EvalResult]:
        with self.sessions() as session:
            return list(session.scalars(sa.select(EvalResult).where(EvalResult.job_id == job_id)))

    def artifacts(self, job_id: str) -> dict[str, Path]:
        with self.sessions() as session:
            rows = session.scalars(sa.select(Artifact).where(Artifact.job_id == job_id))
            return {a.name: self.settings.work_root / a.path for a in rows}


@contextmanager
def stack(
    backend: str,
    broker_url: str,
    tmp_path: Path,
    *,
    data_root: Path | None = None,
    **overrides: Any,
) -> Iterator[Stack]:
    """Migrated database of ``backend``, a registered 'shapes' dataset (a tiny new
    one unless ``data_root`` holds the datasets to use), and settings."""
    for url in database_url_for(backend, tmp_path):
        command.upgrade(alembic_config(url), "head")
        if data_root is None:
            data_root = tmp_path / "data"
            make_coco_shapes(data_root, "shapes", num_train=8, num_val=4)
        values = dict(FAST)
        values.update(overrides)
        settings = Settings(
            _env_file=None,
            database_url=url,
            broker_url=broker_url,
            data_root=data_root,
            work_root=tmp_path / "work",
            weights_root=tmp_path / "weights",
            **values,
        )
        settings.work_root.mkdir(parents=True, exist_ok=True)
        engine = make_engine(url)
        result = Stack(settings, make_session_factory(engine))
        try:
            yield result
        finally:
            result.stop_all()
            engine.dispose()


def distinct_steps_ok(points: list[tuple[str, int, float]]) -> bool:
    """Every (name, step) at most once."""
    keys = [(name, step) for name, step, _ in points]
    return len(keys) == len(set(keys))


def new_owner() -> str:
    return f"u-{uuid.uuid4().hex[:8]}"
