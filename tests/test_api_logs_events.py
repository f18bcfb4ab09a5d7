"""``/jobs/{id}/logs`` and resuming ``/jobs/{id}/events`` with Last-Event-ID, on SQLite
and PostgreSQL."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa
from db_helpers import bearer, insert_job, migrated_app
from fastapi import FastAPI
from fastapi.testclient import TestClient

from api.services.job_data import tail_lines
from pgd_service.db.models import Artifact, Job, MetricPoint

Headers = dict[str, str]
SSE_LIMIT_S = 10.0


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def app(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[FastAPI]:
    yield from migrated_app(
        request.param,
        tmp_path_factory,
        data_root=tmp_path_factory.mktemp("data"),
        work_root=tmp_path_factory.mktemp("work"),
        events_poll_s=0.05,
        events_max_s=SSE_LIMIT_S,
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
def alice(app: FastAPI, owner: str) -> Headers:
    return bearer(app, owner)


@pytest.fixture
def add_job(app: FastAPI, owner: str) -> Callable[..., str]:
    def make(state: str = "running", **values: object) -> str:
        return insert_job(app, owner, state, **values)

    return make


def _add_artifact(app: FastAPI, job_id: str, name: str, kind: str, path: str) -> None:
    with app.state.session_factory() as session:
        session.add(Artifact(job_id=job_id, name=name, kind=kind, path=path, size=0))
        session.commit()


def _write_log(app: FastAPI, job_id: str, text: str, name: str = "run.log") -> Path:
    path = app.state.settings.work_root / job_id / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def _is_problem(response: httpx.Response, status: int) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    return response.json()


# --- logs --------------------------------------------------------------------------------


def test_logs_tail(app: FastAPI, client: httpx.Client, alice: Headers, add_job) -> None:
    job_id = add_job()
    lines = [f"iter {i}: loss {1000 - i}" for i in range(500)]
    _write_log(app, job_id, "\n".join(lines) + "\n")
    _add_artifact(app, job_id, "run.log", "log", f"{job_id}/run.log")

    response = client.get(f"/jobs/{job_id}/logs", headers=alice)
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/plain; charset=utf-8"
    assert response.text == "\n".join(lines[-200:]) + "\n"

    response = client.get(f"/jobs/{job_id}/logs", params={"tail": 3}, headers=alice)
    assert response.text == "iter 497: loss 503\niter 498: loss 502\niter 499: loss 501\n"
    response = client.get(f"/jobs/{job_id}/logs", params={"tail": 10_000}, headers=alice)
    assert response.text == "\n".join(lines) + "\n"


@pytest.mark.parametrize("tail", ["0", "-1", "10001", "many"])
def test_logs_tail_bounds(
    client: httpx.Client, alice: Headers, add_job: Callable[..., str], tail: str
) -> None:
    job_id = add_job()
    body = _is_problem(client.get(f"/jobs/{job_id}/logs?tail={tail}", headers=alice), 422)
    assert body["errors"][0]["field"] == "tail"


def test_logs_404_until_the_job_has_a_log(
    app: FastAPI, client: httpx.Client, alice: Headers, add_job: Callable[..., str]
) -> None:
    job_id = add_job()
    body = _is_problem(client.get(f"/jobs/{job_id}/logs", headers=alice), 404)
    assert body["detail"] == f"job {job_id} has no log yet"
    # Another kind of artifact is not a log; a log artifact whose file is missing is none.
    (app.state.settings.work_root / job_id).mkdir(parents=True, exist_ok=True)
    (app.state.settings.work_root / job_id / "epoch_1.pth").write_bytes(b"w")
    _add_artifact(app, job_id, "epoch_1.pth", "checkpoint", f"{job_id}/epoch_1.pth")
    _is_problem(client.get(f"/jobs/{job_id}/logs", headers=alice), 404)
    _add_artifact(app, job_id, "run.log", "log", f"{job_id}/run.log")
    _is_problem(client.get(f"/jobs/{job_id}/logs", headers=alice), 404)
    _write_log(app, job_id, "started\n")
    assert client.get(f"/jobs/{job_id}/logs", headers=alice).text == "started\n"


def test_logs_outside_the_work_root_are_refused(
    app: FastAPI, client: httpx.Client, alice: Headers, add_job: Callable[..., str], tmp_path: Path
) -> None:
    job_id = add_job()
    secret = tmp_path / "secret.log"
    secret.write_text("password\n")
    _add_artifact(app, job_id, "run.log", "log", str(secret))
    body = _is_problem(client.get(f"/jobs/{job_id}/logs", headers=alice), 403)
    assert "password" not in json.dumps(body)


def test_logs_visibility(app: FastAPI, client: httpx.Client, add_job: Callable[..., str]) -> None:
    job_id = add_job()
    _write_log(app, job_id, "hello\n")
    _add_artifact(app, job_id, "run.log", "log", f"{job_id}/run.log")
    _is_problem(client.get(f"/jobs/{job_id}/logs", headers=bearer(app, "someone-else")), 404)
    _is_problem(client.get(f"/jobs/{job_id}/logs"), 401)
    admin = bearer(app, "root", is_admin=True)
    assert client.get(f"/jobs/{job_id}/logs", headers=admin).text == "hello\n"


@pytest.mark.parametrize("chunk", [1, 5, 64 * 1024])
def test_tail_lines_reads_backwards_across_chunks(tmp_path: Path, chunk: int) -> None:
    path = tmp_path / "log.txt"
    path.write_bytes("a\nbé\n\nccc\ndd".encode())  # no final newline, a blank line, UTF-8
    assert tail_lines(path, 1, chunk) == "dd"
    assert tail_lines(path, 3, chunk) == "\nccc\ndd"
    assert tail_lines(path, 4, chunk) == "bé\n\nccc\ndd"
    assert tail_lines(path, 50, chunk) == "a\nbé\n\nccc\ndd"
    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"")
    assert tail_lines(empty, 5, chunk) == ""


# --- events: Last-Event-ID ---------------------------------------------------------------


def _add_points(app: FastAPI, job_id: str, *points: tuple[int, str, float]) -> list[int]:
    rows = [MetricPoint(job_id=job_id, step=s, name=n, value=v) for s, n, v in points]
    with app.state.session_factory() as session:
        session.add_all(rows)
        session.commit()
        return [row.id for row in rows]


def _update(app: FastAPI, job_id: str, **values: object) -> None:
    with app.state.session_factory() as session:
        session.execute(sa.update(Job).where(Job.id == job_id).values(**values))
        session.commit()


def _parse(text: str) -> list[dict]:
    events = []
    for block in text.split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines() if line[:1] != ":")
        if fields:
            fields["data"] = json.loads(fields["data"])
            events.append(fields)
    return events


def _events(client: httpx.Client, job_id: str, headers: Headers, last: str | None) -> list[dict]:
    extra = {} if last is None else {"Last-Event-ID": last}
    response = client.get(f"/jobs/{job_id}/events", headers={**headers, **extra})
    assert response.status_code == 200
    return _parse(response.text)


def test_resume_sends_only_what_was_missed(
    app: FastAPI, client: httpx.Client, alice: Headers, add_job: Callable[..., str]
) -> None:
    job_id = add_job("running", attempt=1)
    p1, p2, p3 = _add_points(app, job_id, (1, "loss", 3.0), (2, "loss", 2.0), (3, "loss", 1.0))
    _update(app, job_id, state="succeeded", progress=1.0)

    # The client saw the first point while the job was running at half progress.
    events = _events(client, job_id, alice, f"{p1}:running:1:0.5")
    assert events == [
        {
            "id": f"{p2}:running:1:0.5",
            "event": "metric",
            "data": {"step": 2, "name": "loss", "value": 2.0},
        },
        {
            "id": f"{p3}:running:1:0.5",
            "event": "metric",
            "data": {"step": 3, "name": "loss", "value": 1.0},
        },
        {
            "id": f"{p3}:succeeded:1:1.0",
            "event": "state",
            "data": {"state": "succeeded", "progress": 1.0, "attempt": 1},
        },
    ]
    # Resuming from the last event replays nothing; the job has finished, so the stream ends.
    assert _events(client, job_id, alice, events[-1]["id"]) == []
    # Only the state changed since: only the state is sent.
    assert _events(client, job_id, alice, f"{p3}:running:1:0.5") == events[-1:]


@pytest.mark.parametrize("garbage", ["7", "", "x:running:1:0.5", "1:exploded:1:0.5", "1:a:b:c"])
def test_an_id_this_api_did_not_send_starts_afresh(
    client: httpx.Client, alice: Headers, add_job: Callable[..., str], garbage: str
) -> None:
    job_id = add_job("failed", attempt=2)
    assert _events(client, job_id, alice, garbage) == [
        {
            "id": "0:failed:2:0.0",
            "event": "state",
            "data": {"state": "failed", "progress": 0.0, "attempt": 2},
        }
    ]


def test_live_resume_then_follows_new_events(
    app: FastAPI, client: httpx.Client, alice: Headers, add_job: Callable[..., str]
) -> None:
    job_id = add_job("running", attempt=0)
    seen_id, missed_id = _add_points(app, job_id, (1, "loss", 5.0), (2, "loss", 4.0))
    received: list[dict] = []
    first_event = threading.Event()
    errors: list[BaseException] = []
    later: list[int] = []

    def worker() -> None:
        try:
            assert first_event.wait(SSE_LIMIT_S / 2), "the resumed stream sent nothing"
            later.extend(_add_points(app, job_id, (3, "loss", 3.0)))
            time.sleep(0.1)
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)
        finally:
            _update(app, job_id, state="succeeded", progress=1.0)

    thread = threading.Thread(target=worker, daemon=True)
    thread.start()
    headers = {**alice, "Last-Event-ID": f"{seen_id}:running:0:0.0"}
    with client.stream("GET", f"/jobs/{job_id}/events", headers=headers) as response:
        buffer = ""
        for text in response.iter_text():
            buffer += text
            while "\n\n" in buffer:
                block, buffer = buffer.split("\n\n", 1)
                received.extend(_parse(block + "\n\n"))
                first_event.set()
    thread.join(SSE_LIMIT_S)
    assert not errors, errors
    assert [(e["id"], e["event"], e["data"]) for e in received] == [
        (f"{missed_id}:running:0:0.0", "metric", {"step": 2, "name": "loss", "value": 4.0}),
        (f"{later[0]}:running:0:0.0", "metric", {"step": 3, "name": "loss", "value": 3.0}),
        (
            f"{later[0]}:succeeded:0:1.0",
            "state",
            {"state": "succeeded", "progress": 1.0, "attempt": 0},
        ),
    ]
