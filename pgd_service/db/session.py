"""Engines and sessions built from the settings."""

from __future__ import annotations

from collections.abc import Iterator
from functools import lru_cache
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.orm import Session, sessionmaker

from pgd_service.settings import get_settings

# Connections a process may hold: as many as the threads that run sync routes
# (anyio's default limiter: 40), so under load no request waits in the pool
# while holding a thread (with SQLAlchemy's default, 5 + 10 overflow, requests
# 16 to 40 would). The async routes have their own pool (api.db.aio,
# ASYNC_POOL_SIZE). Mind the server's max_connections (PostgreSQL: 100) when
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


def make_engine(url: str, **kwargs: Any) -> Engine:
    """An engine for ``url``; SQLite connections get foreign keys and WAL; server
    databases a pool sized for one API process (see POOL_SIZE); psycopg
    connections prepare statements early (see PREPARE_THRESHOLD)."""
    if not url.startswith("sqlite") and "poolclass" not in kwargs:
        kwargs.setdefault("pool_size", POOL_SIZE)
        kwargs.setdefault("max_overflow", MAX_OVERFLOW)
    if url.startswith("postgresql+psycopg:") or url.startswith("postgresql+psycopg_async:"):
        kwargs["connect_args"] = {
            "prepare_threshold": PREPARE_THRESHOLD,
            **kwargs.get("connect_args", {}),
        }
    engine = create_engine(url, pool_pre_ping=True, **kwargs)
    if engine.dialect.name == "sqlite":
        event.listen(engine, "connect", _configure_sqlite)
    return engine


@lru_cache
def get_engine() -> Engine:
    """The process-wide engine for the configured database."""
    return make_engine(get_settings().database_url)


def make_session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(bind=engine, expire_on_commit=False)


@lru_cache
def get_session_factory() -> sessionmaker[Session]:
    return make_session_factory(get_engine())


def get_session() -> Iterator[Session]:
    """One session per request (a FastAPI dependency); closed afterwards."""
    with get_session_factory()() as session:
        yield session
