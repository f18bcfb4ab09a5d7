"""Real Celery worker processes running jobs end to end, and surviving faults.

Each test starts workers as separate processes (the way `pgd worker` does),
posts jobs through the HTTP API, and kills or restarts things the way a crash
or an operator would. PostgreSQL and Redis are the machine's own; tests that
restart Redis use a private redis-server so nothing else is disturbed.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa
from db_helpers import bearer, flushed_redis
from fastapi.testclient import TestClient
from worker_helpers import PrivateRedis, Stack, distinct_steps_ok, free_port, stack, tiny_spec

from api.embedded import settings_env, wait_ready
from api.main import create_app
from pgd_core.data.synthetic_shapes import make_coco_shapes
from pgd_service.db.models import Job
from pgd_service.db.types import utcnow

MACHINE_REDIS = "redis://127.0.0.1:6379/10"


@pytest.fixture
def machine_redis() -> Iterator[str]:
    for _ in flushed_redis(MACHINE_REDIS):
        yield MACHINE_REDIS


def post(http: httpx.Client, headers: dict[str, str], spec: dict, **extra: str) -> str:
    response = http.post("/jobs", json=spec, headers=headers | extra)
    assert response.status_code == 202, response.text
    return response.json()["id"]


def finished(job) -> bool:  # noqa: ANN001 - a Job row
    return job.state in ("succeeded", "failed", "cancelled")


def assert_succeeded_once(s: Stack, job_id: str, max_iters: int) -> None:
    job = s.job(job_id)
    assert (job.state, job.reason, job.progress) == ("succeeded", None, 1.0), job.message
    results = s.results(job_id)
    assert len(results) == 1
    assert results[0].metrics.keys() >= {"AP", "AP50", "AP75"}
    points = s.points(job_id)
    assert distinct_steps_ok(points)
    # metrics_interval is 1: every training step of the loss, exactly once.
    assert [step for name, step, _ in points if name == "loss"] == list(range(1, max_iters + 1))
    artifacts = s.artifacts(job_id)
    assert artifacts["checkpoint"].name == f"iter_{max_iters}.pth"
    assert artifacts["checkpoint"].is_file() and artifacts["log"].is_file()


# -- end to end ----------------------------------------------------------------


def distill_end_to_end(s: Stack, owner: str) -> None:
    """Teacher, no-KD baseline and PGD student through the API and a real worker;
    the leaderboard row of the PGD student carries both references and the deltas."""
    app = create_app(s.settings)
    headers = bearer(app, owner)
    s.start_worker()
    with TestClient(app) as http:
        teacher = post(http, headers, tiny_spec("tiny-fcos-teacher").model_dump(mode="json"))
        baseline = post(http, headers, tiny_spec().model_dump(mode="json"))
        s.wait(teacher, finished)
        distill = tiny_spec("tiny-fcos-pgd").model_dump(mode="json")
        distill["teacher_ref"] = teacher
        student = post(http, headers, distill)
        for job_id in (teacher, baseline, student):
            s.wait(job_id, finished)
            assert_succeeded_once(s, job_id, 8)
        assert s.job(student).teacher_job_id == teacher
        page = http.get("/results", params={"method": "pgd"}, headers=headers).json()
        (row,) = [r for r in page["items"] if r["job_id"] == student]
        mine, base, teach = (s.results(j)[0] for j in (student, baseline, teacher))
        assert (row["teacher_job_id"], row["baseline_job_id"]) == (teacher, baseline)
        assert (row["ap"], row["baseline_ap"], row["teacher_ap"]) == (mine.ap, base.ap, teach.ap)
        assert row["delta_ap_vs_baseline"] == pytest.approx(mine.ap - base.ap, abs=1e-9)
        assert row["delta_ap_vs_teacher"] == pytest.approx(mine.ap - teach.ap, abs=1e-9)
        series = http.get(f"/jobs/{student}/metrics", headers=headers).json()
        assert "loss_pgd_cls" in repr(series)
        log = http.get(f"/jobs/{student}/logs", params={"tail": 5}, headers=headers)
        assert log.status_code == 200 and len(log.text.splitlines()) == 5


def test_distill_job_end_to_end_on_postgresql_and_redis(machine_redis: str, tmp_path: Path):
    with stack("postgresql", machine_redis, tmp_path) as s:
        distill_end_to_end(s, "alice")


def test_distill_job_end_to_end_on_the_embedded_default(tmp_path: Path):
    """The same with nothing installed: SQLite and kombu's SQLAlchemy transport."""
    broker = f"sqla+sqlite:///{tmp_path / 'broker.db'}"
    with stack("sqlite", broker, tmp_path) as s:
        distill_end_to_end(s, "bob")


