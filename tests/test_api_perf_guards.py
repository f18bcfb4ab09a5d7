"""Guards for the fast paths of ``POST /jobs`` and the token check: which queries a
request sends, the token cache's expiry, and the per-process dataset cache."""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from db_helpers import bearer, migrated_app, sent_statements
from fastapi import FastAPI
from fastapi.testclient import TestClient

import api.auth
import api.services.jobs
from pgd_core.data.manifest import MANIFEST_NAME
from pgd_core.data.synthetic_shapes import make_coco_shapes
from pgd_core.presets import get_preset
from pgd_service import lifecycle


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def app(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[FastAPI]:
    data_root = tmp_path_factory.mktemp("data")
    make_coco_shapes(data_root, "shapes", num_train=2, num_val=1, max_objects=2)
    yield from migrated_app(request.param, tmp_path_factory, data_root=data_root)


@pytest.fixture
def client(app: FastAPI) -> Iterator[httpx.Client]:
    with TestClient(app) as http:
        yield http


def _selects_from(seen: list[str], table: str) -> list[str]:
    return [s for s in seen if s.startswith("SELECT") and f"FROM {table.upper()}" in s]


def _spec(**changes: object) -> dict[str, object]:
    spec = get_preset("tiny-fcos-student").model_dump(mode="json")
    spec.update(changes)
    return spec


def _headers(app: FastAPI) -> dict[str, str]:
    return bearer(app, f"perf-{uuid.uuid4().hex[:8]}")


def test_cached_token_is_not_read_again(
    app: FastAPI, client: httpx.Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(app.state.settings, "token_cache_s", 10.0)
    headers = _headers(app)
    assert client.get("/results", headers=headers).status_code == 200
    with sent_statements(app) as seen:
        assert client.get("/results", headers=headers).status_code == 200
    assert _selects_from(seen, "api_tokens") == []


def test_revoked_token_is_refused_after_the_ttl(
    app: FastAPI, client: httpx.Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(app.state.settings, "token_cache_s", 0.3)
    headers = _headers(app)
    assert client.get("/results", headers=headers).status_code == 200
    with app.state.session_factory() as session:
        session.execute(
            sa.update(api.auth.ApiToken)
            .where(
                api.auth.ApiToken.token_hash
                == api.auth.hash_token(headers["Authorization"].removeprefix("Bearer "))
            )
            .values(revoked_at=sa.func.now())
        )
        session.commit()
    time.sleep(0.4)
    response = client.get("/results", headers=headers)
    assert response.status_code == 401, response.text


def test_by_default_every_request_reads_its_token(app: FastAPI, client: httpx.Client) -> None:
    assert app.state.settings.token_cache_s == 0
    headers = _headers(app)
    assert client.get("/results", headers=headers).status_code == 200
    with sent_statements(app) as seen:
        assert client.get("/results", headers=headers).status_code == 200
    assert len(_selects_from(seen, "api_tokens")) == 1


@pytest.mark.parametrize("key", [None, "fresh"])
def test_new_job_sends_no_lookup_before_its_insert(
    app: FastAPI, client: httpx.Client, key: str | None
) -> None:
    headers = _headers(app)
    client.get("/results", headers=headers)  # its last_used_at is written now
    if key is not None:
        headers["Idempotency-Key"] = f"{key}-{uuid.uuid4().hex}"
    with sent_statements(app) as seen:
        response = client.post("/jobs", json=_spec(), headers=headers)
    assert response.status_code == 202, response.text
    assert _selects_from(seen, "jobs") == []
    assert sum(s.startswith("INSERT INTO JOBS") for s in seen) == 1
    body = response.json()
    assert response.headers["location"] == f"/jobs/{body['id']}"
    assert client.get(f"/jobs/{body['id']}", headers=headers).json() == body


def test_replay_still_returns_the_first_job(app: FastAPI, client: httpx.Client) -> None:
    headers = {**_headers(app), "Idempotency-Key": uuid.uuid4().hex}
    first = client.post("/jobs", json=_spec(), headers=headers)
    again = client.post("/jobs", json=_spec(), headers=headers)
    assert (first.status_code, again.status_code) == (202, 200)
    assert again.json() == first.json()
    assert again.headers["location"] == first.headers["location"]
    other = client.post("/jobs", json=_spec(seed=first.json()["spec"]["seed"] + 1), headers=headers)
    assert other.status_code == 409, other.text


def test_replay_of_a_key_wins_over_a_dataset_gone_since(
    app: FastAPI, client: httpx.Client, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data_root = tmp_path / "data"
    make_coco_shapes(data_root, "gone", num_train=2, num_val=1, max_objects=2)
    monkeypatch.setattr(app.state.settings, "data_root", data_root)
    headers = {**_headers(app), "Idempotency-Key": uuid.uuid4().hex}
    spec = _spec(dataset={**_spec()["dataset"], "name": "gone"})  # type: ignore[dict-item]
    first = client.post("/jobs", json=spec, headers=headers)
    assert first.status_code == 202, first.text
    (data_root / "gone" / MANIFEST_NAME).unlink()
    again = client.post("/jobs", json=spec, headers=headers)
    assert again.status_code == 200 and again.json()["id"] == first.json()["id"]
    fresh = client.post("/jobs", json=spec, headers={"Authorization": headers["Authorization"]})
    assert fresh.status_code == 422, fresh.text


def test_dataset_manifest_is_read_once_until_it_changes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_coco_shapes(tmp_path, "cached", num_train=2, num_val=1, max_objects=2)
    calls: list[str] = []
    real = api.services.jobs.load_dataset_info

    def counting(root: Any, name: str) -> Any:
        calls.append(name)
        return real(root, name)

    monkeypatch.setattr(api.services.jobs, "load_dataset_info", counting)
    first = api.services.jobs.dataset_info(tmp_path, "cached")
    assert api.services.jobs.dataset_info(tmp_path, "cached") is first
    assert calls == ["cached"]

    manifest = tmp_path / "cached" / MANIFEST_NAME
    data = json.loads(manifest.read_text())
    data["splits"].pop("val")
    manifest.write_text(json.dumps(data))
    stat = manifest.stat()
    os.utime(manifest, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    changed = api.services.jobs.dataset_info(tmp_path, "cached")
    assert calls == ["cached", "cached"]
    assert not isinstance(changed, str) and "val" not in changed.splits

    manifest.unlink()
    assert "no dataset 'cached'" in str(api.services.jobs.dataset_info(tmp_path, "cached"))


def test_a_repeated_page_reads_only_the_token_and_the_leaderboard_version(
    app: FastAPI, client: httpx.Client
) -> None:
    headers = _headers(app)
    first = client.get("/results?limit=7", headers=headers)  # the page cached
    with sent_statements(app) as seen:
        again = client.get("/results?limit=7", headers=headers)
    assert again.status_code == 200 and again.content == first.content
    assert len(seen) == 2, seen
    assert len(_selects_from(seen, "leaderboard_version")) == 1
    assert len(_selects_from(seen, "api_tokens")) == 1


def test_job_values_name_every_column_but_seq() -> None:
    values = lifecycle.job_values(spec=get_preset("tiny-fcos-student"), owner="o", max_attempts=3)
    columns = {column.name for column in lifecycle.Job.__table__.c}
    assert set(values) == columns - {"seq"}
    assert values["state"] == "queued" and values["enqueued_at"] == values["created_at"]
    assert values["task_id"] and values["spec_hash"] == get_preset("tiny-fcos-student").spec_hash()
