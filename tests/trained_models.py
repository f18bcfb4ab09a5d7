"""Tiny detectors trained for real, once per test session, by each path a user
has: the library (``run_spec``), the command line (``pgd run``) and the service
(API + a real Celery worker). test_reported_numbers.py checks every number
they report against an independent path (tests/oracle.py).

The schedules are long enough for real scores (AP about 20 on the shapes set),
so a number that is wrong by a large factor cannot pass for a small one.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from db_helpers import bearer
from fastapi.testclient import TestClient
from worker_helpers import Stack, stack

from pgd_core.data.manifest import DatasetInfo, load_dataset_info
from pgd_core.presets import get_preset
from pgd_core.spec import RunSpec

TEACHER_ITERS = 300
STUDENT_ITERS = 150
LOG_INTERVAL = 10
SHAPES = "shapes"
CROWD = "crowd"


def scheduled(preset: str, iters: int, **fields: Any) -> RunSpec:
    """``preset`` with an ``iters``-iteration schedule (decay at 80 %, evaluation at the end)."""
    data = get_preset(preset).model_dump(mode="json")
    data["schedule"].update(
        max_iters=iters,
        milestones=[int(iters * 0.8)],
        warmup_iters=30,
        checkpoint_interval=iters,
        log_interval=LOG_INTERVAL,
    )
    data.update(fields)
    return RunSpec.model_validate(data)


@dataclass
class Run:
    """One finished run: what it reported, and the files to check it with."""

    spec: RunSpec
    reported: dict[str, float]
    checkpoint: Path
    work_dir: Path


@pytest.fixture(scope="session")
def oracle_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A COCO-format shapes set (3 classes) and a CrowdHuman-format crowd set."""
    from pgd_core.data.synthetic_crowd import make_crowdhuman_like
    from pgd_core.data.synthetic_shapes import make_coco_shapes

    root = tmp_path_factory.mktemp("oracle-data")
    make_coco_shapes(root, SHAPES, num_train=160, num_val=40, num_classes=3, seed=5)
    make_crowdhuman_like(
        root,
        CROWD,
        num_train=120,
        num_val=30,
        image_size=(224, 160),
        min_people=3,
        max_people=12,
        seed=2,
    )
    return root


@pytest.fixture(scope="session")
def shapes(oracle_data: Path) -> DatasetInfo:
    return load_dataset_info(oracle_data, SHAPES)


@pytest.fixture(scope="session")
def crowd(oracle_data: Path) -> DatasetInfo:
    return load_dataset_info(oracle_data, CROWD)