# -- faults --------------------------------------------------------------------


def test_kill_9_during_training_resumes_from_the_checkpoint(machine_redis: str, tmp_path: Path):
    with stack("postgresql", machine_redis, tmp_path) as s:
        app = create_app(s.settings)
        headers = bearer(app, "carol")
        first = s.start_worker()
        spec = tiny_spec(max_iters=24, checkpoint_interval=4).model_dump(mode="json")
        with TestClient(app) as http:
            job_id = post(http, headers, spec)
        # Killed after its checkpoint at iteration 8 at least was written.
        s.wait(job_id, lambda j: j.state == "running" and j.progress >= 10 / 24)
        s.kill_worker(first)
        job = s.wait(job_id, lambda j: j.state == "queued", timeout=60, maintain_every=0.5)
        assert (job.attempt, job.lost_count, job.enqueued_at is not None) == (1, 1, True)
        s.start_worker()
        s.wait(job_id, finished, maintain_every=0.5)
        assert_succeeded_once(s, job_id, 24)
        job = s.job(job_id)
        assert (job.attempt, job.lost_count) == (1, 1)
        # The second attempt resumed (mmengine's log says from which iteration).
        logs = sorted((s.settings.work_root / "jobs" / job_id).glob("*/*.log"))
        assert len(logs) == 2
        resumed = re.search(r"resumed epoch: \d+, iter: (\d+)", logs[1].read_text())
        assert resumed is not None and int(resumed.group(1)) >= 8


# Slow (about 40 s each on 2 cores): the default run keeps the kill -9 resume, the
# cancel/retry and the end-to-end runs; `make test-all` adds these restarts.
@pytest.mark.slow
def test_redis_restart_while_a_job_runs(tmp_path: Path):
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed (needed for a Redis of our own)")
    private = PrivateRedis(tmp_path)
    private.start()
    try:
        with stack("postgresql", private.url, tmp_path) as s:
            app = create_app(s.settings)
            headers = bearer(app, "dave")
            s.start_worker()
            spec = tiny_spec(max_iters=24).model_dump(mode="json")
            with TestClient(app) as http:
                job_id = post(http, headers, spec)
                s.wait(job_id, lambda j: j.state == "running" and j.progress > 0.2)
                private.stop()  # nothing persisted: the running job's message is gone
                time.sleep(1.0)
                private.start()
                s.wait(job_id, finished, maintain_every=0.5)
                assert_succeeded_once(s, job_id, 24)
                assert s.job(job_id).attempt == 0
                # The worker reconnected: a job posted after the restart runs too.
                after = post(http, headers, tiny_spec(seed=1).model_dump(mode="json"))
                s.wait(after, finished, maintain_every=0.5)
                assert_succeeded_once(s, after, 8)
    finally:
        private.stop()


@pytest.mark.slow
def test_api_restart_while_a_job_runs(machine_redis: str, tmp_path: Path):
    with stack("postgresql", machine_redis, tmp_path) as s:
        headers = bearer(create_app(s.settings), "erin")
        s.start_worker()
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        command = [sys.executable, "-m", "uvicorn", "api.main:app", "--port", str(port)]
        env = settings_env(s.settings)

        def api() -> subprocess.Popen[bytes]:
            process = subprocess.Popen(
                command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
            )
            wait_ready(url)
            return process

        server = api()
        try:
            spec = tiny_spec(max_iters=24).model_dump(mode="json")
            with httpx.Client(base_url=url, timeout=10) as http:
                job_id = post(http, headers, spec)
            s.wait(job_id, lambda j: j.state == "running" and j.progress > 0.2)
            server.kill()
            server.wait()
            server = api()
            with httpx.Client(base_url=url, timeout=10) as http:
                s.wait(job_id, finished)
                body = http.get(f"/jobs/{job_id}", headers=headers).json()
                assert body["state"] == "succeeded"
            assert_succeeded_once(s, job_id, 24)
        finally:
            server.kill()
            server.wait()


