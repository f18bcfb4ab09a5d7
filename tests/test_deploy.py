"""The production layout (docker-compose.yml) and the Celery settings the service
doc requires for multi-hour GPU jobs."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from pgd_service.queue import transport_options
from pgd_service.settings import Settings
from worker.app import make_celery

ROOT = Path(__file__).resolve().parents[1]


def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_compose_has_the_production_services():
    services = compose()["services"]
    assert {"api", "worker", "postgres", "redis", "flower", "migrate"} <= services.keys()
    gpu = services["worker"]["deploy"]["resources"]["reservations"]["devices"][0]
    assert (gpu["driver"], gpu["capabilities"], gpu["count"]) == ("nvidia", ["gpu"], "all")
    # A GPU worker serves the GPU sizes its machine has, and no CPU job.
    assert services["worker"]["command"][:4] == ["pgd", "worker", "--cpu-processes", "0"]
    for name in ("api", "worker", "migrate"):
        env = services[name]["environment"]
        assert env["PGD_DATABASE_URL"].startswith("postgresql+psycopg://")
        assert env["PGD_BROKER_URL"].startswith("redis://")
        assert env["PGD_ENVIRONMENT"] == "production"
    assert services["migrate"]["command"] == ["alembic", "upgrade", "head"]
    assert "noeviction" in services["redis"]["command"]


@pytest.mark.skipif(shutil.which("docker-compose") is None, reason="no docker-compose client")
def test_compose_file_is_valid_for_docker_compose():
    result = subprocess.run(
        ["docker-compose", "-f", str(ROOT / "docker-compose.yml"), "config", "-q"],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr


def test_celery_settings_for_long_gpu_jobs():
    app = make_celery(Settings(_env_file=None, broker_url="redis://127.0.0.1:6379/0"))
    conf = app.conf
    assert (conf.task_acks_late, conf.task_reject_on_worker_lost) == (True, True)
    assert (conf.worker_prefetch_multiplier, conf.worker_max_tasks_per_child) == (1, 1)
    assert conf.broker_transport_options == {"visibility_timeout": 7 * 24 * 3600}
    assert (conf.task_serializer, conf.accept_content) == ("json", ["json"])
    names = {q.name for q in conf.task_queues}
    assert names == {"gpu", "cpu"} | {f"{d}-x{n}" for d in ("gpu", "cpu") for n in range(2, 9)}
    assert conf.worker_cancel_long_running_tasks_on_connection_loss is False


def test_sqlalchemy_broker_gets_no_redis_only_options():
    assert transport_options("sqla+sqlite:///x.db", 60) == {}
    assert transport_options("rediss://h:6380/0", 60) == {"visibility_timeout": 60}
