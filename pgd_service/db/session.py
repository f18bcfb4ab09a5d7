"""Engines and sessions built from the settings."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.orm import Session, sessionmaker

# Connections a process may hold: as many as the threads that run sync routes
# (anyio's default limiter: 40), so under load no request waits in the pool
# while holding a thread (with SQLAlchemy's default, 5 + 10 overflow, requests
# 16 to 40 would). Mind the server's max_connections (PostgreSQL: 100) when
# running several API processes.
POOL_SIZE = 20
MAX_OVERFLOW = 20
# psycopg 3 prepares a statement on the server once a connection has executed its
# text this many times, then skips parsing (and, with a generic plan, planning):
# the leaderboard query takes longer to plan than to run. Every query's values are
# bound parameters, so a route sends the same text on each request.
PREPARE_THRESHOLD = 1


def _configure_sqlite(dbapi_connection: Any, connection_record: Any) -> None:
    cursor = dbapi_connection.cursor()
    # SQLite ignores foreign keys unless asked, per connection.
    cursor.execute("PRAGMA foreign_keys=ON")
    # WAL lets the API read while a worker writes; busy_timeout waits for the
    # write lock instead of failing at once.
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


def make_engine(
    url: str,
    *,
    application_name: str | None = None,
    timeout_s: float | None = None,
    **kwargs: Any,
) -> Engine:
    """An engine for ``url``; SQLite connections get foreign keys and WAL; server
    databases a pool sized for one API process (see POOL_SIZE); psycopg
    connections prepare statements early (see PREPARE_THRESHOLD).

    ``application_name``: what PostgreSQL's ``pg_stat_activity`` shows for the
    connections; ``timeout_s``: how long a checkout waits for a pooled connection
    (and, on PostgreSQL, for a new one to connect) before failing."""
    if not url.startswith("sqlite") and "poolclass" not in kwargs:
        kwargs.setdefault("pool_size", POOL_SIZE)
        kwargs.setdefault("max_overflow", MAX_OVERFLOW)
        if timeout_s is not None:
            kwargs.setdefault("pool_timeout", timeout_s)
    if url.startswith("postgresql+psycopg:"):
        extra: dict[str, Any] = {"prepare_threshold": PREPARE_THRESHOLD}
        if application_name is not None:
            extra["application_name"] = application_name
        if timeout_s is not None:
            extra["connect_timeout"] = max(1, round(timeout_s))
        kwargs["connect_args"] = {**extra, **kwargs.get("connect_args", {})}
    engine = create_engine(url, pool_pre_ping=True, **kwargs)
    if engine.dialect.name == "sqlite":
        event.listen(engine, "connect", _configure_sqlite)
    return engine


def make_session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(bind=engine, expire_on_commit=False)
