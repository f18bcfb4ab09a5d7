"""Concurrent requests against one job, on PostgreSQL and SQLite migrated by Alembic.

Eight threads fire the same request at once (a barrier releases them together),
each through its own TestClient, so the sync routes run on separate worker
threads with separate database sessions. The guarded UPDATEs and the unique
(owner, idempotency key) index must let exactly one of them win.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import sqlalchemy as sa
from db_helpers import bearer, insert_job, migrated_app
from fastapi import FastAPI
from fastapi.testclient import TestClient

from pgd_core.data.synthetic_shapes import make_coco_shapes
from pgd_core.presets import get_preset
from pgd_service.db.models import Job

THREADS = 8
WAIT_S = 30.0  # every barrier and future is bounded: a deadlock fails instead of hanging
ROUNDS = 3


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def app(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[FastAPI]:
    data_root = tmp_path_factory.mktemp("data")
    make_coco_shapes(data_root, "shapes", num_train=2, num_val=1, max_objects=2)
    yield from migrated_app(request.param, tmp_path_factory, data_root=data_root)


@pytest.fixture
def owner() -> str:
    return f"u-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def auth(app: FastAPI, owner: str) -> dict[str, str]:
    return bearer(app, owner)


@pytest.fixture
def add_job(app: FastAPI, owner: str) -> Callable[..., str]:
    def make(state: str, **values: object) -> str:
        return insert_job(app, owner, state, **values)

    return make


def _job(app: FastAPI, job_id: str) -> Job:
    with app.state.session_factory() as session:
        job = session.get(Job, job_id)
        assert job is not None
        return job


def _race(app: FastAPI, send: Callable[[httpx.Client], httpx.Response]) -> list[httpx.Response]:
    """``send`` from THREADS threads released together; every response, none lost."""
    barrier = threading.Barrier(THREADS, timeout=WAIT_S)

    def one(_: int) -> httpx.Response:
        with TestClient(app, raise_server_exceptions=False) as http:
            barrier.wait()
            return send(http)

    with ThreadPoolExecutor(THREADS) as pool:
        futures = [pool.submit(one, i) for i in range(THREADS)]
        responses = [future.result(timeout=WAIT_S) for future in futures]
    for response in responses:
        assert response.status_code < 500, response.text
    return responses


def _statuses(responses: list[httpx.Response]) -> list[int]:
    return sorted(response.status_code for response in responses)


@pytest.mark.parametrize("round_", range(ROUNDS))
def test_concurrent_cancel_of_queued_job_one_wins(
    app: FastAPI, auth: dict[str, str], add_job: Callable[..., str], round_: int
) -> None:
    job_id = add_job("queued")
    responses = _race(app, lambda http: http.post(f"/jobs/{job_id}/cancel", headers=auth))
    # queued -> cancelled happens once; every later cancel finds a finished job.
    assert _statuses(responses) == [202] + [409] * (THREADS - 1)
    winner = next(r for r in responses if r.status_code == 202).json()
    assert winner["state"] == "cancelled"
    for response in responses:
        if response.status_code == 409:
            assert response.headers["content-type"].startswith("application/problem+json")
    job = _job(app, job_id)
    assert job.state == "cancelled" and job.finished_at is not None and job.attempt == 0


@pytest.mark.parametrize("round_", range(ROUNDS))
def test_concurrent_cancel_of_running_job(
    app: FastAPI, auth: dict[str, str], add_job: Callable[..., str], round_: int
) -> None:
    job_id = add_job("running", attempt=1)
    responses = _race(app, lambda http: http.post(f"/jobs/{job_id}/cancel", headers=auth))
    # running -> cancelling once; a repeated cancel of a stopping job is accepted again.
    assert _statuses(responses) == [202] * THREADS
    assert {response.json()["state"] for response in responses} == {"cancelling"}
    job = _job(app, job_id)
    assert job.state == "cancelling" and job.cancel_requested and job.attempt == 1
    assert job.finished_at is None


@pytest.mark.parametrize("state", ["failed", "cancelled"])
@pytest.mark.parametrize("round_", range(ROUNDS))
def test_concurrent_retry_raises_attempt_once(
    app: FastAPI, auth: dict[str, str], add_job: Callable[..., str], state: str, round_: int
) -> None:
    job_id = add_job(state, attempt=1, reason="user_error", message="boom")
    responses = _race(app, lambda http: http.post(f"/jobs/{job_id}/retry", headers=auth))
    assert _statuses(responses) == [202] + [409] * (THREADS - 1)
    winner = next(r for r in responses if r.status_code == 202).json()
    assert winner["state"] == "queued" and winner["attempt"] == 2
    job = _job(app, job_id)
    assert job.state == "queued" and job.attempt == 2 and job.reason is None


@pytest.mark.parametrize("round_", range(ROUNDS))
def test_concurrent_cancel_and_retry_interleave_consistently(
    app: FastAPI, auth: dict[str, str], add_job: Callable[..., str], round_: int
) -> None:
    """Half the threads retry a failed job, half cancel it. Successful transitions
    alternate (failed -> queued -> cancelled -> queued ...), each retry raises the
    attempt by exactly one, and the final row matches the count of winners."""
    job_id = add_job("failed", attempt=1)
    counter = iter(range(THREADS))
    lock = threading.Lock()

    def send(http: httpx.Client) -> httpx.Response:
        with lock:
            index = next(counter)
        action = "retry" if index % 2 else "cancel"
        return http.post(f"/jobs/{job_id}/{action}", headers=auth)

    responses = _race(app, send)
    assert set(_statuses(responses)) <= {202, 409}
    retries = [r for r in responses if r.url.path.endswith("/retry") and r.status_code == 202]
    cancels = [r for r in responses if r.url.path.endswith("/cancel") and r.status_code == 202]
    assert retries  # the job starts failed: a cancel alone cannot move it
    # A response shows the row as read just after its own commit, which a later
    # transition may already have changed: bodies are bounded, the row is exact.
    assert all(2 <= r.json()["attempt"] <= 1 + len(retries) for r in retries)
    assert len(cancels) in (len(retries) - 1, len(retries))
    job = _job(app, job_id)
    assert job.attempt == 1 + len(retries)
    assert job.state == ("cancelled" if len(cancels) == len(retries) else "queued")


@pytest.mark.parametrize("round_", range(ROUNDS))
def test_concurrent_idempotent_submissions_store_one_job(
    app: FastAPI, auth: dict[str, str], owner: str, round_: int
) -> None:
    spec = get_preset("tiny-fcos-student").model_dump(mode="json")
    headers = {**auth, "Idempotency-Key": f"race-{uuid.uuid4().hex}"}
    responses = _race(app, lambda http: http.post("/jobs", json=spec, headers=headers))
    # One request creates the job (202); the others replay it (200).
    assert _statuses(responses) == [200] * (THREADS - 1) + [202]
    assert len({response.json()["id"] for response in responses}) == 1
    with app.state.session_factory() as session:
        count = session.scalar(
            sa.select(sa.func.count()).select_from(Job).where(Job.owner == owner)
        )
    assert count == 1


def test_concurrent_idempotency_key_with_other_bodies_conflicts(
    app: FastAPI, auth: dict[str, str], owner: str
) -> None:
    specs = [
        get_preset("tiny-fcos-student").model_dump(mode="json") | {"seed": seed}
        for seed in range(THREADS)
    ]
    headers = {**auth, "Idempotency-Key": f"race-{uuid.uuid4().hex}"}
    counter = iter(range(THREADS))
    lock = threading.Lock()

    def send(http: httpx.Client) -> httpx.Response:
        with lock:
            index = next(counter)
        return http.post("/jobs", json=specs[index], headers=headers)

    responses = _race(app, send)
    assert _statuses(responses) == [202] + [409] * (THREADS - 1)
    with app.state.session_factory() as session:
        count = session.scalar(
            sa.select(sa.func.count()).select_from(Job).where(Job.owner == owner)
        )
    assert count == 1