@pytest.fixture(scope="session")
def library_run(oracle_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Run:
    """A tiny FCOS R-18 trained by ``pgd_core.runner.run_spec``; its RunResult."""
    from pgd_core.runner import run_spec

    spec = scheduled("tiny-fcos-student", TEACHER_ITERS)
    work = tmp_path_factory.mktemp("library-run")
    result = run_spec(spec, work, data_root=oracle_data)
    assert result.status == "completed" and result.checkpoint is not None
    return Run(spec, result.metrics, result.checkpoint, work)


@pytest.fixture(scope="session")
def cli_distilled(
    library_run: Run, oracle_data: Path, tmp_path_factory: pytest.TempPathFactory
) -> Run:
    """A PGD student distilled from ``library_run`` by ``pgd run``; its printed JSON."""
    spec = scheduled("tiny-fcos-pgd", STUDENT_ITERS, teacher=library_run.spec.student.model_dump())
    work = tmp_path_factory.mktemp("cli-distill")
    spec_file = work / "spec.json"
    spec_file.write_text(spec.model_dump_json())
    out = subprocess.run(
        [
            str(Path(sys.executable).parent / "pgd"),
            "run",
            "--spec",
            str(spec_file),
            "--work-dir",
            str(work / "run"),
            "--data-root",
            str(oracle_data),
            "--teacher-checkpoint",
            str(library_run.checkpoint),
        ],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    printed = json.loads(out.stdout)
    assert printed["status"] == "completed"
    return Run(spec, printed["metrics"], Path(printed["checkpoint"]), work / "run")


@pytest.fixture(scope="session")
def crowd_run(oracle_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Run:
    """A tiny FCOS trained on the CrowdHuman-format set by ``run_spec``."""
    from pgd_core.runner import run_spec

    spec = scheduled("tiny-fcos-student", 200)
    data = spec.model_dump(mode="json")
    data["dataset"].update(name=CROWD, img_scale=[224, 160])
    spec = RunSpec.model_validate(data)
    work = tmp_path_factory.mktemp("crowd-run")
    result = run_spec(spec, work, data_root=oracle_data)
    assert result.status == "completed" and result.checkpoint is not None
    return Run(spec, result.metrics, result.checkpoint, work)


# ------------------------------------------------------------------ the service


@dataclass
class ServiceRuns:
    """Jobs run by the embedded default (SQLite, kombu's SQLAlchemy broker, one
    real worker), read back over HTTP as a user would."""

    stack: Stack
    http: httpx.Client | TestClient
    headers: dict[str, str]
    jobs: dict[str, str] = field(default_factory=dict)  # role -> job id

    def get(self, path: str, **params: Any) -> httpx.Response:
        response = self.http.get(path, params=params, headers=self.headers)
        assert response.status_code == 200, f"GET {path}: {response.status_code} {response.text}"
        return response

    def download(self, job_id: str, name: str, target: Path) -> Path:
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(self.get(f"/jobs/{job_id}/artifacts/{name}").content)
        return target


def _post(http: TestClient, headers: dict[str, str], spec: dict[str, Any]) -> str:
    response = http.post("/jobs", json=spec, headers=headers)
    assert response.status_code == 202, response.text
    return response.json()["id"]


def _wait_all(s: Stack, job_ids: list[str], timeout: float = 900.0) -> None:
    deadline = time.monotonic() + timeout
    for job_id in job_ids:
        job = s.wait(
            job_id,
            lambda j: j.state in ("succeeded", "failed", "cancelled"),
            timeout=max(1.0, deadline - time.monotonic()),
        )
        assert job.state == "succeeded", f"{job_id}: {job.state} {job.reason} {job.message}"


@pytest.fixture(scope="session")
def service_runs(
    oracle_data: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServiceRuns]:
    """Through the API: a teacher (R-34), a no-KD baseline and a PGD student (R-18),
    and an ``evaluate`` job of the teacher's checkpoint."""
    from api.main import create_app

    tmp = tmp_path_factory.mktemp("service")
    broker = f"sqla+sqlite:///{tmp / 'broker.db'}"
    with stack("sqlite", broker, tmp, data_root=oracle_data, metrics_interval=1) as s:
        app = create_app(s.settings)
        headers = bearer(app, "oracle")
        s.start_worker()
        with TestClient(app) as http:
            runs = ServiceRuns(s, http, headers)
            teacher = _post(http, headers, _json(scheduled("tiny-fcos-teacher", TEACHER_ITERS)))
            baseline = _post(http, headers, _json(scheduled("tiny-fcos-student", STUDENT_ITERS)))
            runs.jobs.update(teacher=teacher, baseline=baseline)
            _wait_all(s, [teacher])
            runs.jobs["pgd"] = _post(
                http,
                headers,
                _json(scheduled("tiny-fcos-pgd", STUDENT_ITERS, teacher_ref=teacher)),
            )
            evaluate = scheduled("tiny-fcos-teacher", TEACHER_ITERS).model_dump(mode="json")
            evaluate.update(kind="evaluate", checkpoint_ref=teacher)
            runs.jobs["evaluate"] = _post(http, headers, evaluate)
            _wait_all(s, list(runs.jobs.values()))
            yield runs


def _json(spec: RunSpec) -> dict[str, Any]:
    return spec.model_dump(mode="json")
