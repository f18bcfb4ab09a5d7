"""What the audit of issue 17 found, each reproduced as it was reported and now
refused or survived: on SQLite and PostgreSQL through the ASGI app, and against a
real API process where the finding was about connections and sockets."""

from __future__ import annotations

import json
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from db_helpers import bearer, migrated_app
from fastapi import FastAPI
from fastapi.testclient import TestClient
from ui_helpers import LiveApi, live_api, start

from api.services.job_data import tail_lines
from pgd_core.data.manifest import MANIFEST_NAME
from pgd_core.data.synthetic_shapes import make_coco_shapes
from pgd_core.presets import get_preset
from pgd_service.db.models import Job


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def app(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[FastAPI]:
    data_root = tmp_path_factory.mktemp("data")
    make_coco_shapes(data_root, "shapes", num_train=2, num_val=1, max_objects=2)
    broken = data_root / "broken"
    broken.mkdir()
    (broken / MANIFEST_NAME).write_text("{not json")
    weights = tmp_path_factory.mktemp("weights")
    (weights / "resnet18.pth").write_bytes(b"")
    yield from migrated_app(
        request.param,
        tmp_path_factory,
        data_root=data_root,
        weights_root=weights,
        limit_max_iters=100_000,
        limit_active_jobs=3,
    )


@pytest.fixture
def client(app: FastAPI) -> Iterator[httpx.Client]:
    with TestClient(app) as http:
        yield http


@pytest.fixture
def token_for(app: FastAPI) -> Callable[..., dict[str, str]]:
    def make(owner: str | None = None, *, is_admin: bool = False) -> dict[str, str]:
        return bearer(app, owner or f"u-{uuid.uuid4().hex[:8]}", is_admin=is_admin)

    return make


def spec(name: str = "tiny-fcos-student", **changes: object) -> dict:
    data = get_preset(name).model_dump(mode="json")
    data.update(changes)
    return data


def errors(response: httpx.Response, status: int = 422) -> dict[str, str]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    return {e["field"]: e["message"] for e in response.json().get("errors", [])}


# -- request bodies ------------------------------------------------------------------------


def test_non_finite_numbers_are_refused_by_field(client, token_for):
    alice = token_for()
    for raw, field in (
        ('{"lr": 1e400}', "schedule.lr"),
        ('{"lr": NaN}', "schedule.lr"),
        ('{"momentum": -Infinity}', "schedule.momentum"),
    ):
        body = json.dumps(spec()).replace('"lr": 0.01', raw[1:-1], 1)
        if field == "schedule.momentum":
            body = json.dumps(spec()).replace('"momentum": 0.9', raw[1:-1], 1)
        assert raw[1:-1] in body, body
        response = client.post(
            "/jobs", content=body, headers={**alice, "Content-Type": "application/json"}
        )
        found = errors(response)
        assert field in found and "finite" in found[field], found


@pytest.mark.parametrize(
    ("section", "key", "value", "expected"),
    [
        ("schedule", "max_iters", "20", "valid integer"),
        ("schedule", "max_iters", True, "valid integer"),
        ("schedule", "max_iters", 20.5, "valid integer"),
        ("schedule", "lr", "0.01", "valid number"),
        ("student", "use_dcn", 1, "valid boolean"),
        ("student", "depth", "18", "18"),
    ],
)
def test_numbers_and_booleans_are_never_coerced(client, token_for, section, key, value, expected):
    data = spec()
    data[section] = {**data[section], key: value}
    found = errors(client.post("/jobs", json=data, headers=token_for()))
    assert f"{section}.{key}" in found and expected in found[f"{section}.{key}"], found
    # The same field as JSON's own type is accepted; an integer is a fine float.
    ok = spec()
    ok["schedule"] = {**ok["schedule"], "lr": 1, "max_iters": 20}
    assert client.post("/jobs", json=ok, headers=token_for()).status_code == 202


def test_bodies_past_the_limit_are_413_and_lists_are_bounded(client, token_for):
    alice = token_for()
    big = spec()
    big["dataset"]["multiscale_short"] = [800] * 300_000  # about 1.5 MB of JSON
    response = client.post("/jobs", json=big, headers=alice)
    assert response.status_code == 413
    assert "over the limit of 1048576 bytes" in response.json()["detail"]
    long = spec()
    long["dataset"]["multiscale_short"] = [800] * 33
    assert "dataset.multiscale_short" in errors(client.post("/jobs", json=long, headers=alice))
    huge = spec()
    huge["dataset"]["img_scale"] = [100_000, 800]
    assert "dataset.img_scale.0" in errors(client.post("/jobs", json=huge, headers=alice))


def test_a_plain_text_body_is_415_and_a_missing_token_401_before_the_body(client):
    text = client.post(
        "/jobs",
        content="hello",
        headers={"Authorization": "Bearer x", "Content-Type": "text/plain"},
    )
    assert text.status_code == 415 and "application/json" in text.json()["detail"]
    anonymous = client.post("/jobs", json=spec())
    assert anonymous.status_code == 401


def test_server_limits_name_the_field_and_the_limit(client, token_for):
    alice = token_for()
    data = spec()
    data["schedule"]["max_iters"] = 200_000
    assert errors(client.post("/jobs", json=data, headers=alice)) == {
        "schedule.max_iters": "200000 is over this server's limit of 100000"
    }


def test_unfinished_jobs_per_owner_are_capped_with_429(client, token_for):
    carol = token_for()
    for seed in range(3):
        assert client.post("/jobs", json=spec(seed=seed), headers=carol).status_code == 202
    refused = client.post("/jobs", json=spec(seed=9), headers=carol)
    assert refused.status_code == 429 and "limit of 3" in refused.json()["detail"]
    sweep = {"base": spec(), "grid": {"seed": [10, 11]}}
    assert client.post("/sweeps", json=sweep, headers=token_for()).status_code == 202
    assert client.post("/sweeps", json=sweep | {"grid": {"seed": [1, 2, 3, 4]}},
                       headers=token_for()).status_code == 429  # fmt: skip


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"dataset": {"name": "shapes", "train_split": "val", "val_split": "val"}},
         "dataset.val_split"),
        ({"student": {"depth": 18, "pretrained": "resnet999"}}, "student.pretrained"),
    ],
)  # fmt: skip
def test_specs_a_worker_would_fail_on_are_refused_at_post(client, token_for, changes, field):
    data = spec()
    for key, value in changes.items():
        data[key] = {**data[key], **value} if isinstance(data[key], dict) else value
    assert field in errors(client.post("/jobs", json=data, headers=token_for()))
    ok = spec()
    ok["student"] = {**ok["student"], "pretrained": "resnet18"}
    assert client.post("/jobs", json=ok, headers=token_for()).status_code == 202


