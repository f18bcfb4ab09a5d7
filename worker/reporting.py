"""What a running job writes to the database, off the training thread.

The training loop only appends to in-memory buffers (a lock and a list append
per report); a background thread writes the heartbeat, the progress and the
buffered metric points in batches, and polls the cancel flag. The database can
be slow or briefly unreachable without slowing or breaking training.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from sqlalchemy import delete, insert, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from pgd_core.runner import RunCallbacks
from pgd_service import lifecycle
from pgd_service.db.models import Job, MetricPoint
from pgd_service.db.types import rowcount

log = logging.getLogger("pgd.worker")


class LostOwnership(RuntimeError):
    """The job was taken from this worker (the reaper re-queued it): stop, write nothing."""


def insert_ignoring_duplicates(db_session: Session, rows: list[dict[str, Any]]) -> None:
    """INSERT metric points, skipping (job, step, name) already stored (a resumed step)."""
    if not rows:
        return
    dialect = db_session.get_bind().dialect.name
    if dialect == "postgresql":
        stmt: Any = postgresql.insert(MetricPoint).on_conflict_do_nothing(
            index_elements=["job_id", "step", "name"]
        )
    elif dialect == "sqlite":
        stmt = sqlite.insert(MetricPoint).on_conflict_do_nothing(
            index_elements=["job_id", "step", "name"]
        )
    else:  # pragma: no cover - the service supports PostgreSQL and SQLite
        stmt = insert(MetricPoint)
    db_session.execute(stmt, rows)


def forget_steps_after(session_factory: sessionmaker[Session], job_id: str, iteration: int) -> int:
    """Delete the metric points logged after ``iteration`` (a lost attempt's tail).

    A resumed attempt restarts from its checkpoint at ``iteration`` and logs the
    later steps again; their old values belong to weights that were thrown away.
    """
    with session_factory() as db_session:
        result = db_session.execute(
            delete(MetricPoint).where(MetricPoint.job_id == job_id, MetricPoint.step > iteration)
        )
        db_session.commit()
        return rowcount(result)


class Reporter:
    """Buffers a run's reports and writes them from a background thread.

    Args:
        session_factory: database sessions.
        job_id, attempt: the claimed attempt; every write is guarded by them.
        heartbeat_s: seconds between two heartbeat / progress / metric writes.
        poll_s: seconds between two reads of the cancel flag.
    """

    def __init__(
        self,
        session_factory: sessionmaker[Session],
        job_id: str,
        attempt: int,
        *,
        heartbeat_s: float,
        poll_s: float = 0.5,
    ) -> None:
        self.session_factory = session_factory
        self.job_id = job_id
        self.attempt = attempt
        self.heartbeat_s = heartbeat_s
        self.poll_s = min(poll_s, heartbeat_s)
        self._lock = threading.Lock()
        self._points: list[dict[str, Any]] = []
        self._progress: float | None = None
        self._cancel = threading.Event()
        self._lost = threading.Event()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="pgd-reporter", daemon=True)

    # -- called on the training thread ------------------------------------
    def on_progress(self, iteration: int, max_iters: int) -> None:
        self._progress = min(1.0, iteration / max_iters) if max_iters else 0.0

    def on_metrics(self, iteration: int, values: dict[str, float]) -> None:
        rows = [
            {"job_id": self.job_id, "step": iteration, "name": name[:64], "value": value}
            for name, value in values.items()
        ]
        with self._lock:
            self._points.extend(rows)

    def should_stop(self) -> bool:
        if self._lost.is_set():
            raise LostOwnership(f"job {self.job_id} attempt {self.attempt} was taken over")
        return self._cancel.is_set()

    def callbacks(self, metrics_interval: int = 1) -> RunCallbacks:
        return RunCallbacks(
            on_progress=self.on_progress,
            on_metrics=self.on_metrics,
            should_stop=self.should_stop,
            metrics_interval=metrics_interval,
        )

    # -- background thread -------------------------------------------------
    @property
    def lost(self) -> bool:
        return self._lost.is_set()

    def start(self) -> None:
        self._thread.start()

    def stop(self, *, flush: bool = True) -> None:
        """Stop the thread; ``flush`` writes what is still buffered (guarded)."""
        self._stopping.set()
        self._thread.join()
        if flush and not self._lost.is_set():
            self._beat()

    def _loop(self) -> None:
        beats = max(1, round(self.heartbeat_s / self.poll_s))
        tick = 0
        while not self._stopping.wait(self.poll_s):
            tick += 1
            try:
                if tick % beats == 0:
                    self._beat()
                else:
                    self._poll_cancel()
            except SQLAlchemyError as exc:
                # Keep training; the next beat retries with everything still buffered.
                log.warning("job %s: database write failed, will retry: %s", self.job_id, exc)

    def _guard(self) -> tuple[Any, ...]:
        return lifecycle.owned(self.job_id, self.attempt)

    def _poll_cancel(self) -> None:
        with self.session_factory() as db_session:
            row = db_session.execute(select(Job.cancel_requested).where(*self._guard())).first()
        if row is None:
            self._lost.set()
        elif row.cancel_requested:
            self._cancel.set()

    def _beat(self) -> None:
        with self._lock:
            points, self._points = self._points, []
        try:
            with self.session_factory() as db_session:
                if not lifecycle.beat(
                    db_session, self.job_id, self.attempt, progress=self._progress
                ):
                    db_session.rollback()
                    self._lost.set()
                    return
                insert_ignoring_duplicates(db_session, points)
                cancel = db_session.scalar(
                    select(Job.cancel_requested).where(Job.id == self.job_id)
                )
                db_session.commit()
        except SQLAlchemyError:
            with self._lock:
                self._points[:0] = points  # keep them, in order, for the next beat
            raise
        if cancel:
            self._cancel.set()
