"""A job's retry, metrics, artifacts and live events; routes map the outcomes to HTTP."""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from pgd_service import lifecycle
from pgd_service.db.models import JOB_STATES, Artifact, Job, MetricPoint
from pgd_service.settings import Settings

TERMINAL = lifecycle.TERMINAL


class ArtifactOutsideWorkRoot(Exception):
    """The artifact's stored path resolves outside the configured work root."""


def retry(*, db_session: Session, settings: Settings, job: Job) -> bool:
    """Failed or cancelled -> queued with the attempt raised, then sent (lifecycle.retry);
    False for any other state. A student whose teacher job has not finished goes
    back to ``waiting`` instead; one whose teacher failed raises
    lifecycle.TeacherNotReady."""
    return lifecycle.retry(db_session, settings, job)


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
    return _confined(artifact, work_root)


def _confined(artifact: Artifact, work_root: Path) -> Path | None:
    """The artifact's existing file under the work root (None if missing)."""
    root = work_root.resolve()
    path = (root / artifact.path).resolve()
    if not path.is_relative_to(root):
        raise ArtifactOutsideWorkRoot(f"artifact {artifact.name} is not under the work root")
    return path if path.is_file() else None


def log_file(*, db_session: Session, job_id: str, work_root: Path) -> Path | None:
    """The file of the job's newest ``log`` artifact, or None when it has none (yet).

    Raises ArtifactOutsideWorkRoot as :func:`artifact_file` does.
    """
    artifact = db_session.scalar(
        select(Artifact)
        .where(Artifact.job_id == job_id, Artifact.kind == "log")
        .order_by(Artifact.created_at.desc(), Artifact.id.desc())
        .limit(1)
    )
    return None if artifact is None else _confined(artifact, work_root)


def tail_lines(
    path: Path, lines: int, chunk: int = 64 * 1024, max_bytes: int = 4 * 1024 * 1024
) -> str:
    """The last ``lines`` lines of a text file, read backwards from its end in chunks
    (a multi-gigabyte log costs no more than its tail), at most its last
    ``max_bytes`` (a log without newlines gives that much of its end, not all of
    it). Each chunk is read and scanned once. Invalid UTF-8 is replaced."""
    chunks: list[bytes] = []
    newlines = read = 0
    with path.open("rb") as fh:
        position = fh.seek(0, 2)
        # lines + 1 newlines guarantee the first kept line starts at a line boundary.
        while position > 0 and newlines <= lines and read < max_bytes:
            step = min(chunk, position, max_bytes - read)
            position -= step
            fh.seek(position)
            block = fh.read(step)
            chunks.append(block)
            newlines += block.count(b"\n")
            read += step
    data = b"".join(reversed(chunks))
    kept = data.splitlines(keepends=True)[-lines:]
    return b"".join(kept).decode("utf-8", errors="replace")


def format_event(event_id: str, event: str, data: dict[str, Any]) -> str:
    """One server-sent event."""
    return f"id: {event_id}\nevent: {event}\ndata: {json.dumps(data)}\n\n"


@dataclass(frozen=True)
class _Snapshot:
    state: str
    progress: float
    attempt: int

    def data(self) -> dict[str, Any]:
        return {"state": self.state, "progress": self.progress, "attempt": self.attempt}


# "<last metric point id>:<state>:<attempt>:<progress>", all the client has seen.
_EVENT_ID = re.compile(r"^(\d{1,19}):([a-z]{1,16}):(\d{1,9}):([0-9.eE+-]{1,32})$")


