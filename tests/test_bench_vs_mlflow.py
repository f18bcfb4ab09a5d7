"""The pure helpers of ``bench/bench_vs_mlflow.py`` (no MLflow, no server, no database)."""

from __future__ import annotations

import math
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

import bench_vs_mlflow as bench  # noqa: E402

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def _spec(kind: str = "distill") -> dict:
    return {
        "kind": kind,
        "detector": "fcos",
        "dataset": {"name": "coco", "train_split": "train", "val_split": "val"},
        "student": {"depth": 18, "base_channels": 32},
        "teacher": {"depth": 101, "base_channels": 64} if kind == "distill" else None,
        "method": "pgd" if kind == "distill" else "none",
        "distill": {"alpha": 0.1, "k": 30} if kind == "distill" else None,
        "schedule": {"max_iters": 90000, "batch_size": 16, "lr": 0.01},
        "seed": 0,
    }


def test_run_params_are_strings_and_skip_missing_values() -> None:
    params = bench.run_params(_spec(), "alice")
    assert params == {
        "kind": "distill",
        "detector": "fcos",
        "dataset": "coco",
        "method": "pgd",
        "seed": "0",
        "student_depth": "18",
        "student_width": "32",
        "teacher_depth": "101",
        "alpha": "0.1",
        "max_iters": "90000",
        "lr": "0.01",
        "owner": "alice",
    }
    train = bench.run_params(_spec("train"), "bob")
    assert "teacher_depth" not in train and "alpha" not in train
    assert train["method"] == "none"


def test_mlflow_run_keeps_pgd_metrics_status_and_id() -> None:
    job = {
        "id": "0123456789abcdef",
        "kind": "train",
        "state": "failed",
        "owner": "u1",
        "spec": _spec("train"),
        "created_at": T0,
        "finished_at": None,
    }
    result = {"ap": 40.5, "ap50": 60.0, "ap75": 41.0, "aps": 20, "apm": 40, "apl": 50}
    result |= {"mr": None, "ji": None}
    run = bench.mlflow_run(job, result)
    assert run["status"] == "FAILED"
    assert run["start_time"] == run["end_time"] == int(T0.timestamp() * 1000)
    assert run["metrics"] == {"ap": 40.5, "ap50": 60.0, "ap75": 41.0, "aps": 20.0,
                              "apm": 40.0, "apl": 50.0}  # fmt: skip
    assert run["tags"] == {"mlflow.user": "u1", "pgd.job_id": job["id"]}
    finished = bench.mlflow_run(
        {**job, "state": "succeeded", "finished_at": T0 + timedelta(seconds=2)}, result
    )
    assert finished["status"] == "FINISHED"
    assert finished["end_time"] - finished["start_time"] == 2000


def test_summarise_percentiles_and_rate() -> None:
    out = bench.summarise([i / 1000 for i in range(1, 101)], elapsed_s=2.0, errors=1)
    assert out["ops"] == 100 and out["ops_per_s"] == 50.0 and out["errors"] == 1
    assert out["p50_ms"] == pytest.approx(50.5)
    assert out["p95_ms"] == pytest.approx(95.0)
    empty = bench.summarise([], elapsed_s=1.0, errors=3)
    assert empty["ops"] == 0 and math.isnan(empty["p50_ms"])


def test_both_pages_read_as_ap_and_job_id() -> None:
    pgd = {"items": [{"ap": 45.1234, "job_id": "a"}, {"ap": 44.0, "job_id": "b"}]}
    mlflow = {
        "runs": [
            {"data": {"metrics": [{"key": "ap50", "value": 1.0}, {"key": "ap", "value": 45.1234}],
                      "tags": [{"key": "pgd.job_id", "value": "a"}]}},
            {"data": {"metrics": [{"key": "ap", "value": 44.0}]}},
        ]
    }  # fmt: skip
    assert bench.pgd_page_aps(pgd) == [(45.123, "a"), (44.0, "b")]
    assert bench.mlflow_page_aps(mlflow) == [(45.123, "a"), (44.0, None)]
    assert bench.mlflow_page_aps({}) == []


def test_markdown_ratios_against_mlflow() -> None:
    fast = {"ops_per_s": 100.0, "p50_ms": 2.0, "p95_ms": 3.0, "errors": 0}
    slow = {"ops_per_s": 20.0, "p50_ms": 10.0, "p95_ms": 30.0, "errors": 0}
    table = bench.markdown([{"case": "page", "clients": 1, "pgd": fast, "mlflow": slow}])
    assert "| page | 1 | pgd | 100.0 | 2.00 | 3.00 | 0 | 5.00x | 5.00x |" in table
    assert "| page | 1 | mlflow | 20.0 | 10.00 | 30.00 | 0 | - | - |" in table
