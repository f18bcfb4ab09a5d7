"""What the dashboard reads beside the jobs and results pages: GET /me, the lists of
sweeps and studies, the sweep / study / job filters, and the pages it is served
from. On SQLite and PostgreSQL migrated by Alembic; checked against the rows."""

from __future__ import annotations

import shutil
import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa
from db_helpers import bearer, migrated_app
from fastapi import FastAPI
from fastapi.testclient import TestClient

from api.services.results import SORT_KEYS
from api.ui import STATIC, catalog_module
from pgd_core.data.synthetic_shapes import make_coco_shapes
from pgd_core.presets import get_preset
from pgd_core.spec import DETECTORS, METHODS
from pgd_service.db.models import JOB_KINDS, JOB_STATES, METRICS, EvalResult, Job, Study, Sweep

Headers = dict[str, str]


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def app(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[FastAPI]:
    data_root = tmp_path_factory.mktemp("data")
    make_coco_shapes(data_root, "shapes", num_train=1, num_val=1, max_objects=1)
    yield from migrated_app(
        request.param, tmp_path_factory, data_root=data_root, broker_url="redis://127.0.0.1:1/0"
    )


@pytest.fixture
def client(app: FastAPI) -> Iterator[httpx.Client]:
    with TestClient(app) as http:
        yield http


@pytest.fixture
def owner() -> str:
    return f"u-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def token_for(app: FastAPI) -> Callable[..., Headers]:
    def make(owner: str, *, is_admin: bool = False) -> Headers:
        return bearer(app, owner, is_admin=is_admin)

    return make


def _spec(**changes: object) -> dict:
    spec = get_preset("tiny-fcos-student").model_dump(mode="json")
    spec.update(changes)
    return spec


def _sweep(client: httpx.Client, headers: Headers, seeds: list[int]) -> dict:
    response = client.post(
        "/sweeps", json={"base": _spec(), "grid": {"seed": seeds}}, headers=headers
    )
    assert response.status_code == 202, response.text
    return response.json()


def test_me_names_the_tokens_owner_and_rights(client, token_for, owner):
    own = client.get("/me", headers=token_for(owner)).json()
    assert own == {"owner": owner, "is_admin": False, "results": "own"}
    admin = client.get("/me", headers=token_for(owner, is_admin=True)).json()
    assert admin == {"owner": owner, "is_admin": True, "results": "all"}
    missing = client.get("/me")
    assert missing.status_code == 401
    assert missing.headers["content-type"] == "application/problem+json"


def test_sweeps_list_newest_first_with_counts_of_the_rows(app, client, token_for, owner):
    headers = token_for(owner)
    made = [_sweep(client, headers, [0, 1]), _sweep(client, headers, [2, 3, 4])]
    other = _sweep(client, token_for(f"{owner}-x"), [5])
    with app.state.session_factory() as session:
        session.execute(
            sa.update(Job).where(Job.id == made[1]["jobs"][0]).values(state="failed", progress=0.5)
        )
        session.commit()
    page = client.get("/sweeps", params={"limit": 1}, headers=headers).json()
    assert [s["id"] for s in page["items"]] == [made[1]["id"]]
    assert page["next_offset"] == 1
    item = page["items"][0]
    assert item["total"] == 3 and item["grid"] == {"seed": [2, 3, 4]}
    assert item["states"] == {**dict.fromkeys(JOB_STATES, 0), "queued": 2, "failed": 1}
    assert item["progress"] == pytest.approx(0.5 / 3)
    rest = client.get("/sweeps", params={"limit": 1, "offset": 1}, headers=headers).json()
    assert [s["id"] for s in rest["items"]] == [made[0]["id"]] and rest["next_offset"] is None
    # An admin sees every owner's; a user only their own.
    admin = client.get("/sweeps", params={"limit": 100}, headers=token_for(owner, is_admin=True))
    with app.state.session_factory() as session:
        everyone = session.scalars(
            sa.select(Sweep.id).order_by(Sweep.created_at.desc(), Sweep.id.desc()).limit(100)
        ).all()
    assert [s["id"] for s in admin.json()["items"]] == list(everyone)
    assert other["id"] in everyone
    assert client.get("/sweeps", params={"limit": 0}, headers=headers).status_code == 422


def test_jobs_filter_by_sweep_and_results_by_sweep_and_job(app, client, token_for, owner):
    headers = token_for(owner)
    sweep = _sweep(client, headers, [0, 1, 2])
    _sweep(client, headers, [3])
    listed = client.get("/jobs", params={"sweep": sweep["id"], "limit": 10}, headers=headers).json()
    assert sorted(j["id"] for j in listed["items"]) == sorted(sweep["jobs"])
    assert all(j["sweep_id"] == sweep["id"] for j in listed["items"])
    # Give two of its jobs a result; the leaderboard's sweep and job filters find exactly those.
    with app.state.session_factory() as session:
        for job_id, ap in zip(sweep["jobs"][:2], (31.5, 30.25), strict=True):
            session.execute(sa.update(Job).where(Job.id == job_id).values(state="succeeded"))
            session.add(
                EvalResult(
                    job_id=job_id,
                    dataset="shapes",
                    detector="fcos",
                    method="none",
                    metrics={"AP": ap},
                    ap=ap,
                )
            )
        session.commit()
    rows = client.get("/results", params={"sweep": sweep["id"]}, headers=headers).json()["items"]
    assert [(r["job_id"], r["ap"]) for r in rows] == [
        (sweep["jobs"][0], 31.5),
        (sweep["jobs"][1], 30.25),
    ]
    one = client.get("/results", params={"job": sweep["jobs"][1]}, headers=headers).json()["items"]
    assert [(r["job_id"], r["ap"]) for r in one] == [(sweep["jobs"][1], 30.25)]
    grouped = client.get(
        "/results", params={"sweep": sweep["id"], "group_by": "config"}, headers=headers
    ).json()["items"]
    assert [(g["n"], g["ap_mean"]) for g in grouped] == [(2, pytest.approx((31.5 + 30.25) / 2))]
    assert client.get("/results", params={"job": "x" * 37}, headers=headers).status_code == 422


def test_studies_list_and_jobs_filter_by_study(app, client, token_for, owner):
    headers = token_for(owner)
    body = {
        "name": "listed",
        "teacher": get_preset("tiny-fcos-teacher").model_dump(mode="json"),
        "student": get_preset("tiny-fcos-pgd").model_dump(mode="json"),
        "methods": ["none", "pgd"],
        "seeds": [0, 1],
    }
    created = client.post("/studies", json=body, headers=headers)
    assert created.status_code == 202, created.text
    study = created.json()
    page = client.get("/studies", headers=headers).json()
    assert [s["id"] for s in page["items"]] == [study["id"]]
    item = page["items"][0]
    with app.state.session_factory() as session:
        states = dict(
            session.execute(
                sa.select(Job.state, sa.func.count())
                .where(Job.study_id == study["id"])
                .group_by(Job.state)
            )
            .tuples()
            .all()
        )
        assert session.get(Study, study["id"]).name == "listed"
    assert item["total"] == sum(states.values()) == 5
    assert {k: v for k, v in item["states"].items() if v} == states
    assert (item["methods"], item["seeds"], item["name"]) == (["none", "pgd"], [0, 1], "listed")
    jobs = client.get("/jobs", params={"study": study["id"], "limit": 10}, headers=headers).json()
    assert sorted(j["id"] for j in jobs["items"]) == sorted(study["jobs"])
    # Another user sees neither the study nor its jobs.
    stranger = token_for(f"{owner}-y")
    assert client.get("/studies", headers=stranger).json()["items"] == []
    assert (
        client.get("/jobs", params={"study": study["id"]}, headers=stranger).json()["items"] == []
    )


def test_the_dashboard_is_served_without_a_token_and_redirected_to(client):
    index = client.get("/ui/")
    assert index.status_code == 200 and "text/html" in index.headers["content-type"]
    assert '<script type="module" src="/ui/js/app.js">' in index.text
    # The pages hold a token: no framing, no other origin's scripts.
    assert index.headers["x-frame-options"] == "DENY"
    policy = index.headers["content-security-policy"]
    assert "default-src 'self'" in policy and "frame-ancestors 'none'" in policy
    for path in ("/", "/ui"):
        moved = client.get(path, follow_redirects=False)
        assert (moved.status_code, moved.headers["location"]) == (307, "/ui/")
    script = client.get("/ui/js/app.js")
    assert script.status_code == 200 and "javascript" in script.headers["content-type"]
    assert client.get("/ui/js/nope.js").status_code == 404


def test_the_catalogue_module_holds_the_apis_own_names(client):
    text = client.get("/ui/js/catalog.js").text
    assert text == catalog_module()
    expected = {
        "STATES": JOB_STATES,
        "KINDS": JOB_KINDS,
        "DETECTORS": DETECTORS,
        "METHODS": METHODS,
        "METRICS": METRICS,
        "SORT_KEYS": SORT_KEYS,
    }
    for name, values in expected.items():
        line = next(x for x in text.splitlines() if x.startswith(f"export const {name} = "))
        listed = line.removeprefix(f"export const {name} = ").rstrip(";")
        assert eval(listed) == list(values)  # noqa: S307 - a JSON list literal we wrote


def _modules() -> list[Path]:
    return sorted(STATIC.rglob("*.js"))


@pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed")
@pytest.mark.parametrize("module", _modules(), ids=lambda p: str(p.relative_to(STATIC)))
def test_every_page_module_parses(module: Path, tmp_path: Path):
    # As an ES module, the way the browser loads it (node checks syntax only).
    copy = tmp_path / f"{module.stem}.mjs"
    copy.write_text(module.read_text())
    result = subprocess.run(["node", "--check", str(copy)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_every_import_names_an_existing_module():
    import re

    for module in _modules():
        for target in re.findall(r'from "(\.[^"]+)"|import\("(\.[^"]+)"\)', module.read_text()):
            path = (module.parent / (target[0] or target[1])).resolve()
            assert path.name == "catalog.js" or path.is_file(), f"{module.name} imports {path}"