@dataclass(frozen=True)
class StreamPosition:
    """What a client has received: the metric points up to ``high_water`` and the
    state ``last``. Each event's id encodes it, so ``Last-Event-ID`` resumes a stream."""

    high_water: int
    last: _Snapshot

    def event_id(self) -> str:
        last = self.last
        return f"{self.high_water}:{last.state}:{last.attempt}:{last.progress!r}"

    @classmethod
    def parse(cls, event_id: str | None) -> StreamPosition | None:
        """The position in an event id this API sent; None for anything else."""
        match = _EVENT_ID.match((event_id or "").strip())
        if match is None or match.group(2) not in JOB_STATES:
            return None
        try:
            progress = float(match.group(4))
        except ValueError:
            return None
        high_water, attempt = int(match.group(1)), int(match.group(3))
        # Ids and attempts are 64-bit columns: a larger number was never sent here
        # (and would overflow the database driver's parameter).
        if high_water >= 2**63 or attempt >= 2**31 or not math.isfinite(progress):
            return None
        return cls(high_water, _Snapshot(match.group(2), progress, attempt))


def _snapshot(session: Session, job_id: str) -> _Snapshot | None:
    row = session.execute(
        select(Job.state, Job.progress, Job.attempt).where(Job.id == job_id)
    ).one_or_none()
    return None if row is None else _Snapshot(*row)


class _JobWatcher:
    """What changed in one job since the last look (blocking database reads)."""

    def __init__(
        self,
        session_factory: sessionmaker[Session],
        job_id: str,
        resume: StreamPosition | None = None,
    ) -> None:
        self.session_factory = session_factory
        self.job_id = job_id
        self.resume = resume
        self.last: _Snapshot | None = None
        self.high_water = 0  # the id of the last metric point sent
        self.done = False

    def _event(self, event: str, data: dict[str, Any]) -> str:
        assert self.last is not None
        position = StreamPosition(self.high_water, self.last)
        return format_event(position.event_id(), event, data)

    def open(self) -> list[str]:
        """The current state; metric points already stored are left to ``/metrics``.

        Resuming (``Last-Event-ID``), it sends only what the client has not seen:
        the points stored after its last one, then the state if it changed.
        """
        if self.resume is not None:
            self.high_water, self.last = self.resume.high_water, self.resume.last
            return self.poll()
        with self.session_factory() as session:
            self.last = _snapshot(session, self.job_id)
            self.high_water = (
                session.scalar(
                    select(func.coalesce(func.max(MetricPoint.id), 0)).where(
                        MetricPoint.job_id == self.job_id
                    )
                )
                or 0
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
    last_event_id: str | None = None,
) -> AsyncIterator[str]:
    """Server-sent events of one job until it reaches a terminal state (or ``max_s``).

    First a ``state`` event (state, progress, attempt); then every ``poll_s`` one
    ``metric`` event (step, name, value) per point stored since the last poll,
    followed by a ``state`` event when state, progress or attempt changed. Points
    are tracked by their id (a high-water mark; one worker writes a job's
    points), so each is sent once, in the order stored. Each event's id is the
    stream position after it (:class:`StreamPosition`); given one as
    ``last_event_id`` the stream resumes there: nothing up to it is sent again and
    nothing after it is lost. An id this API did not send starts a fresh stream.
    An idle stream sends a comment every ``keepalive_s`` so dead clients are
    noticed. The database is read in a worker thread; the sleeps hold none.
    """
    watcher = _JobWatcher(session_factory, job_id, StreamPosition.parse(last_event_id))
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


def count_by_state(db_session: Session) -> dict[str, int]:
    """Jobs per state, every state listed (zero where none)."""
    counts = dict.fromkeys(JOB_STATES, 0)
    for state, count in db_session.execute(select(Job.state, func.count()).group_by(Job.state)):
        counts[state] = int(count)
    return counts


def group_summary(db_session: Session, condition: Any) -> tuple[dict[str, int], int, float]:
    """(jobs per state with every state present, total, mean progress) of the jobs
    matching ``condition`` (a sweep's or a study's), in one query."""
    rows = db_session.execute(
        select(Job.state, func.count(), func.coalesce(func.sum(Job.progress), 0.0))
        .where(condition)
        .group_by(Job.state)
    ).all()
    states = dict.fromkeys(JOB_STATES, 0)
    total, progress = 0, 0.0
    for state, count, progress_sum in rows:
        states[state] = int(count)
        total += int(count)
        progress += float(progress_sum)
    return states, total, (progress / total if total else 0.0)
