"""pgd_client against a real API process (tests/ui_helpers.live_api): typed answers
checked against the database, problems as ProblemError, safe retries, resumable
events, downloads, the config file. The embedded default (SQLite, SQL broker)
and PostgreSQL + Redis."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from db_helpers import pg_schema_url
from sqlalchemy import func, select
from ui_helpers import LiveApi, finish, free_port, live_api, png, report, start

from pgd_client import Client, ProblemError, ResultPage, Unreachable
from pgd_client.config import config_path, load_config, save_config
from pgd_core.presets import get_preset
from pgd_service.db.models import EvalResult, Job


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def live(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LiveApi]:
    root = tmp_path_factory.mktemp(f"client-{request.param}")
    if request.param == "sqlite":
        with live_api(root) as api:
            yield api
    else:
        for url in pg_schema_url():
            with live_api(root, url, "redis://127.0.0.1:6379/13") as api:
                yield api


@pytest.fixture(scope="module")
def token(live: LiveApi) -> str:
    return live.token("cleo")


@pytest.fixture
def client(live: LiveApi, token: str) -> Iterator[Client]:
    with Client(live.url, token, retries=2, backoff_s=0.05) as c:
        yield c


def _spec(**changes: object) -> dict:
    return get_preset("tiny-fcos-student").model_dump(mode="json") | changes


def _jobs(live: LiveApi) -> int:
    with live.session_factory() as session:
        return session.scalar(select(func.count()).select_from(Job)) or 0


def test_submit_returns_the_stored_job_and_a_key_makes_it_idempotent(client: Client, live: LiveApi):
    job = client.submit(_spec(seed=5), idempotency_key="same-key")
    with live.session_factory() as session:
        row = session.get(Job, job.id)
        assert row is not None
        assert (
            (row.state, row.owner, row.spec["seed"])
            == (job.state, "cleo", 5)
            == ("queued", "cleo", 5)
        )
    before = _jobs(live)
    again = client.submit(_spec(seed=5), idempotency_key="same-key")
    assert again.id == job.id and _jobs(live) == before
    assert client.job(job.id).created_at == job.created_at
    assert client.me() == {"owner": "cleo", "is_admin": False, "results": "own"}


class _DropFirst(httpx.HTTPTransport):
    """A real transport whose first ``n`` requests fail the way a dropped connection
    does after the server has acted on them (the request was sent, the answer lost)."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.left = n
        self.sent = 0

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.sent += 1
        response = super().handle_request(request)
        if self.left:
            self.left -= 1
            response.read()
            response.close()
            raise httpx.ReadError("connection reset after the request was sent", request=request)
        return response


def test_a_post_whose_answer_is_lost_is_retried_without_a_second_job(live: LiveApi, token: str):
    transport = _DropFirst(2)
    before = _jobs(live)
    with Client(live.url, token, retries=3, backoff_s=0.01, transport=transport) as c:
        job = c.submit(_spec(seed=6))
    assert transport.sent == 3
    assert _jobs(live) == before + 1
    with live.session_factory() as session:
        assert session.get(Job, job.id) is not None


def test_cancel_is_not_retried_and_problems_carry_their_fields(live: LiveApi, token: str):
    transport = _DropFirst(0)
    with Client(live.url, token, retries=3, backoff_s=0.01, transport=transport) as c:
        job = c.submit(_spec(seed=7))
        transport.left = 1
        with pytest.raises(Unreachable):
            c.cancel(job.id)
    assert transport.sent == 2  # the POST, then the cancel once
    with Client(live.url, token) as c:
        assert c.job(job.id).state == "cancelled"  # the server did act on it
        with pytest.raises(ProblemError) as conflict:
            c.cancel(job.id)
        assert (conflict.value.status, conflict.value.title) == (409, "Conflict")
        assert conflict.value.detail == f"job {job.id} is already cancelled"
        with pytest.raises(ProblemError) as invalid:
            c.submit(_spec(schedule={**_spec()["schedule"], "lr": -1}))
        assert invalid.value.status == 422
        assert "schedule.lr" in invalid.value.field_errors()
        with pytest.raises(ProblemError) as missing:
            c.job("00000000-0000-0000-0000-000000000000")
        assert missing.value.status == 404
    with Client(live.url, "pgd_0_nope") as c, pytest.raises(ProblemError) as refused:
        c.jobs()
    assert refused.value.status == 401 and refused.value.detail == "invalid or revoked token"


