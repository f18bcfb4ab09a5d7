"""A job's retry, metrics, artifacts and server-sent events, on SQLite and PostgreSQL."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import anyio
import httpx
import pytest
import sqlalchemy as sa
from db_helpers import bearer, insert_job, migrated_app
from fastapi import FastAPI
from fastapi.testclient import TestClient

from api.services.job_data import event_stream
from pgd_service.db.models import Artifact, Job, MetricPoint

Headers = dict[str, str]
SSE_LIMIT_S = 10.0  # the app closes any event stream after this: a broken test cannot hang


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def app(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[FastAPI]:
    work_root = tmp_path_factory.mktemp("work")
    yield from migrated_app(
        request.param,
        tmp_path_factory,
        data_root=tmp_path_factory.mktemp("data"),
        work_root=work_root,
        events_poll_s=0.05,
        events_max_s=SSE_LIMIT_S,
        # A broker that refuses at once: a retried job stays queued for the re-sender.
        broker_url="redis://127.0.0.1:1/0",
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
    """Authorization headers of a new token for ``owner`` (a new owner unless named)."""

    def make(owner: str | None = None, *, is_admin: bool = False) -> Headers:
        return bearer(app, owner or f"u-{uuid.uuid4().hex[:8]}", is_admin=is_admin)

    return make


@pytest.fixture
def alice(owner: str, token_for: Callable[..., Headers]) -> Headers:
    return token_for(owner)


@pytest.fixture
def add_job(app: FastAPI, owner: str) -> Callable[..., str]:
    """Insert a job of ``owner`` directly (any state) and return its id."""

    def make(state: str = "queued", **values: object) -> str:
        return insert_job(app, owner, state, **values)

    return make


def _update(app: FastAPI, job_id: str, **values: object) -> None:
    with app.state.session_factory() as session:
        session.execute(sa.update(Job).where(Job.id == job_id).values(**values))
        session.commit()


def _add_points(app: FastAPI, job_id: str, *points: tuple[int, str, float]) -> None:
    with app.state.session_factory() as session:
        session.add_all(
            MetricPoint(job_id=job_id, step=step, name=name, value=value)
            for step, name, value in points
        )
        session.commit()


def _point_ids(app: FastAPI, job_id: str) -> list[int]:
    with app.state.session_factory() as session:
        return list(
            session.scalars(
                sa.select(MetricPoint.id)
                .where(MetricPoint.job_id == job_id)
                .order_by(MetricPoint.id)
            )
        )


def _job(app: FastAPI, job_id: str) -> Job:
    with app.state.session_factory() as session:
        job = session.get(Job, job_id)
        assert job is not None
        return job


def _is_problem(response: httpx.Response, status: int) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body = response.json()
    assert body["status"] == status and {"type", "title", "detail"} <= set(body)
    return body


# --- retry -------------------------------------------------------------------------------


@pytest.mark.parametrize("state", ["failed", "cancelled"])
def test_retry_requeues_with_attempt_raised(
    app: FastAPI,
    client: httpx.Client,
    alice: Headers,
    add_job: Callable[..., str],
    state: str,
) -> None:
    job_id = add_job(
        state,
        attempt=1,
        reason="nan_loss",
        message="loss is NaN",
        cancel_requested=state == "cancelled",
        finished_at=sa.func.now(),
        lost_count=2,
        worker="host-a:123",
        task_id="old-task",
    )
    response = client.post(f"/jobs/{job_id}/retry", headers=alice)
    assert response.status_code == 202, response.text
    body = response.json()
    assert (body["state"], body["attempt"]) == ("queued", 2)
    assert body["reason"] is body["message"] is body["finished_at"] is None
    assert body["cancel_requested"] is False
    stored = _job(app, job_id)
    assert (stored.state, stored.attempt, stored.reason) == ("queued", 2, None)
    # A new task for the new attempt, its worker losses forgotten; the broker is
    # down, so the send time is cleared for the re-sender.
    assert stored.task_id != "old-task" and str(uuid.UUID(stored.task_id)) == stored.task_id
    assert (stored.lost_count, stored.worker, stored.enqueued_at) == (0, None, None)
    # Queued now: a second retry is refused and changes nothing.
    _is_problem(client.post(f"/jobs/{job_id}/retry", headers=alice), 409)
    again = _job(app, job_id)
    assert (again.attempt, again.task_id) == (2, stored.task_id)


@pytest.mark.parametrize("state", ["queued", "running", "cancelling", "succeeded"])
def test_retry_refused_unless_failed_or_cancelled(
    app: FastAPI, client: httpx.Client, alice: Headers, add_job: Callable[..., str], state: str
) -> None:
    job_id = add_job(state, attempt=1)
    body = _is_problem(client.post(f"/jobs/{job_id}/retry", headers=alice), 409)
    assert state in body["detail"]
    stored = _job(app, job_id)
    assert (stored.state, stored.attempt) == (state, 1)


def test_retry_visibility(
    app: FastAPI,
    client: httpx.Client,
    add_job: Callable[..., str],
    token_for: Callable[..., Headers],
) -> None:
    job_id = add_job("failed")
    _is_problem(client.post(f"/jobs/{job_id}/retry", headers=token_for()), 404)
    assert _job(app, job_id).state == "failed"
    _is_problem(client.post(f"/jobs/{uuid.uuid4()}/retry", headers=token_for()), 404)
    admin = token_for(is_admin=True)
    response = client.post(f"/jobs/{job_id}/retry", headers=admin)
    assert response.status_code == 202 and response.json()["attempt"] == 1


# --- metrics -----------------------------------------------------------------------------


def test_metrics_grouped_by_name_and_ordered_by_step(
    app: FastAPI,
    client: httpx.Client,
    alice: Headers,
    add_job: Callable[..., str],
    token_for: Callable[..., Headers],
) -> None:
    job_id = add_job("running")
    other = add_job("running")
    _add_points(app, job_id, (3, "loss", 0.5), (1, "loss", 1.5), (2, "lr", 0.01))
    _add_points(app, job_id, (2, "loss", 1.0), (1, "lr", 0.02), (1, "bbox_mAP", 0.1))
    _add_points(app, other, (1, "loss", 9.0))
    series = client.get(f"/jobs/{job_id}/metrics", headers=alice).json()["series"]
    assert series == {
        "bbox_mAP": [{"step": 1, "value": 0.1}],
        "loss": [
            {"step": 1, "value": 1.5},
            {"step": 2, "value": 1.0},
            {"step": 3, "value": 0.5},
        ],
        "lr": [{"step": 1, "value": 0.02}, {"step": 2, "value": 0.01}],
    }
    filtered = client.get(
        f"/jobs/{job_id}/metrics", params=[("name", "lr"), ("name", "bbox_mAP")], headers=alice
    ).json()["series"]
    assert filtered == {"bbox_mAP": series["bbox_mAP"], "lr": series["lr"]}
    assert client.get(f"/jobs/{add_job()}/metrics", headers=alice).json() == {"series": {}}
    _is_problem(client.get(f"/jobs/{job_id}/metrics", headers=token_for()), 404)


# --- artifacts ---------------------------------------------------------------------------


def test_artifacts_list_and_download(
    app: FastAPI,
    client: httpx.Client,
    alice: Headers,
    add_job: Callable[..., str],
    token_for: Callable[..., Headers],
    tmp_path: Path,
) -> None:
    job_id = add_job("succeeded")
    work_root: Path = app.state.settings.work_root
    job_dir = work_root / job_id
    job_dir.mkdir()
    (job_dir / "epoch_1.pth").write_bytes(b"weights")
    (job_dir / "loss.png").write_bytes(b"\x89PNG")
    outside = tmp_path / "secret.txt"
    outside.write_text("not yours")
    (job_dir / "link.txt").symlink_to(outside)
    with app.state.session_factory() as session:
        session.add_all(
            [
                Artifact(
                    job_id=job_id,
                    name="epoch_1.pth",
                    kind="checkpoint",
                    path=str(job_dir / "epoch_1.pth"),
                    size=7,
                ),
                # A relative path is taken from the work root.
                Artifact(
                    job_id=job_id, name="loss.png", kind="plot", path=f"{job_id}/loss.png", size=4
                ),
                Artifact(
                    job_id=job_id, name="gone.log", kind="log", path=f"{job_id}/gone.log", size=1
                ),
                Artifact(job_id=job_id, name="secret.txt", kind="log", path=str(outside), size=9),
                Artifact(
                    job_id=job_id,
                    name="dotdot.txt",
                    kind="log",
                    path=f"{job_id}/../../{outside.name}",
                    size=9,
                ),
                Artifact(
                    job_id=job_id, name="link.txt", kind="log", path=f"{job_id}/link.txt", size=9
                ),
            ]
        )
        session.commit()

    listing = client.get(f"/jobs/{job_id}/artifacts", headers=alice).json()
    assert [(a["name"], a["kind"], a["size"]) for a in listing] == [
        ("dotdot.txt", "log", 9),
        ("epoch_1.pth", "checkpoint", 7),
        ("gone.log", "log", 1),
        ("link.txt", "log", 9),
        ("loss.png", "plot", 4),
        ("secret.txt", "log", 9),
    ]
    response = client.get(f"/jobs/{job_id}/artifacts/epoch_1.pth", headers=alice)
    assert response.status_code == 200 and response.content == b"weights"
    assert "epoch_1.pth" in response.headers["content-disposition"]
    assert client.get(f"/jobs/{job_id}/artifacts/loss.png", headers=alice).content == b"\x89PNG"

    _is_problem(client.get(f"/jobs/{job_id}/artifacts/gone.log", headers=alice), 404)
    _is_problem(client.get(f"/jobs/{job_id}/artifacts/nope", headers=alice), 404)
    for name in ("secret.txt", "dotdot.txt", "link.txt"):
        response = client.get(f"/jobs/{job_id}/artifacts/{name}", headers=alice)
        _is_problem(response, 403)
        assert b"not yours" not in response.content

    stranger = token_for()
    _is_problem(client.get(f"/jobs/{job_id}/artifacts", headers=stranger), 404)
    _is_problem(client.get(f"/jobs/{job_id}/artifacts/epoch_1.pth", headers=stranger), 404)
    admin = token_for(is_admin=True)
    assert client.get(f"/jobs/{job_id}/artifacts/epoch_1.pth", headers=admin).content == b"weights"


# --- server-sent events ------------------------------------------------------------------


def _events(lines: Iterator[str], on_event: Callable[[dict], None]) -> list[dict]:
    """Parse an SSE stream into ``{id, event, data}`` dicts, calling ``on_event`` for each."""
    events: list[dict] = []
    current: dict = {}
    for line in lines:
        if line == "":
            if current:
                events.append(current)
                on_event(current)
                current = {}
        elif line.startswith(":"):
            continue
        else:
            field, _, value = line.partition(": ")
            current[field] = json.loads(value) if field == "data" else value
    return events


def test_events_stream_state_and_metrics_until_finished(
    app: FastAPI,
    client: httpx.Client,
    alice: Headers,
    add_job: Callable[..., str],
) -> None:
    job_id = add_job("running", attempt=1)
    _add_points(app, job_id, (0, "loss", 9.0))  # stored before connecting: not streamed
    connected, progressed = threading.Event(), threading.Event()
    errors: list[BaseException] = []

    def seen(event: dict) -> None:
        connected.set()
        if event["event"] == "state" and event["data"]["progress"] == 0.5:
            progressed.set()

    def worker() -> None:
        try:
            assert connected.wait(SSE_LIMIT_S / 2), "the stream never opened"
            _update(app, job_id, progress=0.5)
            assert progressed.wait(SSE_LIMIT_S / 2), "the progress was not sent"
            _add_points(app, job_id, (1, "loss", 2.0), (1, "lr", 0.01))
            time.sleep(0.2)
            _add_points(app, job_id, (2, "loss", 1.0))
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)
        finally:
            _update(app, job_id, state="succeeded", progress=1.0)

    thread = threading.Thread(target=worker, daemon=True)
    thread.start()
    started = time.monotonic()
    with client.stream("GET", f"/jobs/{job_id}/events", headers=alice) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        events = _events(response.iter_lines(), seen)
    thread.join(SSE_LIMIT_S)
    assert not errors, errors
    assert time.monotonic() - started < SSE_LIMIT_S, "the stream did not end on success"

    # Each id is the stream position after its event: the last metric point sent
    # and the state last sent (what Last-Event-ID resumes from).
    point_ids = _point_ids(app, job_id)
    assert [e["id"] for e in events] == [
        f"{point_ids[0]}:running:1:0.0",
        f"{point_ids[0]}:running:1:0.5",
        f"{point_ids[1]}:running:1:0.5",
        f"{point_ids[2]}:running:1:0.5",
        f"{point_ids[3]}:running:1:0.5",
        f"{point_ids[3]}:succeeded:1:1.0",
    ]
    assert events[0] == {
        "id": f"{point_ids[0]}:running:1:0.0",
        "event": "state",
        "data": {"state": "running", "progress": 0.0, "attempt": 1},
    }
    assert events[-1]["event"] == "state"
    assert events[-1]["data"] == {"state": "succeeded", "progress": 1.0, "attempt": 1}
    metrics = [e["data"] for e in events if e["event"] == "metric"]
    assert metrics == [
        {"step": 1, "name": "loss", "value": 2.0},
        {"step": 1, "name": "lr", "value": 0.01},
        {"step": 2, "name": "loss", "value": 1.0},
    ]
    states = [e["data"] for e in events if e["event"] == "state"]
    assert states == [
        {"state": "running", "progress": 0.0, "attempt": 1},
        {"state": "running", "progress": 0.5, "attempt": 1},
        {"state": "succeeded", "progress": 1.0, "attempt": 1},
    ]
    # The state on connect, the progress, the metrics, and the success last of all
    # (each poll sends the points stored before the state it read).
    assert [e["event"] for e in events] == ["state", "state", "metric", "metric", "metric", "state"]


def test_events_of_a_finished_job_end_at_once(
    client: httpx.Client, alice: Headers, add_job: Callable[..., str]
) -> None:
    job_id = add_job("cancelled", attempt=2)
    response = client.get(f"/jobs/{job_id}/events", headers=alice)
    assert response.status_code == 200
    assert response.text == (
        "id: 0:cancelled:2:0.0\nevent: state\n"
        'data: {"state": "cancelled", "progress": 0.0, "attempt": 2}\n\n'
    )


def test_events_visibility(
    client: httpx.Client, add_job: Callable[..., str], token_for: Callable[..., Headers]
) -> None:
    job_id = add_job("running")
    _is_problem(client.get(f"/jobs/{job_id}/events", headers=token_for()), 404)
    _is_problem(client.get(f"/jobs/{job_id}/events"), 401)


def test_idle_stream_keeps_alive_and_closes_after_its_limit(
    app: FastAPI, add_job: Callable[..., str]
) -> None:
    job_id = add_job("running")

    async def collect() -> list[str]:
        stream = event_stream(
            session_factory=app.state.session_factory,
            job_id=job_id,
            poll_s=0.02,
            keepalive_s=0.1,
            max_s=0.5,
        )
        return [chunk async for chunk in stream]

    started = time.monotonic()
    chunks = anyio.run(collect)
    assert time.monotonic() - started < 5
    assert chunks[0].startswith("id: 0:running:0:0.0\nevent: state\n")
    assert len(chunks) >= 3 and set(chunks[1:]) == {": keep-alive\n\n"}
