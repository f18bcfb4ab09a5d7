"""Jobs reach a real Redis broker after their row is committed, on SQLite and PostgreSQL."""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import redis
import sqlalchemy as sa
from db_helpers import bearer, flushed_redis, migrated_app
from fastapi import FastAPI
from fastapi.testclient import TestClient

from api.main import create_app
from pgd_core.data.synthetic_shapes import make_coco_shapes
from pgd_core.presets import get_preset
from pgd_service import maintenance
from pgd_service import queue as enqueue
from pgd_service.db.models import Job

Headers = dict[str, str]
REDIS_DB = 12
BROKER = f"redis://127.0.0.1:6379/{REDIS_DB}"
BROKER_DOWN = "redis://127.0.0.1:1/0"  # nothing listens on port 1: refused at once


@pytest.fixture(scope="module")
def broker() -> Iterator[redis.Redis]:
    yield from flushed_redis(BROKER)


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def app(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    broker: redis.Redis,
) -> Iterator[FastAPI]:
    data_root = tmp_path_factory.mktemp("data")
    make_coco_shapes(data_root, "shapes", num_train=1, num_val=1, max_objects=1)
    yield from migrated_app(
        request.param,
        tmp_path_factory,
        data_root=data_root,
        broker_url=BROKER,
        broker_timeout_s=1.0,
    )


@pytest.fixture
def queues(broker: redis.Redis) -> Iterator[redis.Redis]:
    """The broker's database, empty at the start and at the end of each test."""
    broker.flushdb()
    yield broker
    broker.flushdb()


@pytest.fixture
def client(app: FastAPI) -> Iterator[httpx.Client]:
    with TestClient(app) as http:
        yield http


@pytest.fixture
def alice(app: FastAPI) -> Headers:
    return bearer(app, f"u-{uuid.uuid4().hex[:8]}")


@pytest.fixture
def down_app(app: FastAPI) -> Iterator[FastAPI]:
    """The same database behind an API whose broker is down."""
    settings = app.state.settings.model_copy(update={"broker_url": BROKER_DOWN})
    other = create_app(settings)
    try:
        yield other
    finally:
        other.state.engine.dispose()


def _messages(broker: redis.Redis, queue: str) -> list[dict[str, Any]]:
    """The task messages waiting in ``queue``, oldest first, with their decoded body.

    Kombu's Redis transport LPUSHes a JSON envelope whose body is the base64 JSON
    of Celery's protocol 2 ``[args, kwargs, embed]``.
    """
    out = []
    for raw in reversed(broker.lrange(queue, 0, -1)):
        envelope = json.loads(raw)
        assert envelope["properties"]["body_encoding"] == "base64"
        assert envelope["content-type"] == "application/json"
        args, kwargs, _ = json.loads(base64.b64decode(envelope["body"]))
        out.append(
            {
                "task": envelope["headers"]["task"],
                "id": envelope["headers"]["id"],
                "args": args,
                "kwargs": kwargs,
            }
        )
    return out


def _job(app: FastAPI, job_id: str) -> Job:
    with app.state.session_factory() as session:
        job = session.get(Job, job_id)
        assert job is not None
        return job


def _spec(name: str = "tiny-fcos-student", **changes: object) -> dict[str, Any]:
    return get_preset(name).model_dump(mode="json") | changes


def test_post_job_sends_one_message_to_the_cpu_queue(
    app: FastAPI, client: httpx.Client, alice: Headers, queues: redis.Redis
) -> None:
    response = client.post("/jobs", json=_spec(), headers=alice)
    assert response.status_code == 202, response.text
    job_id = response.json()["id"]
    stored = _job(app, job_id)
    assert stored.enqueued_at is not None and stored.task_id is not None
    assert _messages(queues, "cpu") == [
        {"task": "pgd.run_job", "id": stored.task_id, "args": [job_id, 0], "kwargs": {}}
    ]
    assert _messages(queues, "gpu") == []


