"""What the service benchmarks share: throwaway PostgreSQL schemas and a flushed Redis."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import sqlalchemy as sa

from api.embedded import migrate
from pgd_service.db.session import make_engine

PG_SERVER = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


@contextmanager
def throwaway_schema(prefix: str, *, migrated: bool = True) -> Iterator[str]:
    """A new schema ``<prefix>_<random>`` in the ``test`` database, migrated to head
    unless ``migrated`` is False; yields its URL (search_path), dropped afterwards."""
    admin = make_engine(PG_SERVER)
    schema = f"{prefix}_{uuid.uuid4().hex[:12]}"
    with admin.begin() as conn:
        conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    url = f"{PG_SERVER}?options=-csearch_path%3D{schema}"
    try:
        if migrated:
            migrate(url)
        yield url
    finally:
        with admin.begin() as conn:
            conn.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


@contextmanager
def flushed_redis(url: str) -> Iterator[None]:
    """The Redis database at ``url`` emptied before and after."""
    import redis

    client = redis.Redis.from_url(url)
    client.flushdb()
    try:
        yield
    finally:
        client.flushdb()
        client.close()
