"""A soak, not a single fault: 50 tiny jobs through 2 real Celery workers on
PostgreSQL and a Redis of our own, while the test SIGKILLs the process running a
job at random moments (12 times) and restarts Redis twice (nothing persisted, so
its queued messages are lost). Every job must end ``succeeded`` exactly once,
with one result row, every training step of its loss curve once, and nothing
left running. docs/reliability.md has the figures of a run.

    .venv/bin/python -m pytest -q -m slow tests/test_soak.py -s
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import time
from pathlib import Path

import pytest
import sqlalchemy as sa
from db_helpers import bearer
from fastapi.testclient import TestClient
from worker_helpers import PrivateRedis, stack, tiny_spec

from api.main import create_app
from pgd_service.db.models import EvalResult, Job, MetricPoint

JOBS = 50
KILLS = 12
ITERS = 6


@pytest.mark.slow
def test_50_jobs_survive_12_kills_and_2_redis_restarts(tmp_path: Path) -> None:
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed (needed for a Redis of our own)")
    private = PrivateRedis(tmp_path)
    private.start()
    rng = random.Random(16)
    started = time.monotonic()
    try:
        with stack(
            "postgresql",
            private.url,
            tmp_path,
            max_attempts=20,  # a job may be hit several times; none may fail for it
            resend_after_s=5.0,  # messages lost with Redis come back within seconds
            measure_cost=False,
        ) as s:
            app = create_app(s.settings)
            headers = bearer(app, "soak")
            s.start_worker()
            s.start_worker()
            with TestClient(app) as http:
                ids = []
                for seed in range(JOBS):
                    spec = tiny_spec(seed=seed, max_iters=ITERS, checkpoint_interval=2)
                    response = http.post(
                        "/jobs", json=spec.model_dump(mode="json"), headers=headers
                    )
                    assert response.status_code == 202, response.text
                    ids.append(response.json()["id"])
            kills: list[str] = []
            restarts = 0
            next_kill = time.monotonic() + rng.uniform(2, 6)
            last_pass = 0.0
            deadline = time.monotonic() + 1800
            while True:
                with s.sessions() as session:
                    states = dict(session.execute(sa.select(Job.id, Job.state)).all())
                    running = session.execute(
                        sa.select(Job.id, Job.worker, Job.progress).where(Job.state == "running")
                    ).all()
                done = sum(states[i] in ("succeeded", "failed", "cancelled") for i in ids)
                if done == JOBS:
                    break
                assert time.monotonic() < deadline, f"{done}/{JOBS} done\n{s.worker_log()[-3000:]}"
                if time.monotonic() - last_pass > 0.5:
                    s.maintain()  # the reaper and the re-sender (an API process runs them)
                    last_pass = time.monotonic()
                if len(kills) < KILLS and time.monotonic() > next_kill and running:
                    job_id, worker, _ = rng.choice(running)
                    pid = int(worker.rsplit(":", 1)[1])
                    try:
                        os.kill(pid, signal.SIGKILL)  # the pool process running the job
                        kills.append(job_id)
                    except ProcessLookupError:
                        pass  # it finished meanwhile
                    next_kill = time.monotonic() + rng.uniform(3, 12)
                if restarts < 2 and done >= (restarts + 1) * JOBS // 3:
                    private.stop()
                    time.sleep(1.0)
                    private.start()
                    restarts += 1
                time.sleep(0.2)

            with s.sessions() as session:
                jobs = {j.id: j for j in session.scalars(sa.select(Job).where(Job.id.in_(ids)))}
                results = session.execute(
                    sa.select(EvalResult.job_id, sa.func.count())
                    .where(EvalResult.job_id.in_(ids))
                    .group_by(EvalResult.job_id)
                ).all()
                duplicate_points = session.execute(
                    sa.select(MetricPoint.job_id, MetricPoint.step, MetricPoint.name)
                    .where(MetricPoint.job_id.in_(ids))
                    .group_by(MetricPoint.job_id, MetricPoint.step, MetricPoint.name)
                    .having(sa.func.count() > 1)
                ).all()
                loss_steps = session.execute(
                    sa.select(MetricPoint.job_id, MetricPoint.step).where(
                        MetricPoint.job_id.in_(ids), MetricPoint.name == "loss"
                    )
                ).all()
                active = session.scalar(
                    sa.select(sa.func.count())
                    .select_from(Job)
                    .where(Job.state.in_(("queued", "running", "cancelling", "waiting")))
                )
            elapsed = time.monotonic() - started
            hit = set(kills)
            resumed = sum(1 for j in jobs.values() if j.attempt > 0)
            print(
                f"\nsoak: {JOBS} jobs, 2 workers, {len(kills)} SIGKILLs of a job's process "
                f"({len(hit)} jobs hit, {resumed} jobs resumed at least once), "
                f"{restarts} Redis restarts, {elapsed:.0f} s; "
                f"states {sorted({j.state for j in jobs.values()})}, "
                f"duplicate metric points {len(duplicate_points)}, active left {active}"
            )
            assert len(kills) >= 10 and restarts == 2
            assert {j.state for j in jobs.values()} == {"succeeded"}, [
                (j.id, j.state, j.reason, j.message)
                for j in jobs.values()
                if j.state != "succeeded"
            ]
            assert dict(results) == {job_id: 1 for job_id in ids}  # one result row each
            assert duplicate_points == []
            steps: dict[str, list[int]] = {}
            for job_id, step in loss_steps:
                steps.setdefault(job_id, []).append(step)
            assert {j: sorted(v) for j, v in steps.items()} == {
                job_id: list(range(1, ITERS + 1)) for job_id in ids
            }
            assert active == 0
            assert resumed >= 1  # the kills did hit jobs that then came back
    finally:
        private.stop()