def test_cuda_jobs_go_to_the_gpu_queue(
    app: FastAPI, client: httpx.Client, alice: Headers, queues: redis.Redis
) -> None:
    response = client.post("/jobs", json=_spec(device="cuda"), headers=alice)
    assert response.status_code == 202, response.text
    job_id = response.json()["id"]
    assert [m["args"] for m in _messages(queues, "gpu")] == [[job_id, 0]]
    assert _messages(queues, "cpu") == []


@pytest.mark.parametrize(
    ("device", "processes", "queue"), [("cpu", 2, "cpu-x2"), ("cuda", 8, "gpu-x8")]
)
def test_a_job_of_n_processes_waits_in_the_queue_of_n_devices(
    app: FastAPI,
    client: httpx.Client,
    alice: Headers,
    queues: redis.Redis,
    device: str,
    processes: int,
    queue: str,
) -> None:
    spec = _spec(device=device, processes=processes)
    spec["schedule"]["batch_size"] = 8  # the global batch: one image per GPU at 8
    response = client.post("/jobs", json=spec, headers=alice)
    assert response.status_code == 202, response.text
    job_id = response.json()["id"]
    assert [m["args"] for m in _messages(queues, queue)] == [[job_id, 0]]
    # Nowhere a worker with fewer devices would take it.
    assert all(_messages(queues, q) == [] for q in enqueue.QUEUES if q != queue)


def test_a_batch_that_does_not_split_over_the_processes_is_refused(
    app: FastAPI, client: httpx.Client, alice: Headers, queues: redis.Redis
) -> None:
    spec = _spec(processes=4)
    spec["schedule"]["batch_size"] = 6
    response = client.post("/jobs", json=spec, headers=alice)
    assert response.status_code == 422, response.text
    text = response.text
    assert "schedule.batch_size" in text and "6 images" in text and "4 processes" in text
    too_many = client.post("/jobs", json=_spec(processes=9), headers=alice)
    assert too_many.status_code == 422 and "processes" in too_many.text
    assert all(_messages(queues, q) == [] for q in enqueue.QUEUES)


def test_idempotent_replay_sends_nothing_new(
    app: FastAPI, client: httpx.Client, alice: Headers, queues: redis.Redis
) -> None:
    headers = {**alice, "Idempotency-Key": "once"}
    first = client.post("/jobs", json=_spec(seed=7), headers=headers)
    replay = client.post("/jobs", json=_spec(seed=7), headers=headers)
    assert (first.status_code, replay.status_code) == (202, 200)
    assert replay.json()["id"] == first.json()["id"]
    assert [m["args"] for m in _messages(queues, "cpu")] == [[first.json()["id"], 0]]


def test_broker_down_accepts_the_job_and_the_resender_sends_it(
    app: FastAPI, down_app: FastAPI, alice: Headers, queues: redis.Redis
) -> None:
    with TestClient(down_app) as down:
        response = down.post("/jobs", json=_spec(seed=11), headers=alice)
    assert response.status_code == 202, response.text
    job_id = response.json()["id"]
    assert response.json()["state"] == "queued"
    unsent = _job(app, job_id)
    assert unsent.enqueued_at is None and unsent.state == "queued"
    assert _messages(queues, "cpu") == []

    # A maintenance pass with the broker back sends it, with a new task id.
    report = maintenance.maintain(app.state.session_factory, app.state.settings)
    assert report.resent == [job_id]
    sent = _job(app, job_id)
    assert sent.enqueued_at is not None and sent.task_id != unsent.task_id
    assert _messages(queues, "cpu") == [
        {"task": "pgd.run_job", "id": sent.task_id, "args": [job_id, 0], "kwargs": {}}
    ]
    # Sent recently: the next pass leaves it alone.
    assert maintenance.maintain(app.state.session_factory, app.state.settings).resent == []
    assert len(_messages(queues, "cpu")) == 1