def test_an_empty_idempotency_key_is_refused(client, token_for):
    response = client.post("/jobs", json=spec(), headers={**token_for(), "Idempotency-Key": ""})
    assert "idempotency-key" in {f.lower() for f in errors(response)}


# -- 422s that were 500s -----------------------------------------------------------------


def test_out_of_range_numbers_in_queries_are_422(client, token_for):
    alice = token_for()
    assert "offset" in errors(client.get("/results", params={"offset": 10**20}, headers=alice))
    import base64

    cursor = base64.urlsafe_b64encode(b"s99999999999999999999").decode().rstrip("=")
    assert client.get("/jobs", params={"cursor": cursor}, headers=alice).status_code == 422
    assert "state" in errors(client.get("/jobs", params={"state": "bogus"}, headers=alice))
    assert "kind" in errors(client.get("/jobs", params={"kind": "bake"}, headers=alice))


def test_a_deeply_nested_grid_value_is_422(client, token_for):
    value: object = 1
    for _ in range(900):
        value = [value]
    response = client.post(
        "/sweeps", json={"base": spec(), "grid": {"seed": [value]}}, headers=token_for()
    )
    assert response.status_code == 422 and "nested deeper" in response.text


def test_a_broken_manifest_is_flagged_not_fatal(client, token_for):
    listed = {d["name"]: d for d in client.get("/datasets", headers=token_for()).json()}
    assert listed["shapes"]["usable"] is True and listed["shapes"]["splits"] == ["train", "val"]
    assert listed["broken"]["usable"] is False
    assert "unusable" in listed["broken"]["problem"] and "/" not in listed["broken"]["problem"]


def test_readyz_needs_no_token(client):
    assert client.get("/readyz").status_code == 200


