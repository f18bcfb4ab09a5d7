"""Asynchronous database access for the request paths that must be fast.

``POST /jobs``, ``GET /results`` and the token check run on the event loop and
reach the database through an :class:`AsyncDatabase`, one per event loop (see
api.runtime), opened and closed by the app's lifespan:

- PostgreSQL: :class:`PsycopgDatabase`, a psycopg 3 async connection pool in
  autocommit mode. A statement is one round trip, with no pre-ping, no BEGIN and
  no COMMIT: the SQLAlchemy sync path pays four (pre-ping, BEGIN, the statement,
  COMMIT) and a trip to the thread pool. The statements are SQLAlchemy Core
  objects compiled once for the psycopg dialect, so the schema keeps one
  definition (pgd_service.db.models). When the server has closed the connection a
  statement was sent on (a restart, ``pg_terminate_backend``), the pool's idle
  connections are checked (the dead dropped) and the statement is sent once more:
  only statements that are safe to repeat go through here (reads, guarded
  UPDATEs, the job INSERT with ON CONFLICT).
- Anything else (SQLite, the embedded default): :class:`ThreadedDatabase`, the
  same statements on a SQLAlchemy engine in a worker thread.

Every method runs one statement in its own transaction. Callers that need
several statements in one transaction use the sync session (api.deps.get_db).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any, TypeVar, cast

import anyio
import psycopg
from psycopg import AsyncRawCursor
from psycopg.rows import dict_row
from psycopg.types.json import Json
from psycopg_pool import AsyncConnectionPool
from sqlalchemy import Engine, event
from sqlalchemy.engine import Compiled, make_url
from sqlalchemy.engine.interfaces import Dialect
from sqlalchemy.orm import Session
from sqlalchemy.sql.base import Executable

from pgd_service.db.session import PREPARE_THRESHOLD, make_engine

log = logging.getLogger("pgd.db")

Row = dict[str, Any]
#: Called with the SQL text of every statement an AsyncDatabase sends (tests).
StatementListener = Callable[[str], None]
T = TypeVar("T")
APPLICATION_NAME = "pgd-api"
#: Connections of an API process's async pool. A request holds one only while its
#: statement runs, so ten serve many concurrent requests (the sync routes' pool,
#: pgd_service.db.session, is sized for the thread pool instead).
ASYNC_POOL_SIZE = 10


class AsyncDatabase:
    """One-statement-per-call async access; see the module docstring."""

    dialect_name: str

    def __init__(self) -> None:
        self._listeners: list[StatementListener] = []

    def listen(self, listener: StatementListener) -> Callable[[], None]:
        """Call ``listener`` with each statement's SQL; returns the function that stops it."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener)

    def _notify(self, sql: str) -> None:
        for listener in list(self._listeners):
            listener(sql)

    async def open(self) -> None:
        """Start connecting in the background (never waits for the server)."""

    async def close(self) -> None:
        """Close every connection."""

    #: The engine of the sync sessions :meth:`run_sync` opens.
    session_engine: Engine

    async def _run(
        self, statement: Executable, params: Mapping[str, Any] | None, fetch: bool
    ) -> tuple[list[Row], int]:
        """(the rows if ``fetch``, the row count) of one statement in its own transaction."""
        raise NotImplementedError

    async def fetch_all(
        self, statement: Executable, params: Mapping[str, Any] | None = None
    ) -> list[Row]:
        rows, _ = await self._run(statement, params, True)
        return rows

    async def fetch_one(
        self, statement: Executable, params: Mapping[str, Any] | None = None
    ) -> Row | None:
        rows = await self.fetch_all(statement, params)
        return rows[0] if rows else None

    async def execute(self, statement: Executable, params: Mapping[str, Any] | None = None) -> int:
        """Run a statement that returns no rows; the number of rows it changed."""
        _, count = await self._run(statement, params, False)
        return count

    async def run_sync(self, fn: Callable[[Session], T]) -> T:
        """``fn(session)`` in a worker thread with a sync session of the same database
        (closed afterwards; ``fn`` commits what it wants kept)."""

        def call() -> T:
            with Session(self.session_engine, expire_on_commit=False) as session:
                return fn(session)

        return await anyio.to_thread.run_sync(call)