def test_retry_publishes_the_next_attempt(
    app: FastAPI, client: httpx.Client, alice: Headers, queues: redis.Redis
) -> None:
    job_id = client.post("/jobs", json=_spec(seed=21), headers=alice).json()["id"]
    first = _job(app, job_id)
    with app.state.session_factory() as session:
        session.execute(
            sa.update(Job)
            .where(Job.id == job_id)
            .values(state="failed", attempt=3, reason="nan_loss", lost_count=1, worker="h:1")
        )
        session.commit()
    queues.flushdb()
    response = client.post(f"/jobs/{job_id}/retry", headers=alice)
    assert response.status_code == 202, response.text
    assert (response.json()["state"], response.json()["attempt"]) == ("queued", 4)
    retried = _job(app, job_id)
    assert retried.task_id != first.task_id and retried.enqueued_at is not None
    assert (retried.lost_count, retried.worker) == (0, None)
    assert _messages(queues, "cpu") == [
        {"task": "pgd.run_job", "id": retried.task_id, "args": [job_id, 4], "kwargs": {}}
    ]


def test_sweep_sends_every_job_after_its_commit(
    app: FastAPI, client: httpx.Client, alice: Headers, queues: redis.Redis
) -> None:
    body = {"base": _spec("tiny-fcos-pgd"), "grid": {"seed": [1, 2, 3]}}
    response = client.post("/sweeps", json=body, headers=alice)
    assert response.status_code == 202, response.text
    jobs = response.json()["jobs"]
    assert len(jobs) == 3
    messages = _messages(queues, "cpu")
    assert [m["args"] for m in messages] == [[job_id, 0] for job_id in jobs]
    assert [m["id"] for m in messages] == [_job(app, job_id).task_id for job_id in jobs]


def test_sweep_with_the_broker_down_leaves_every_job_to_the_resender(
    app: FastAPI, down_app: FastAPI, alice: Headers, queues: redis.Redis
) -> None:
    body = {"base": _spec("tiny-fcos-pgd"), "grid": {"seed": [4, 5]}}
    with TestClient(down_app) as down:
        response = down.post("/sweeps", json=body, headers=alice)
    assert response.status_code == 202, response.text
    jobs = response.json()["jobs"]
    assert [_job(app, job_id).enqueued_at for job_id in jobs] == [None, None]
    report = maintenance.maintain(app.state.session_factory, app.state.settings)
    assert report.resent == jobs
    assert [m["args"] for m in _messages(queues, "cpu")] == [[job_id, 0] for job_id in jobs]


def test_readyz_checks_the_broker(
    client: httpx.Client, down_app: FastAPI, alice: Headers, queues: redis.Redis
) -> None:
    assert client.get("/readyz", headers=alice).json() == {"status": "ok"}
    with TestClient(down_app) as down:
        response = down.get("/readyz", headers=alice)
    assert response.status_code == 503
    assert response.headers["content-type"].startswith("application/problem+json")
    assert response.headers["retry-after"] == "5"
    body = response.json()
    assert body["detail"] == "not ready: broker unreachable"
    assert body["checks"] == {"database": "ok", "broker": "unreachable"}


def test_readyz_with_an_embedded_broker_needs_no_server(
    app: FastAPI, alice: Headers, tmp_path_factory: pytest.TempPathFactory
) -> None:
    folder = tmp_path_factory.mktemp("broker")
    settings = app.state.settings.model_copy(
        update={"broker_url": f"sqla+sqlite:///{folder / 'broker.db'}"}
    )
    embedded = create_app(settings)
    try:
        with TestClient(embedded) as http:
            assert http.get("/readyz", headers=alice).json() == {"status": "ok"}
    finally:
        embedded.state.engine.dispose()


def test_publish_sends_celerys_own_message(app: FastAPI, queues: redis.Redis) -> None:
    """publish() goes through Celery's send_task: the message on the queue list is
    Celery's task message for pgd.run_job(job_id, attempt)."""
    assert enqueue.publish(app.state.settings, job_id="j", attempt=1, queue="cpu", task_id="t")
    assert _messages(queues, "cpu") == [
        {"task": "pgd.run_job", "id": "t", "args": ["j", 1], "kwargs": {}}
    ]