@pytest.mark.slow
def test_a_job_that_kills_its_worker_every_time_ends_worker_lost(
    machine_redis: str, tmp_path: Path
):
    with stack("postgresql", machine_redis, tmp_path) as s:
        app = create_app(s.settings)
        headers = bearer(app, "frank")
        spec = tiny_spec(max_iters=200, checkpoint_interval=100).model_dump(mode="json")
        with TestClient(app) as http:
            response = http.post("/jobs", json=spec, headers=headers)
            job_id = response.json()["id"]
        assert s.job(job_id).max_attempts == 3
        for attempt in range(3):
            worker = s.start_worker()
            s.wait(job_id, lambda j, a=attempt: j.state == "running" and j.attempt == a)
            s.kill_worker(worker)
            s.wait(
                job_id,
                lambda j, a=attempt: j.attempt > a or finished(j),
                timeout=60,
                maintain_every=0.5,
            )
        job = s.job(job_id)
        assert (job.state, job.reason, job.lost_count, job.attempt) == (
            "failed",
            "worker_lost",
            3,
            2,
        )
        assert "3 times" in job.message
        assert s.results(job_id) == []


# -- cancel and divergence ------------------------------------------------------


def test_cancel_during_training_saves_a_checkpoint_and_retry_resumes(
    machine_redis: str, tmp_path: Path
):
    with stack("postgresql", machine_redis, tmp_path) as s:
        app = create_app(s.settings)
        headers = bearer(app, "gina")
        s.start_worker()
        spec = tiny_spec(max_iters=80, checkpoint_interval=1000).model_dump(mode="json")
        with TestClient(app) as http:
            job_id = post(http, headers, spec)
            s.wait(job_id, lambda j: j.state == "running" and j.progress > 0.05)
            asked = time.monotonic()
            assert http.post(f"/jobs/{job_id}/cancel", headers=headers).status_code == 202
            job = s.wait(job_id, finished, timeout=30)
            took = time.monotonic() - asked
            assert (job.state, job.reason) == ("cancelled", None)
            assert took < 10, f"cancel took {took:.1f} s"
            checkpoint = s.artifacts(job_id)["checkpoint"]
            assert checkpoint.is_file()
            stopped_at = int(re.search(r"iteration (\d+)", job.message).group(1))
            assert checkpoint.name == f"iter_{stopped_at}.pth" and 4 <= stopped_at < 80
            assert s.results(job_id) == []
            # Retry continues from that checkpoint, not from zero.
            assert http.post(f"/jobs/{job_id}/retry", headers=headers).status_code == 202
            s.wait(job_id, finished)
        assert_succeeded_once(s, job_id, 80)
        logs = sorted((s.settings.work_root / "jobs" / job_id).glob("*/*.log"))
        resumed = re.search(r"resumed epoch: \d+, iter: (\d+)", logs[-1].read_text())
        assert resumed is not None and int(resumed.group(1)) == stopped_at


def test_diverging_job_fails_with_reason_diverged(machine_redis: str, tmp_path: Path):
    with stack("postgresql", machine_redis, tmp_path) as s:
        app = create_app(s.settings)
        headers = bearer(app, "hank")
        s.start_worker()
        spec = tiny_spec(max_iters=40, lr=1e12, warmup_iters=0).model_dump(mode="json")
        spec["schedule"]["grad_clip"] = None
        with TestClient(app) as http:
            job_id = post(http, headers, spec)
            job = s.wait(job_id, finished)
        assert (job.state, job.reason) == ("failed", "diverged"), job.message
        assert re.match(r"training diverged at iteration \d+: \w+ = (nan|inf|-inf)", job.message)
        assert s.results(job_id) == []


