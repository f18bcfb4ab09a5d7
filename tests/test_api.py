"""The REST API end to end through httpx, on SQLite and PostgreSQL migrated by Alembic."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa
from db_helpers import bearer, migrated_app
from fastapi import FastAPI
from fastapi.testclient import TestClient

from api.auth import create_token
from api.main import APPLICATION_NAME, create_app
from pgd_core.data.synthetic_shapes import make_coco_shapes
from pgd_core.presets import get_preset
from pgd_service.db.models import Job
from pgd_service.settings import Settings

Spec = dict[str, object]


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def app(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[FastAPI]:
    data_root = tmp_path_factory.mktemp("data")
    make_coco_shapes(data_root, "shapes", num_train=2, num_val=1, max_objects=2)
    yield from migrated_app(request.param, tmp_path_factory, data_root=data_root)


@pytest.fixture
def client(app: FastAPI) -> Iterator[httpx.Client]:
    # TestClient is an httpx.Client over the ASGI app (httpx's ASGITransport is async-only).
    with TestClient(app) as http:
        yield http


@pytest.fixture
def token_for(app: FastAPI) -> Callable[..., dict[str, str]]:
    """Authorization headers of a new token; owners are unique per test unless named."""

    def make(owner: str | None = None, *, is_admin: bool = False) -> dict[str, str]:
        return bearer(app, owner or f"u-{uuid.uuid4().hex[:8]}", is_admin=is_admin)

    return make


@pytest.fixture
def alice(token_for: Callable[..., dict[str, str]]) -> dict[str, str]:
    return token_for()


def _spec(name: str = "tiny-fcos-student", **changes: object) -> Spec:
    spec = get_preset(name).model_dump(mode="json")
    spec.update(changes)
    return spec


def _count_jobs(app: FastAPI, owner_filter: str | None = None) -> int:
    with app.state.session_factory() as session:
        query = sa.select(sa.func.count()).select_from(Job)
        if owner_filter is not None:
            query = query.where(Job.owner == owner_filter)
        return session.scalar(query) or 0


def _set_state(app: FastAPI, job_id: str, state: str) -> None:
    with app.state.session_factory() as session:
        session.execute(sa.update(Job).where(Job.id == job_id).values(state=state))
        session.commit()


def _is_problem(response: httpx.Response, status: int) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body = response.json()
    assert body["status"] == status and {"type", "title", "detail"} <= set(body)
    return body


def test_healthz_needs_no_token(client: httpx.Client) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/openapi.json").status_code == 200


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer pgd_nope"}])
def test_missing_or_bad_token_is_401(client: httpx.Client, headers: dict[str, str]) -> None:
    for path in ("/jobs", "/presets", "/datasets"):
        response = client.get(path, headers=headers)
        _is_problem(response, 401)
        assert response.headers["www-authenticate"] == "Bearer"


def test_revoked_token_is_401(app: FastAPI, client: httpx.Client) -> None:
    with app.state.session_factory() as session:
        token = create_token(db_session=session, owner="revoked")
        session.execute(
            sa.text("UPDATE api_tokens SET revoked_at = CURRENT_TIMESTAMP WHERE owner = 'revoked'")
        )
        session.commit()
    _is_problem(client.get("/jobs", headers={"Authorization": f"Bearer {token}"}), 401)


def test_token_is_stored_hashed(app: FastAPI) -> None:
    with app.state.session_factory() as session:
        token = create_token(db_session=session, owner="hash-check")
        stored = session.scalar(
            sa.text("SELECT token_hash FROM api_tokens WHERE owner = 'hash-check'")
        )
        session.rollback()
    assert token.startswith("pgd_") and token not in stored and len(stored) == 64


def test_database_down_is_503(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'missing' / 'pgd.db'}"  # a folder that does not exist
    down = create_app(Settings(database_url=url, data_root=tmp_path))
    with TestClient(down) as http:
        assert http.get("/healthz").status_code == 200
        response = http.get("/readyz", headers={"Authorization": "Bearer pgd_x"})
    _is_problem(response, 503)
    down.state.engine.dispose()


def test_readyz(client: httpx.Client, alice: dict[str, str]) -> None:
    assert client.get("/readyz", headers=alice).json() == {"status": "ok"}


def test_presets(client: httpx.Client, alice: dict[str, str]) -> None:
    presets = {p["name"]: p["spec"] for p in client.get("/presets", headers=alice).json()}
    assert presets["tiny-fcos-student"] == _spec()


def test_datasets(client: httpx.Client, alice: dict[str, str]) -> None:
    assert client.get("/datasets", headers=alice).json() == [
        {
            "name": "shapes",
            "format": "coco",
            "classes": ["rectangle", "ellipse", "triangle"],
            "splits": ["train", "val"],
            "usable": True,
            "problem": None,
        }
    ]


def test_create_job(client: httpx.Client, alice: dict[str, str]) -> None:
    response = client.post("/jobs", json=_spec(), headers=alice)
    assert response.status_code == 202, response.text
    job = response.json()
    assert response.headers["location"] == f"/jobs/{job['id']}"
    assert (job["state"], job["kind"], job["detector"], job["dataset"]) == (
        "queued",
        "train",
        "fcos",
        "shapes",
    )
    assert job["spec_hash"] == get_preset("tiny-fcos-student").spec_hash()
    assert client.get(response.headers["location"], headers=alice).json() == job


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"detector": "yolo"}, "detector"),
        ({"distill": {"alpha": 0}}, "distill.alpha"),
        ({"kind": "train"}, "method"),
    ],
)
def test_invalid_spec_is_422_naming_the_field(
    app: FastAPI,
    client: httpx.Client,
    token_for: Callable[..., dict[str, str]],
    changes: Spec,
    field: str,
) -> None:
    owner = f"bad-{uuid.uuid4().hex[:8]}"
    spec = _spec("tiny-fcos-pgd")
    if "distill" in changes:
        changes = {"distill": {**spec["distill"], **changes["distill"]}}  # type: ignore[dict-item]
    spec.update(changes)
    body = _is_problem(client.post("/jobs", json=spec, headers=token_for(owner)), 422)
    assert field in [e["field"] for e in body["errors"]], body
    assert _count_jobs(app, owner) == 0


def test_malformed_json_is_422(client: httpx.Client, alice: dict[str, str]) -> None:
    headers = {**alice, "Content-Type": "application/json"}
    body = _is_problem(client.post("/jobs", content=b"{", headers=headers), 422)
    assert body["errors"][0]["field"] == ""


def test_idempotency_key(
    app: FastAPI, client: httpx.Client, token_for: Callable[..., dict[str, str]]
) -> None:
    owner = f"idem-{uuid.uuid4().hex[:8]}"
    headers = {**token_for(owner), "Idempotency-Key": "k1"}
    first = client.post("/jobs", json=_spec(), headers=headers)
    again = client.post("/jobs", json=_spec(), headers=headers)
    assert first.status_code == 202 and again.status_code in (200, 202)
    assert again.json()["id"] == first.json()["id"]
    assert again.headers["location"] == first.headers["location"]
    _is_problem(client.post("/jobs", json=_spec(seed=7), headers=headers), 409)
    assert _count_jobs(app, owner) == 1
    # The key belongs to its owner: another caller may use the same key.
    other = client.post("/jobs", json=_spec(), headers={**token_for(), "Idempotency-Key": "k1"})
    assert other.status_code == 202 and other.json()["id"] != first.json()["id"]


def test_get_job_visibility(
    client: httpx.Client, alice: dict[str, str], token_for: Callable[..., dict[str, str]]
) -> None:
    job_id = client.post("/jobs", json=_spec(), headers=alice).json()["id"]
    assert client.get(f"/jobs/{job_id}", headers=alice).status_code == 200
    _is_problem(client.get(f"/jobs/{job_id}", headers=token_for()), 404)
    assert client.get(f"/jobs/{job_id}", headers=token_for(is_admin=True)).json()["id"] == job_id
    _is_problem(client.get(f"/jobs/{uuid.uuid4()}", headers=alice), 404)


def test_pagination_walk_is_stable_under_inserts(
    client: httpx.Client, alice: dict[str, str]
) -> None:
    before = [
        client.post("/jobs", json=_spec(seed=i), headers=alice).json()["id"] for i in range(7)
    ]
    seen: list[str] = []
    cursor = None
    while True:
        params = {"limit": 3, **({"cursor": cursor} if cursor else {})}
        page = client.get("/jobs", params=params, headers=alice).json()
        seen += [job["id"] for job in page["items"]]
        # Jobs submitted mid-walk are newer than the cursor: never in later pages.
        client.post("/jobs", json=_spec(seed=100 + len(seen)), headers=alice)
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == before[::-1]
    everything = client.get("/jobs", params={"limit": 200}, headers=alice).json()
    assert len(everything["items"]) == 7 + 3 and everything["next_cursor"] is None


def test_list_filters_and_owner_scope(
    client: httpx.Client, alice: dict[str, str], token_for: Callable[..., dict[str, str]]
) -> None:
    train = client.post("/jobs", json=_spec(), headers=alice).json()["id"]
    distill = client.post("/jobs", json=_spec("tiny-atss-pgd"), headers=alice).json()["id"]
    client.post("/jobs", json=_spec(), headers=token_for())

    def ids(**params: object) -> list[str]:
        return [j["id"] for j in client.get("/jobs", params=params, headers=alice).json()["items"]]

    assert ids() == [distill, train]
    assert ids(kind="distill") == ids(method="pgd") == ids(detector="atss") == [distill]
    assert ids(state="queued", dataset="shapes") == [distill, train]
    assert ids(state="running") == []
    _is_problem(client.get("/jobs", params={"cursor": "garbage!"}, headers=alice), 422)
    body = _is_problem(client.get("/jobs", params={"limit": 0}, headers=alice), 422)
    assert body["errors"][0]["field"] == "limit"


def test_cancel(
    app: FastAPI,
    client: httpx.Client,
    alice: dict[str, str],
    token_for: Callable[..., dict[str, str]],
) -> None:
    queued = client.post("/jobs", json=_spec(), headers=alice).json()["id"]
    _is_problem(client.post(f"/jobs/{queued}/cancel", headers=token_for()), 404)
    response = client.post(f"/jobs/{queued}/cancel", headers=alice)
    assert response.status_code == 202 and response.json()["state"] == "cancelled"
    assert response.json()["finished_at"] is not None
    _is_problem(client.post(f"/jobs/{queued}/cancel", headers=alice), 409)

    running = client.post("/jobs", json=_spec(seed=1), headers=alice).json()["id"]
    _set_state(app, running, "running")
    response = client.post(f"/jobs/{running}/cancel", headers=alice)
    assert response.status_code == 202
    assert (response.json()["state"], response.json()["cancel_requested"]) == ("cancelling", True)

    finished = client.post("/jobs", json=_spec(seed=2), headers=alice).json()["id"]
    _set_state(app, finished, "succeeded")
    body = _is_problem(client.post(f"/jobs/{finished}/cancel", headers=alice), 409)
    assert "succeeded" in body["detail"]
    assert client.get(f"/jobs/{finished}", headers=alice).json()["state"] == "succeeded"


def _kill_api_connections(app: FastAPI) -> int:
    """Terminate the API engine's PostgreSQL connections, as a server restart would;
    returns how many were killed once they are gone."""
    # From a connection of its own (not the API's pool); autocommit, as
    # pg_stat_activity is a snapshot per transaction.
    killer = sa.create_engine(app.state.settings.database_url, poolclass=sa.pool.NullPool)
    with killer.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        pids = (
            conn.execute(
                sa.text(
                    "SELECT pid FROM pg_stat_activity "
                    "WHERE application_name = :name AND pid <> pg_backend_pid()"
                ),
                {"name": APPLICATION_NAME},
            )
            .scalars()
            .all()
        )
        for pid in pids:
            conn.execute(sa.text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
        deadline = time.monotonic() + 10
        while conn.execute(
            sa.text("SELECT count(*) FROM pg_stat_activity WHERE pid = ANY(:pids)"),
            {"pids": list(pids)},
        ).scalar():
            assert time.monotonic() < deadline, "terminated backends did not exit"
            time.sleep(0.05)
    killer.dispose()
    return len(pids)


def test_requests_survive_lost_database_connections(
    app: FastAPI, client: httpx.Client, alice: dict[str, str]
) -> None:
    if app.state.engine.dialect.name != "postgresql":
        pytest.skip("terminating server connections needs PostgreSQL")
    assert client.get("/results", headers=alice).status_code == 200  # the pool is in use
    assert _kill_api_connections(app) >= 1
    # The token is cached: the job's INSERT is the first statement on a dead connection.
    created = client.post("/jobs", json=_spec(), headers=alice)
    assert created.status_code == 202, created.text
    with app.state.session_factory() as session:
        assert session.get(Job, created.json()["id"]) is not None
    assert _kill_api_connections(app) >= 1
    assert client.get("/results", headers=alice).status_code == 200