def test_a_server_that_is_down_raises_unreachable_after_the_retries():
    url = f"http://127.0.0.1:{free_port()}"
    with Client(url, "t", retries=2, backoff_s=0.01) as c, pytest.raises(Unreachable) as down:
        c.jobs()
    assert down.value.url == url and "unreachable" in str(down.value)


def test_events_stream_the_jobs_points_and_resume_where_they_stopped(client: Client, live: LiveApi):
    job = client.submit(_spec(seed=8))
    start(live, job.id)
    events = client.events(job.id)
    first = next(events)
    assert (first.event, first.data["state"]) == ("state", "running")
    report(live, job.id, {"loss": [1.5, 1.2, 0.9]}, 0.5)
    seen = [next(events) for _ in range(3)]
    assert [(e.event, e.data["step"], e.data["value"]) for e in seen] == [
        ("metric", 1, 1.5),
        ("metric", 2, 1.2),
        ("metric", 3, 0.9),
    ]
    events.close()
    # Resume after the second point: exactly the rest, then the end.
    report(live, job.id, {"loss": [0.7]}, 0.8, first_step=4)
    finish(live, job.id, metrics={"ap": 21.5})
    rest = list(client.events(job.id, last_event_id=seen[1].id))
    metric_steps = [e.data["step"] for e in rest if e.event == "metric"]
    assert metric_steps == [3, 4]
    assert rest[-1].event == "state" and rest[-1].data["state"] == "succeeded"
    with live.session_factory() as session:
        stored = session.scalar(select(EvalResult.ap).where(EvalResult.job_id == job.id))
    waited = client.wait(job.id, timeout_s=5)
    assert waited.finished and waited.state == "succeeded"
    result = client.result(job.id)
    assert result is not None and result.ap == stored == 21.5
    series = client.metrics(job.id)
    assert [(p.step, p.value) for p in series["loss"]] == [(1, 1.5), (2, 1.2), (3, 0.9), (4, 0.7)]


def test_results_and_artifacts(client: Client, live: LiveApi, tmp_path: Path):
    job = client.submit(_spec(seed=9))
    start(live, job.id)
    picture = png()
    finish(live, job.id, metrics={"ap": 33.25, "ap50": 50.5}, plot=picture)
    page = client.results(job=job.id)
    assert isinstance(page, ResultPage)
    assert [(r.job_id, r.ap, r.ap50) for r in page.items] == [(job.id, 33.25, 50.5)]
    assert [(a.name, a.kind, a.size) for a in client.artifacts(job.id)] == [
        ("plots/pr_curve.png", "plot", len(picture))
    ]
    saved = client.download(job.id, "plots/pr_curve.png", tmp_path)
    assert saved == tmp_path / "pr_curve.png" and saved.read_bytes() == picture
    with pytest.raises(ProblemError) as missing:
        client.download(job.id, "plots/nope.png", tmp_path / "nope.png")
    assert missing.value.status == 404
    assert not (tmp_path / "nope.png").exists() and not list(tmp_path.glob(".*part"))
    csv = client.results_csv(job=job.id)
    header, row = csv.splitlines()
    assert row.split(",")[header.split(",").index("ap")] == "33.25"


def test_login_config_is_private_and_read_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("PGD_CONFIG", str(tmp_path / "conf" / "client.json"))
    path = save_config("http://example:8000", "pgd_1_secret")
    assert path == config_path()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_config() == {"url": "http://example:8000", "token": "pgd_1_secret"}
    monkeypatch.setenv("PGD_URL", "http://other:9000")
    monkeypatch.delenv("PGD_TOKEN", raising=False)
    with Client.from_env() as c:
        assert c.url == "http://other:9000"  # the environment wins over the file
        assert c._http.headers["Authorization"] == "Bearer pgd_1_secret"


def test_the_client_imports_no_server_code_and_no_torch():
    blocked = [
        "api",
        "worker",
        "pgd_service",
        "pgd_core",
        "torch",
        "sqlalchemy",
        "fastapi",
        "celery",
    ]
    code = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        f"        if name.split('.')[0] in {blocked!r}: raise ImportError('blocked: ' + name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "import pgd_client, pgd_client.client, pgd_client.config\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=os.environ
    )
    assert result.returncode == 0, result.stderr
