"""``api_tokens.last_used_at``: written by the first use, then at most once a minute,
through HTTP on SQLite and PostgreSQL migrated by Alembic."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import httpx
import pytest
import sqlalchemy as sa
from db_helpers import bearer, migrated_app, sent_statements
from fastapi import FastAPI
from fastapi.testclient import TestClient

from api.auth import hash_token
from pgd_service.db.models import ApiToken


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def app(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[FastAPI]:
    data_root = tmp_path_factory.mktemp("data")
    yield from migrated_app(request.param, tmp_path_factory, data_root=data_root)


@pytest.fixture
def client(app: FastAPI) -> Iterator[httpx.Client]:
    with TestClient(app) as http:
        yield http


def _token_hash(headers: dict[str, str]) -> str:
    return hash_token(headers["Authorization"].removeprefix("Bearer "))


def _last_used(app: FastAPI, headers: dict[str, str]) -> datetime | None:
    with app.state.session_factory() as session:
        return session.scalar(
            sa.select(ApiToken.last_used_at).where(ApiToken.token_hash == _token_hash(headers))
        )


def _set_last_used(app: FastAPI, headers: dict[str, str], value: datetime) -> None:
    with app.state.session_factory() as session:
        session.execute(
            sa.update(ApiToken)
            .where(ApiToken.token_hash == _token_hash(headers))
            .values(last_used_at=value)
        )
        session.commit()


def _token_updates(seen: list[str]) -> int:
    return sum(s.startswith("UPDATE API_TOKENS") for s in seen)


def _use(client: httpx.Client, headers: dict[str, str]) -> None:
    response = client.get("/results", headers=headers)
    assert response.status_code == 200, response.text


def test_first_use_sets_last_used_at(app: FastAPI, client: httpx.Client) -> None:
    headers = bearer(app, f"user-{uuid.uuid4().hex[:8]}")
    assert _last_used(app, headers) is None
    before = datetime.now(UTC)
    _use(client, headers)
    used = _last_used(app, headers)
    assert used is not None and before - timedelta(seconds=1) <= used <= datetime.now(UTC)


def test_second_use_within_a_minute_writes_nothing(app: FastAPI, client: httpx.Client) -> None:
    headers = bearer(app, f"user-{uuid.uuid4().hex[:8]}")
    _use(client, headers)
    first = _last_used(app, headers)
    with sent_statements(app) as seen:
        _use(client, headers)
        _use(client, headers)
    assert _token_updates(seen) == 0
    assert _last_used(app, headers) == first


def test_use_after_a_minute_rewrites_it(app: FastAPI, client: httpx.Client) -> None:
    headers = bearer(app, f"user-{uuid.uuid4().hex[:8]}")
    old = datetime.now(UTC) - timedelta(minutes=2)
    _set_last_used(app, headers, old)
    with sent_statements(app) as seen:
        _use(client, headers)
    assert _token_updates(seen) == 1
    assert _last_used(app, headers) > old + timedelta(minutes=1)


def test_recent_use_is_not_rewritten(app: FastAPI, client: httpx.Client) -> None:
    headers = bearer(app, f"user-{uuid.uuid4().hex[:8]}")
    recent = datetime.now(UTC) - timedelta(seconds=30)
    _set_last_used(app, headers, recent)
    with sent_statements(app) as seen:
        _use(client, headers)
    assert _token_updates(seen) == 0
    assert _last_used(app, headers) == recent


def test_rejected_token_writes_nothing(app: FastAPI, client: httpx.Client) -> None:
    with sent_statements(app) as seen:
        response = client.get("/results", headers={"Authorization": "Bearer pgd_nope"})
    assert response.status_code == 401 and _token_updates(seen) == 0
