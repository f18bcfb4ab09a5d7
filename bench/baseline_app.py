"""The minimal baseline for ``bench/bench_http.py``: what any FastAPI + SQLAlchemy app costs.

Two sync routes, no auth, no idempotency, no broker:

- ``POST /items`` validates a small pydantic body and inserts one row;
- ``GET /items/top`` selects the top 50 of the table's rows by an indexed column.

Its table lives in its own PostgreSQL schema (``BASELINE_DATABASE_URL`` carries
the ``search_path``); ``create_table`` and ``populate`` set it up. The engine has
the same pool as the real app's sync routes (``pgd_service.db.session``), pre-ping
included; ``BASELINE_PRE_PING=0`` turns the pre-ping off (SQLAlchemy's default,
one round trip less per request). Run it as the real app is run: ``uvicorn
bench.baseline_app:app`` (one process).
"""

from __future__ import annotations

import os
import random
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from fastapi import FastAPI
from pydantic import BaseModel, Field

from pgd_service.db.session import MAX_OVERFLOW, POOL_SIZE

metadata = sa.MetaData()
items = sa.Table(
    "baseline_items",
    metadata,
    sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
    sa.Column("name", sa.String(128), nullable=False),
    sa.Column("score", sa.Float, nullable=False),
    sa.Column("tags", sa.JSON, nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Index("ix_baseline_items_score_id", "score", "id"),
)


class ItemCreate(BaseModel):
    name: str = Field(min_length=1, max_length=128)
    score: float = Field(ge=0, le=100)
    tags: list[str] = Field(default_factory=list, max_length=8)


class ItemRead(BaseModel):
    id: int
    name: str
    score: float


def make_engine(url: str, *, pre_ping: bool = True) -> sa.Engine:
    return sa.create_engine(
        url, pool_pre_ping=pre_ping, pool_size=POOL_SIZE, max_overflow=MAX_OVERFLOW
    )


def create_table(engine: sa.Engine) -> None:
    metadata.create_all(engine)


def populate(engine: sa.Engine, n: int, seed: int = 0) -> None:
    """``n`` rows, then ANALYZE."""
    rng = random.Random(seed)
    now = datetime.now(UTC)
    with engine.begin() as conn:
        for start in range(0, n, 5000):
            conn.execute(
                items.insert(),
                [
                    {
                        "name": f"item-{i}",
                        "score": rng.uniform(0, 100),
                        "tags": ["a", "b"],
                        "created_at": now,
                    }
                    for i in range(start, min(n, start + 5000))
                ],
            )
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(sa.text("ANALYZE baseline_items"))


def create_app(url: str, *, pre_ping: bool = True) -> FastAPI:
    app = FastAPI(title="baseline")
    engine = make_engine(url, pre_ping=pre_ping)
    top = sa.select(items.c.id, items.c.name, items.c.score).order_by(
        items.c.score.desc(), items.c.id.desc()
    )

    @app.post("/items", status_code=201, response_model=ItemRead)
    def create_item(body: ItemCreate) -> dict[str, Any]:
        with engine.begin() as conn:
            new_id = conn.execute(
                items.insert()
                .values(**body.model_dump(), created_at=datetime.now(UTC))
                .returning(items.c.id)
            ).scalar_one()
        return {"id": new_id, "name": body.name, "score": body.score}

    @app.get("/items/top", response_model=list[ItemRead])
    def top_items() -> list[dict[str, Any]]:
        with engine.connect() as conn:
            return [dict(row) for row in conn.execute(top.limit(50)).mappings()]

    return app


app = (
    create_app(
        os.environ["BASELINE_DATABASE_URL"],
        pre_ping=os.environ.get("BASELINE_PRE_PING", "1") != "0",
    )
    if "BASELINE_DATABASE_URL" in os.environ
    else None
)