class PsycopgDatabase(AsyncDatabase):
    """PostgreSQL through a psycopg 3 async pool (autocommit, prepared statements)."""

    dialect_name = "postgresql"

    def __init__(
        self,
        url: str,
        *,
        sync_engine: Engine,
        max_size: int = ASYNC_POOL_SIZE,
        timeout_s: float = 10.0,
    ) -> None:
        super().__init__()
        sa_url = make_url(url)
        # $1, $2 ... placeholders, sent as they are by psycopg's raw cursors: its
        # default cursors parse every query for %(name)s, and do not cache the
        # parse of a long one (the leaderboard's is long).
        dialect_class: Any = sa_url.get_dialect()
        self._dialect: Dialect = dialect_class(paramstyle="numeric_dollar")
        if self._dialect.name != "postgresql" or self._dialect.driver != "psycopg":
            raise ValueError(f"PsycopgDatabase needs a postgresql+psycopg URL, not {url!r}")
        _, connect_kwargs = self._dialect.create_connect_args(sa_url)
        self._pool = AsyncConnectionPool(
            kwargs={
                # pg_stat_activity shows which connections are the API's (unless
                # the URL names another application).
                "application_name": APPLICATION_NAME,
                **connect_kwargs,
                "autocommit": True,
                "prepare_threshold": PREPARE_THRESHOLD,
                "row_factory": dict_row,
            },
            min_size=1,
            max_size=max_size,
            timeout=timeout_s,
            open=False,
            name="pgd-api",
        )
        self._compiled: dict[Executable, tuple[Compiled, tuple[str, ...]]] = {}
        self.session_engine = sync_engine

    async def open(self) -> None:
        await self._pool.open(wait=False)

    async def close(self) -> None:
        await self._pool.close()

    def _compile(self, statement: Executable) -> tuple[Compiled, tuple[str, ...]]:
        """The compiled statement and its parameters' names in $n order."""
        found = self._compiled.get(statement)
        if found is None:
            if len(self._compiled) >= 1024:
                self._compiled.clear()  # only if callers build statements per call
            compiled = statement.compile(dialect=self._dialect)  # type: ignore[attr-defined]
            found = (compiled, tuple(compiled.positiontup or ()))
            self._compiled[statement] = found
        return found

    @staticmethod
    def _adapt(value: Any) -> Any:
        # JSON columns: psycopg needs to be told that a dict or list is JSON.
        return Json(value) if isinstance(value, dict | list) else value

    async def _run(
        self, statement: Executable, params: Mapping[str, Any] | None, fetch: bool
    ) -> tuple[list[Row], int]:
        compiled, names = self._compile(statement)
        values = compiled.construct_params(params) or {}
        args = [self._adapt(values[name]) for name in names]
        sql = compiled.string
        self._notify(sql)
        for attempt in (1, 2):
            async with self._pool.connection() as conn:
                try:
                    cursor = AsyncRawCursor(conn)
                    await cursor.execute(sql, args)
                    rows = await cursor.fetchall() if fetch else []
                    return cast(list[Row], rows), cursor.rowcount
                except psycopg.OperationalError as exc:
                    if attempt == 2 or not (conn.broken or conn.closed):
                        raise
                    log.warning("database connection lost (%s); checking the pool", exc)
            # The server went away under this connection (a restart, a terminated
            # backend), so likely under the other idle ones too: test them all
            # (dropping the dead), then send the statement once more.
            await self._pool.check()
        raise AssertionError("unreachable")


class ThreadedDatabase(AsyncDatabase):
    """Any SQLAlchemy database (SQLite above all): each statement in a worker thread.

    It has its own engine, so its statements are seen by :meth:`listen`, not by
    the app engine's events."""

    def __init__(self, url: str) -> None:
        super().__init__()
        self.engine = self.session_engine = make_engine(url)
        self.dialect_name = self.engine.dialect.name
        event.listen(self.engine, "before_cursor_execute", self._before_cursor_execute)

    def _before_cursor_execute(self, conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        self._notify(statement)

    async def close(self) -> None:
        self.engine.dispose()

    def _run_in_thread(
        self, statement: Executable, params: Mapping[str, Any] | None, fetch: bool
    ) -> tuple[list[Row], int]:
        with self.engine.begin() as conn:
            result = conn.execute(statement, dict(params or {}))
            if fetch:
                return [dict(row) for row in result.mappings()], 0
            return [], result.rowcount

    async def _run(
        self, statement: Executable, params: Mapping[str, Any] | None, fetch: bool
    ) -> tuple[list[Row], int]:
        return await anyio.to_thread.run_sync(self._run_in_thread, statement, params, fetch)


def open_database(url: str, *, sync_engine: Engine, timeout_s: float = 10.0) -> AsyncDatabase:
    """The AsyncDatabase for ``url`` (not yet opened)."""
    if url.startswith("postgresql+psycopg:"):
        return PsycopgDatabase(url, sync_engine=sync_engine, timeout_s=timeout_s)
    return ThreadedDatabase(url)