def test_a_log_without_newlines_tails_fast_and_bounded(tmp_path: Path):
    log = tmp_path / "run.log"
    log.write_bytes(b"x" * (32 << 20))
    began = time.perf_counter()
    tail = tail_lines(log, 1)
    assert time.perf_counter() - began < 1.0
    assert len(tail) == 4 << 20
    log.write_bytes(b"a\nb\nc\n" + b"y" * 100)
    assert tail_lines(log, 2) == "c\n" + "y" * 100


# -- a real API process: sockets and connections -----------------------------------------


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveApi]:
    with live_api(tmp_path_factory.mktemp("hardening")) as api:
        yield api


def test_an_oversized_body_is_refused_before_it_is_sent(live: LiveApi):
    """Headers announce 50 MB and no byte of it follows: the answer must come anyway."""
    host, port = live.url.removeprefix("http://").split(":")
    for auth, status in ((b"", b"401"), (b"Authorization: Bearer x\r\n", b"413")):
        with socket.create_connection((host, int(port)), timeout=5) as sock:
            sock.sendall(
                b"POST /jobs HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                + auth
                + b"Content-Length: 50000000\r\n\r\n"
            )
            answer = sock.recv(4096)
        assert answer.split(b" ")[1] == status, answer


def test_open_event_streams_hold_no_connection(live: LiveApi):
    """60 streams (the pool holds 40 connections): every other request still answers
    at once and every stream gets its first event."""
    token = live.token(f"streams-{uuid.uuid4().hex[:6]}")
    headers = {"Authorization": f"Bearer {token}"}
    with httpx.Client(base_url=live.url, headers=headers) as http:
        job_id = http.post("/jobs", json=spec()).json()["id"]
    start(live, job_id)
    first_events: list[str] = []
    stop = threading.Event()

    def listen() -> None:
        with httpx.Client(base_url=live.url, headers=headers, timeout=60) as http:
            with http.stream("GET", f"/jobs/{job_id}/events") as response:
                for line in response.iter_lines():
                    if line.startswith("event: "):
                        first_events.append(line)
                        break
                stop.wait(30)

    threads = [threading.Thread(target=listen, daemon=True) for _ in range(60)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 60
    while len(first_events) < 60 and time.monotonic() < deadline:
        time.sleep(0.1)
    try:
        assert len(first_events) == 60 and set(first_events) == {"event: state"}
        with httpx.Client(base_url=live.url, headers=headers, timeout=30) as http:
            for path in ("/jobs", "/healthz", f"/jobs/{job_id}"):
                began = time.perf_counter()
                assert http.get(path).status_code == 200
                assert time.perf_counter() - began < 1.0, path
    finally:
        stop.set()
        for thread in threads:
            thread.join(10)


# -- the worker ----------------------------------------------------------------------------


def test_an_evaluate_job_of_a_registered_checkpoint_records_its_outcome(tmp_path: Path):
    """Its checkpoint is an input under the weights root, outside the work root: it is
    not registered as the job's artifact, and finishing no longer raises."""
    from types import SimpleNamespace

    from worker_helpers import stack, tiny_spec

    from pgd_service.db.models import Artifact
    from pgd_service.lifecycle import claim, job_values
    from worker.execution import Outcome, _artifacts, finish

    weights = tmp_path / "weights" / "x.pth"
    weights.parent.mkdir()
    weights.write_bytes(b"w")
    result = SimpleNamespace(checkpoint=weights, plots=[])
    assert _artifacts(result, tmp_path / "work", "evaluate") == []
    assert _artifacts(result, tmp_path / "work", "train")[0][0] == "checkpoint"
    (tmp_path / "s").mkdir()
    with stack("sqlite", "redis://127.0.0.1:1/0", tmp_path / "s") as s:
        job = Job(**job_values(spec=tiny_spec(), owner="u", max_attempts=3))
        with s.sessions() as session:
            session.add(job)
            session.commit()
            claimed = claim(session, job.id, 0, "w")
            assert claimed is not None
        outcome = Outcome(
            "succeeded", metrics={"ap": 1.0}, artifacts=[("x", "checkpoint", weights)]
        )
        assert finish(s.sessions, s.settings, claimed, 0, outcome)
        assert s.job(job.id).state == "succeeded"
        with s.sessions() as session:
            assert session.query(Artifact).filter(Artifact.job_id == job.id).count() == 0
