"""``/sweeps`` and ``/metrics`` end to end, on SQLite and PostgreSQL migrated by Alembic."""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Iterator

import httpx
import pytest
import sqlalchemy as sa
from db_helpers import bearer, migrated_app
from fastapi import FastAPI
from fastapi.testclient import TestClient

from pgd_core.data.synthetic_shapes import make_coco_shapes
from pgd_core.presets import get_preset
from pgd_service.db.models import Job, Sweep

Headers = dict[str, str]
_SAMPLE = re.compile(
    r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(?:[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\]|\\.)*",?)*\})? (\S+)$'
)


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def app(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[FastAPI]:
    data_root = tmp_path_factory.mktemp("data")
    make_coco_shapes(data_root, "shapes", num_train=1, num_val=1, max_objects=1)
    # A broker that refuses at once: jobs stay queued for the re-sender.
    yield from migrated_app(
        request.param, tmp_path_factory, data_root=data_root, broker_url="redis://127.0.0.1:1/0"
    )


@pytest.fixture
def client(app: FastAPI) -> Iterator[httpx.Client]:
    with TestClient(app) as http:
        yield http


@pytest.fixture
def token_for(app: FastAPI) -> Callable[..., Headers]:
    def make(owner: str | None = None, *, is_admin: bool = False) -> Headers:
        return bearer(app, owner or f"u-{uuid.uuid4().hex[:8]}", is_admin=is_admin)

    return make


def _owner_counts(app: FastAPI, owner: str) -> tuple[int, int]:
    with app.state.session_factory() as session:
        jobs = session.scalar(sa.select(sa.func.count()).select_from(Job).where(Job.owner == owner))
        sweeps = session.scalar(
            sa.select(sa.func.count()).select_from(Sweep).where(Sweep.owner == owner)
        )
    return jobs or 0, sweeps or 0


def _base() -> dict[str, object]:
    return get_preset("tiny-fcos-pgd").model_dump(mode="json")


GRID = {"distill.alpha": [0.02, 0.04], "seed": [0, 1, 2], "method": ["pgd", "fgd_box"]}


def test_sweep_expands_the_grid_into_queued_jobs(
    app: FastAPI, client: httpx.Client, token_for: Callable[..., Headers]
) -> None:
    owner = f"u-{uuid.uuid4().hex[:8]}"
    response = client.post(
        "/sweeps", json={"base": _base(), "grid": GRID}, headers=token_for(owner)
    )
    assert response.status_code == 202, response.text
    body = response.json()
    assert response.headers["Location"] == f"/sweeps/{body['id']}"
    assert len(body["jobs"]) == len(set(body["jobs"])) == 12
    with app.state.session_factory() as session:
        jobs = list(session.scalars(sa.select(Job).where(Job.sweep_id == body["id"])))
    assert {job.id for job in jobs} == set(body["jobs"])
    assert all(job.state == "queued" and job.owner == owner for job in jobs)
    combos = {(j.spec["distill"]["alpha"], j.spec["seed"], j.spec["method"]) for j in jobs}
    assert combos == {
        (a, s, m) for a in GRID["distill.alpha"] for s in GRID["seed"] for m in GRID["method"]
    }
    assert {job.method for job in jobs} == {"pgd", "fgd_box"}
    # Untouched fields keep the base's values.
    base = _base()
    assert all(job.spec["detector"] == base["detector"] for job in jobs)
    assert all(job.spec["distill"]["temp"] == base["distill"]["temp"] for job in jobs)  # type: ignore[index]
    assert len({job.spec_hash for job in jobs}) == 12


@pytest.mark.parametrize(
    "grid",
    [
        {"seed": [0, 1], "distill.alpha": [0.04, -1.0]},  # one bad value among good ones
        {"kind": ["distill", "train"]},  # train with method pgd and a teacher
        {"detector": ["fcos", "nonsense"]},
    ],
)
def test_an_invalid_combination_stores_nothing(
    app: FastAPI, client: httpx.Client, token_for: Callable[..., Headers], grid: dict
) -> None:
    owner = f"u-{uuid.uuid4().hex[:8]}"
    response = client.post(
        "/sweeps", json={"base": _base(), "grid": grid}, headers=token_for(owner)
    )
    assert response.status_code == 422, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    problem = response.json()
    assert problem["detail"].startswith("grid:")
    assert problem["errors"] and all(e["field"] for e in problem["errors"])
    assert _owner_counts(app, owner) == (0, 0)


@pytest.mark.parametrize(
    "grid",
    [
        {"seed": list(range(300))},
        {"seed": list(range(20)), "distill.alpha": [0.1] * 20},
        {},
        {"seed": []},
        {"../x": [1]},
    ],
)
def test_grid_shape_is_checked(
    app: FastAPI, client: httpx.Client, token_for: Callable[..., Headers], grid: dict
) -> None:
    owner = f"u-{uuid.uuid4().hex[:8]}"
    response = client.post(
        "/sweeps", json={"base": _base(), "grid": grid}, headers=token_for(owner)
    )
    assert response.status_code == 422
    assert [e["field"] for e in response.json()["errors"]] == ["grid"]
    assert _owner_counts(app, owner) == (0, 0)


def test_sweep_progress_and_visibility(
    app: FastAPI, client: httpx.Client, token_for: Callable[..., Headers]
) -> None:
    alice = token_for()
    created = client.post(
        "/sweeps", json={"base": _base(), "grid": {"seed": [0, 1, 2, 3]}}, headers=alice
    ).json()
    url = f"/sweeps/{created['id']}"
    first = client.get(url, headers=alice).json()
    assert first["total"] == 4 and first["states"]["queued"] == 4 and first["progress"] == 0.0
    assert first["grid"] == {"seed": [0, 1, 2, 3]}
    ids = created["jobs"]
    with app.state.session_factory() as session:
        session.execute(
            sa.update(Job).where(Job.id.in_(ids[:2])).values(state="succeeded", progress=1.0)
        )
        session.execute(
            sa.update(Job).where(Job.id == ids[2]).values(state="running", progress=0.5)
        )
        session.commit()
    now = client.get(url, headers=alice).json()
    assert now["states"]["succeeded"] == 2 and now["states"]["running"] == 1
    assert now["states"]["queued"] == 1 and now["states"]["failed"] == 0
    assert now["progress"] == pytest.approx(2.5 / 4)
    assert client.get(url, headers=token_for()).status_code == 404
    assert client.get(url, headers=token_for(is_admin=True)).status_code == 200
    assert client.get("/sweeps/nope", headers=alice).status_code == 404
    assert client.get(url).status_code == 401
    assert client.post("/sweeps", json={"base": _base(), "grid": {"seed": [1]}}).status_code == 401


def _scrape(client: httpx.Client) -> dict[str, float]:
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    samples: dict[str, float] = {}
    for line in response.text.splitlines():
        if not line or line.startswith("#"):
            continue
        match = _SAMPLE.match(line)
        assert match, f"not a Prometheus sample line: {line!r}"
        samples[match.group(1) + _sorted_labels(match.group(2) or "")] = float(match.group(3))
    return samples


_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def _sorted_labels(text: str) -> str:
    """``{b="2",a="1"}`` -> ``{a="1",b="2"}``: label order carries no meaning."""
    if not text:
        return ""
    pairs = sorted(_LABEL.findall(text))
    return "{" + ",".join(f'{k}="{v}"' for k, v in pairs) + "}"


def test_metrics_parse_and_count_requests(
    app: FastAPI, client: httpx.Client, token_for: Callable[..., Headers]
) -> None:
    key = 'pgd_http_requests_total{method="GET",route="/healthz",status="200"}'
    before = _scrape(client).get(key, 0.0)
    for _ in range(3):
        assert client.get("/healthz").status_code == 200
    client.get(f"/sweeps/{uuid.uuid4()}", headers=token_for())
    client.get("/no/such/path")
    after = _scrape(client)
    assert after[key] == before + 3
    assert (
        after['pgd_http_requests_total{method="GET",route="/sweeps/{sweep_id}",status="404"}'] >= 1
    )
    assert after['pgd_http_requests_total{method="GET",route="unmatched",status="404"}'] >= 1
    assert not any(name.count("/sweeps/") and "{sweep_id}" not in name for name in after)
    count = after['pgd_http_request_duration_seconds_count{method="GET",route="/healthz"}']
    assert count >= 3
    inf = after['pgd_http_request_duration_seconds_bucket{le="+Inf",method="GET",route="/healthz"}']
    assert inf == count
    with app.state.session_factory() as session:
        queued = session.scalar(
            sa.select(sa.func.count()).select_from(Job).where(Job.state == "queued")
        )
    assert after['pgd_jobs{state="queued"}'] == queued
    assert 'pgd_jobs{state="cancelling"}' in after