def test_cancel_fallback_revokes_a_task_that_does_not_stop(machine_redis: str, tmp_path: Path):
    """A job stuck 'cancelling' (its worker never saw the flag) past cancel_grace_s is
    terminated by revoke; the reaper then records it cancelled."""
    with stack("postgresql", machine_redis, tmp_path, cancel_grace_s=1.0) as s:
        app = create_app(s.settings)
        headers = bearer(app, "ivan")
        worker = s.start_worker()
        spec = tiny_spec(max_iters=400, checkpoint_interval=1000).model_dump(mode="json")
        with TestClient(app) as http:
            job_id = post(http, headers, spec)
        s.wait(job_id, lambda j: j.state == "running" and j.progress > 0.01)
        # The state says cancelling but the flag is not set: the task will not stop.
        with s.sessions() as session:
            session.execute(
                sa.update(Job)
                .where(Job.id == job_id)
                .values(state="cancelling", cancel_requested_at=utcnow())
            )
            session.commit()
        time.sleep(1.5)
        assert s.maintain().revoked == [job_id]
        job = s.wait(job_id, finished, timeout=60, maintain_every=0.5)
        assert (job.state, job.cancel_requested) == ("cancelled", False)
        assert worker.poll() is None  # only the task's process was terminated
        assert "Terminating" in s.worker_log() or "SIGKILL" in s.worker_log()


def test_pgd_up_starts_api_and_worker_and_stops_both(tmp_path: Path):
    """The embedded default as a user starts it: one command, SQLite files, a token,
    from a folder of their own with every path left at its relative default (the
    worker runs elsewhere, yet must open the same database and broker)."""
    port = free_port()
    make_coco_shapes(tmp_path / "var" / "data", "shapes", num_train=8, num_val=4)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PGD_")}
    env["PGD_HEARTBEAT_INTERVAL_S"] = "0.3"
    token_file = tmp_path / "token"
    up = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "api.cli",
            "up",
            "--port",
            str(port),
            "--token-file",
            str(token_file),
        ],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, timeout=120)
        token = token_file.read_text().strip()
        headers = {"Authorization": f"Bearer {token}"}
        with httpx.Client(base_url=url, headers=headers, timeout=10) as http:
            assert http.get("/readyz").json() == {"status": "ok"}
            # A user's submission: the client command, following the job to its end.
            spec_file = tmp_path / "spec.json"
            spec_file.write_text(json.dumps(tiny_spec().model_dump(mode="json")))
            client_env = {**env, "PGD_URL": url, "PGD_TOKEN": token, "COLUMNS": "160"}
            followed = subprocess.run(
                [sys.executable, "-m", "api.cli", "submit", str(spec_file), "--follow"],
                env=client_env,
                capture_output=True,
                text=True,
                timeout=240,
            )
            assert followed.returncode == 0, followed.stdout + followed.stderr
            job_id = re.search(r"submitted (\S+)", followed.stdout).group(1)
            assert f"job {job_id} succeeded" in followed.stdout
            assert http.get(f"/jobs/{job_id}").json()["state"] == "succeeded"
            page = http.get("/results").json()
            reported = re.search(r"result: AP (\S+)", followed.stdout).group(1)
            assert reported == f"{page['items'][0]['ap']:.1f}"
            assert [row["job_id"] for row in page["items"]] == [job_id]
            # The dashboard it prints is served by the same process.
            assert "<title>pgd dashboard</title>" in http.get("/ui/").text
    finally:
        up.send_signal(signal.SIGINT)
        output, _ = up.communicate(timeout=60)
    assert f"pgd API:      {url}" in output and f"admin token:  {token}" in output
    assert f"dashboard:    {url}/ui/" in output
    # Every relative default resolved against the folder pgd up ran in.
    assert f"database:     sqlite:///{tmp_path / 'pgd.db'}" in output
    assert f"broker:       sqla+sqlite:///{tmp_path / 'pgd-broker.db'}" in output
    assert (tmp_path / "var" / "work" / "jobs" / job_id).is_dir()
    worker_log = (tmp_path / "var" / "work" / "worker.log").read_text()
    assert f"database sqlite:///{tmp_path / 'pgd.db'}" in worker_log
    worker_pid = int(re.search(r"worker:\s+pid (\d+)", output).group(1))
    assert not Path(f"/proc/{worker_pid}").exists()  # stopped with the API
