"""Real databases for tests: a throwaway PostgreSQL schema or a SQLite file, and
Alembic pointed at them (the schema is made only by migrations)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import redis
import sqlalchemy as sa
from alembic import command
from alembic.config import Config

from pgd_service.db.session import make_engine

ROOT = Path(__file__).resolve().parents[1]
PG_SERVER = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
TABLES = {
    "jobs",
    "sweeps",
    "metric_points",
    "eval_results",
    "artifacts",
    "api_tokens",
    "leaderboard_version",
    "studies",
}


def pg_schema_url() -> Iterator[str]:
    admin = make_engine(PG_SERVER)
    try:
        with admin.connect():
            pass
    except sa.exc.OperationalError as exc:
        admin.dispose()
        pytest.skip(f"PostgreSQL unreachable at {PG_SERVER}: {exc.orig}")
    schema = f"pgd_test_{uuid.uuid4().hex[:12]}"
    with admin.begin() as conn:
        conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    try:
        # search_path puts every table, index, sequence and alembic_version there.
        yield f"{PG_SERVER}?options=-csearch_path%3D{schema}"
    finally:
        with admin.begin() as conn:
            conn.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


def database_url_for(backend: str, tmp_path: Path) -> Iterator[str]:
    if backend == "sqlite":
        yield f"sqlite:///{tmp_path / 'pgd.db'}"
    else:
        yield from pg_schema_url()


def flushed_redis(url: str) -> Iterator[redis.Redis]:
    """A client of the Redis database at ``url``, emptied before and after; skips the
    test when that Redis is unreachable."""
    client = redis.Redis.from_url(url)
    try:
        client.ping()
    except redis.ConnectionError as exc:
        client.close()
        pytest.skip(f"Redis unreachable at {url}: {exc}")
    client.flushdb()
    try:
        yield client
    finally:
        client.flushdb()
        client.close()


def alembic_config(url: str) -> Config:
    config = Config(str(ROOT / "alembic.ini"))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    config.attributes["configure_logger"] = False
    return config


def migrated_app(backend: str, tmp_path_factory: pytest.TempPathFactory, **settings: object):
    """Yield an API app on a freshly migrated database of ``backend`` ("sqlite" or
    "postgresql"), with extra Settings fields; the engine is disposed afterwards."""
    from api.main import create_app
    from pgd_service.settings import Settings

    for url in database_url_for(backend, tmp_path_factory.mktemp("db")):
        command.upgrade(alembic_config(url), "head")
        # Tests drive maintenance explicitly; no background thread unless asked.
        settings.setdefault("run_maintenance", False)
        application = create_app(Settings(database_url=url, **settings))
        try:
            yield application
        finally:
            application.state.engine.dispose()


def bearer(app, owner: str, *, is_admin: bool = False) -> dict[str, str]:
    """Authorization headers of a new token of ``owner``, committed."""
    from api.auth import create_token

    with app.state.session_factory() as session:
        token = create_token(db_session=session, owner=owner, is_admin=is_admin)
        session.commit()
    return {"Authorization": f"Bearer {token}"}


def insert_job(app, owner: str, state: str = "queued", **values: object) -> str:
    """Insert a bare train job of ``owner`` in any state directly (no API) and return its id."""
    from pgd_service.db.models import Job

    job = Job(
        kind="train",
        detector="fcos",
        dataset="shapes",
        method="none",
        spec={},
        spec_hash="0" * 64,
        owner=owner,
        max_attempts=3,
        state=state,
        **values,
    )
    with app.state.session_factory() as session:
        session.add(job)
        session.commit()
        return job.id


@contextmanager
def sent_statements(app) -> Iterator[list[str]]:
    """The SQL statements ``app`` sends through its engine while active, whitespace
    collapsed and upper case."""
    seen: list[str] = []

    def note(statement: str) -> None:
        seen.append(" ".join(statement.split()).upper())

    def on_sync(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        note(statement)

    sa.event.listen(app.state.engine, "before_cursor_execute", on_sync)
    try:
        yield seen
    finally:
        sa.event.remove(app.state.engine, "before_cursor_execute", on_sync)
