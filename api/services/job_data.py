"""A job's retry, metrics, artifacts and live events; routes map the outcomes to HTTP."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session, sessionmaker

from api.db.models import Artifact, Job, MetricPoint
from api.db.types import utcnow

RETRYABLE = ("failed", "cancelled")
TERMINAL = ("succeeded", "failed", "cancelled")


class ArtifactOutsideWorkRoot(Exception):
    """The artifact's stored path resolves outside the configured work root."""


def enqueue_job(job_id: str) -> None:
    """Hand a queued job to the broker.

    A no-op hook for now: the worker issue implements it (send the Celery task
    for ``job_id``). Retry calls it after its guarded UPDATE has committed.
    """


def retry(*, db_session: Session, job: Job) -> bool:
    """Failed or cancelled -> queued with the attempt raised; False for any other state.

    One guarded UPDATE (compare-and-set on the state), so a concurrent retry or
    state change can never queue the job twice.
    """
    result = db_session.execute(
        update(Job)
        .where(Job.id == job.id, Job.state.in_(RETRYABLE))
        .values(
            state="queued",
            attempt=Job.attempt + 1,
            reason=None,
            message=None,
            finished_at=None,
            cancel_requested=False,
            heartbeat_at=None,
            updated_at=utcnow(),
        )
        .execution_options(synchronize_session=False)
    )
    db_session.commit()
    db_session.refresh(job)
    if result.rowcount != 1:
        return False
    enqueue_job(job.id)
    return True


def metric_series(
    *, db_session: Session, job_id: str, names: Sequence[str] | None = None
) -> dict[str, list[dict[str, Any]]]:
    """``{name: [{step, value}, ...]}``, each series ordered by step; ``names`` filters."""
    query = select(MetricPoint.name, MetricPoint.step, MetricPoint.value).where(
        MetricPoint.job_id == job_id
    )
    if names:
        query = query.where(MetricPoint.name.in_(names))
    series: dict[str, list[dict[str, Any]]] = {}
    for name, step, value in db_session.execute(query.order_by(MetricPoint.name, MetricPoint.step)):
        series.setdefault(name, []).append({"step": step, "value": value})
    return series


def list_artifacts(*, db_session: Session, job_id: str) -> list[Artifact]:
    return list(
        db_session.scalars(
            select(Artifact).where(Artifact.job_id == job_id).order_by(Artifact.name)
        )
    )


def artifact_file(*, db_session: Session, job_id: str, name: str, work_root: Path) -> Path | None:
    """The artifact's file, or None when no such artifact or file exists.

    Raises ArtifactOutsideWorkRoot when the stored path (relative paths are
    taken from the work root) resolves outside the work root, links included.
    """
    artifact = db_session.scalar(
        select(Artifact).where(Artifact.job_id == job_id, Artifact.name == name)
    )
    if artifact is None:
        return None
    root = work_root.resolve()
    path = (root / artifact.path).resolve()
    if not path.is_relative_to(root):
        raise ArtifactOutsideWorkRoot(f"artifact {name} is not under the work root")
    return path if path.is_file() else None


def format_event(event_id: int, event: str, data: dict[str, Any]) -> str:
    """One server-sent event."""
    return f"id: {event_id}\nevent: {event}\ndata: {json.dumps(data)}\n\n"


@dataclass(frozen=True)
class _Snapshot:
    state: str
    progress: float
    attempt: int

    def data(self) -> dict[str, Any]:
        return {"state": self.state, "progress": self.progress, "attempt": self.attempt}


def _snapshot(session: Session, job_id: str) -> _Snapshot | None:
    row = session.execute(
        select(Job.state, Job.progress, Job.attempt).where(Job.id == job_id)
    ).one_or_none()
    return None if row is None else _Snapshot(*row)


class _JobWatcher:
    """What changed in one job since the last look (blocking database reads)."""

    def __init__(self, session_factory: sessionmaker[Session], job_id: str) -> None:
        self.session_factory = session_factory
        self.job_id = job_id
        self.last: _Snapshot | None = None
        self.high_water = 0  # the id of the last metric point sent
        self.event_id = 0
        self.done = False

    def _event(self, event: str, data: dict[str, Any]) -> str:
        self.event_id += 1
        return format_event(self.event_id, event, data)

    def open(self) -> list[str]:
        """The current state; metric points already stored are left to ``/metrics``."""
        with self.session_factory() as session:
            self.last = _snapshot(session, self.job_id)
            self.high_water = session.scalar(
                select(func.coalesce(func.max(MetricPoint.id), 0)).where(
                    MetricPoint.job_id == self.job_id
                )
            )
        if self.last is None:
            self.done = True
            return []
        self.done = self.last.state in TERMINAL
        return [self._event("state", self.last.data())]

    def poll(self) -> list[str]:
        """New metric points in insertion order, then the state if it changed.

        A fresh session sees every committed change; the points are read after
        the state, so all those stored before a terminal transition come first.
        """
        with self.session_factory() as session:
            current = _snapshot(session, self.job_id)
            points = session.execute(
                select(MetricPoint.id, MetricPoint.step, MetricPoint.name, MetricPoint.value)
                .where(MetricPoint.job_id == self.job_id, MetricPoint.id > self.high_water)
                .order_by(MetricPoint.id)
            ).all()
        if current is None:  # deleted while watched
            self.done = True
            return []
        events = []
        for point_id, step, name, value in points:
            self.high_water = point_id
            events.append(self._event("metric", {"step": step, "name": name, "value": value}))
        if current != self.last:
            self.last = current
            events.append(self._event("state", current.data()))
        self.done = current.state in TERMINAL
        return events


async def event_stream(
    *,
    session_factory: sessionmaker[Session],
    job_id: str,
    poll_s: float,
    keepalive_s: float,
    max_s: float,
) -> AsyncIterator[str]:
    """Server-sent events of one job until it reaches a terminal state (or ``max_s``).

    First a ``state`` event (state, progress, attempt); then every ``poll_s`` one
    ``metric`` event (step, name, value) per point stored since the last poll,
    followed by a ``state`` event when state, progress or attempt changed; ids
    count up from 1. Points are tracked by their id (a high-water mark; one
    worker writes a job's points), so each is sent once, in the order stored.
    An idle stream sends a comment every ``keepalive_s`` so dead clients are
    noticed. The database is read in a worker thread; the sleeps hold none.
    """
    watcher = _JobWatcher(session_factory, job_id)
    for event in await anyio.to_thread.run_sync(watcher.open):
        yield event
    started = last_sent = time.monotonic()
    while not watcher.done and time.monotonic() - started < max_s:
        await anyio.sleep(poll_s)
        events = await anyio.to_thread.run_sync(watcher.poll)
        for event in events:
            yield event
        if events:
            last_sent = time.monotonic()
        elif time.monotonic() - last_sent >= keepalive_s:
            last_sent = time.monotonic()
            yield ": keep-alive\n\n"
