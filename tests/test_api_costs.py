"""Cost columns on the leaderboard (``GET /results``, its CSV) and the accuracy/cost
front (``GET /results/pareto``), on SQLite and PostgreSQL migrated by Alembic, with
rows inserted directly: every ratio and every front is computed here again from the
inserted numbers."""

from __future__ import annotations

import csv
import io
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from db_helpers import bearer, migrated_app
from fastapi import FastAPI
from fastapi.testclient import TestClient

from pgd_service.db.models import EvalResult, Job

DATASET = "coco-cost"
T0 = datetime(2026, 2, 1, tzinfo=UTC)
CPU = "cpu (Test CPU)"


def _model(depth: int) -> dict[str, Any]:
    return {"depth": depth, "base_channels": 64, "neck_channels": 256, "head_channels": 256}


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def app(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[FastAPI]:
    data_root = tmp_path_factory.mktemp("data")
    yield from migrated_app(request.param, tmp_path_factory, data_root=data_root)


@pytest.fixture
def client(app: FastAPI) -> Iterator[httpx.Client]:
    with TestClient(app) as http:
        yield http


@pytest.fixture
def headers(app: FastAPI) -> dict[str, str]:
    return bearer(app, f"reader-{uuid.uuid4().hex[:8]}", is_admin=True)


def _measurement(latency: float, device: str = CPU, threads: int = 2) -> dict[str, Any]:
    return {
        "latency": {
            "median_ms": latency,
            "p90_ms": latency * 1.25,
            "runs": 30,
            "warmup": 5,
            "device": device,
            "threads": threads,
        },
        "onnx": {"status": "ok", "max_abs_diff": 2.5e-6},
        "input_shape": [800, 1344],
    }


def _add(
    session: Any,
    *,
    kind: str,
    depth: int,
    minutes: int,
    method: str = "none",
    detector: str = "fcos",
    teacher_job_id: str | None = None,
    params: int | None = None,
    flops: int | None = None,
    latency: float | None = None,
    device: str = CPU,
    threads: int = 2,
    **metrics: float,
) -> str:
    when = T0 + timedelta(minutes=minutes)
    spec = {"kind": kind, "detector": detector, "student": _model(depth), "method": method}
    job = Job(
        kind=kind,
        detector=detector,
        dataset=DATASET,
        method=method,
        spec=spec,
        spec_hash=uuid.uuid4().hex,
        state="succeeded",
        owner="someone",
        max_attempts=3,
        teacher_job_id=teacher_job_id,
        created_at=when,
        finished_at=when + timedelta(minutes=30),
    )
    session.add(job)
    session.flush()
    measured = latency is not None
    session.add(
        EvalResult(
            job_id=job.id,
            dataset=DATASET,
            detector=detector,
            method=method,
            metrics={"bbox_mAP": metrics.get("ap")},
            params=params,
            flops=flops,
            latency_ms=latency,
            latency_p90_ms=latency * 1.25 if measured else None,
            peak_memory_mb=100.0 + depth if measured else None,
            cost=_measurement(latency, device, threads) if measured else None,
            created_at=when + timedelta(minutes=31),
            **metrics,
        )
    )
    session.flush()
    return job.id


# (name, depth, method, params, flops, latency, device, ap, mr): every measured row.
ROWS = [
    ("teacher", 101, "none", 51_000_000, 200_000_000_000, 80.0, CPU, 44.0, 0.40),
    ("baseline", 50, "none", 32_000_000, 84_000_000_000, 40.0, CPU, 38.2, 0.48),
    ("pgd", 50, "pgd", 32_000_000, 84_000_000_000, 40.0, CPU, 41.0, 0.45),
    ("pgd_gpu", 50, "pgd", 32_000_000, 84_000_000_000, 9.5, "cuda:0 (H200)", 40.5, 0.46),
    ("r18", 18, "pgd", 19_000_000, 51_000_000_000, 25.0, CPU, 35.0, 0.55),
    ("dominated", 50, "inherit", 32_000_000, 90_000_000_000, 45.0, CPU, 37.0, 0.60),
]


@pytest.fixture(scope="module")
def jobs(app: FastAPI) -> dict[str, str]:
    ids: dict[str, str] = {}
    with app.state.session_factory() as session:
        for minutes, (name, depth, method, params, flops, latency, device, ap, mr) in enumerate(
            ROWS
        ):
            distilled = method != "none"
            ids[name] = _add(
                session,
                kind="distill" if distilled else "train",
                depth=depth,
                minutes=minutes,
                method=method,
                teacher_job_id=ids["teacher"] if distilled else None,
                params=params,
                flops=flops,
                latency=latency,
                device=device,
                ap=ap,
                mr=mr,
            )
        ids["unmeasured"] = _add(
            session, kind="distill", depth=50, minutes=20, method="pgd",
            teacher_job_id=ids["teacher"], ap=39.0,
        )  # fmt: skip
        session.commit()
    return ids


def _rows(client: httpx.Client, headers: dict[str, str], **params: Any) -> list[dict[str, Any]]:
    response = client.get(
        "/results", params={"dataset": DATASET, "limit": 500, **params}, headers=headers
    )
    assert response.status_code == 200, response.text
    return response.json()["items"]


def test_rows_carry_their_cost_and_the_ratios_to_their_teacher(client, headers, jobs):
    by_job = {r["job_id"]: r for r in _rows(client, headers)}
    spec = {name: row for name, *row in ROWS}
    t_params, t_flops, t_latency = spec["teacher"][2:5]
    for name, (_, _, params, flops, latency, device, _, _) in spec.items():
        row = by_job[jobs[name]]
        assert (row["params"], row["flops"], row["latency_ms"]) == (params, flops, latency)
        assert row["latency_p90_ms"] == latency * 1.25 and row["device"] == device
        assert row["threads"] == 2 and row["onnx_max_abs_diff"] == 2.5e-6
        assert row["cost"]["input_shape"] == [800, 1344]
        if name in ("teacher", "baseline"):  # not distilled: nothing to compare with
            assert row["params_ratio_vs_teacher"] is None and row["teacher_flops"] is None
            continue
        assert (row["teacher_params"], row["teacher_flops"], row["teacher_latency_ms"]) == (
            t_params,
            t_flops,
            t_latency,
        )
        assert row["params_ratio_vs_teacher"] == params / t_params
        assert row["flops_ratio_vs_teacher"] == flops / t_flops
        # Only a latency measured where the teacher's was is a speed-up.
        expected = t_latency / latency if device == CPU else None
        assert row["speedup_vs_teacher"] == expected
    assert by_job[jobs["pgd"]]["flops_ratio_vs_teacher"] == 0.42
    assert by_job[jobs["pgd"]]["speedup_vs_teacher"] == 2.0
    unmeasured = by_job[jobs["unmeasured"]]
    for key in ("params", "flops", "latency_ms", "device", "cost", "speedup_vs_teacher"):
        assert unmeasured[key] is None, key
    assert unmeasured["teacher_params"] == t_params  # the teacher's own cost still shown


def test_a_different_thread_count_is_not_a_speedup(app, client, headers, jobs):
    with app.state.session_factory() as session:
        job_id = _add(
            session, kind="distill", depth=50, minutes=30, method="pgd",
            teacher_job_id=jobs["teacher"], params=1, flops=1, latency=10.0, threads=16,
            ap=1.0,
        )  # fmt: skip
        session.commit()
    row = _rows(client, headers, job=job_id)[0]
    assert row["speedup_vs_teacher"] is None and row["flops_ratio_vs_teacher"] == 1 / 200e9
    with app.state.session_factory() as session:
        session.query(EvalResult).filter(EvalResult.job_id == job_id).delete()
        session.query(Job).filter(Job.id == job_id).delete()
        session.commit()


@pytest.mark.parametrize("key", ["params", "flops", "latency_ms", "peak_memory_mb"])
def test_sorting_by_a_cost(client, headers, jobs, key):
    rows = _rows(client, headers, sort=key)
    values = [r[key] for r in rows]
    measured = [v for v in values if v is not None]
    assert measured == sorted(measured) and len(measured) == len(ROWS)
    assert values[len(measured) :] == [None] * (len(values) - len(measured))  # nulls last
    # Ties in id order: the page is a total order.
    pairs = [(r[key], r["id"]) for r in rows if r[key] is not None]
    assert pairs == sorted(pairs)
    down = [r[key] for r in _rows(client, headers, sort=f"-{key}") if r[key] is not None]
    assert down == sorted(measured, reverse=True)


def test_csv_carries_the_cost_columns_of_the_json_rows(client, headers, jobs):
    rows = _rows(client, headers, sort="flops")
    response = client.get(
        "/results", params={"dataset": DATASET, "sort": "flops", "format": "csv"}, headers=headers
    )
    table = list(csv.DictReader(io.StringIO(response.text)))
    assert [t["job_id"] for t in table] == [r["job_id"] for r in rows]
    for column in (
        "params",
        "flops",
        "latency_ms",
        "latency_p90_ms",
        "peak_memory_mb",
        "device",
        "threads",
        "onnx_max_abs_diff",
        "teacher_flops",
        "params_ratio_vs_teacher",
        "flops_ratio_vs_teacher",
        "speedup_vs_teacher",
    ):
        for cells, row in zip(table, rows, strict=True):
            value = row[column]
            if value is None:
                assert cells[column] == "", column
            elif isinstance(value, float):
                assert float(cells[column]) == value, column
            else:
                assert cells[column] == str(value), column
    assert "cost" not in table[0]  # the nested measurement stays in the JSON


def _brute_front(points: list[tuple[str, float, float]], lower: bool) -> list[str]:
    """Names of the points no other point dominates, cheapest first."""
    front = []
    for name, c, m in points:
        beaten = any(
            (c2 <= c and (m2 <= m if lower else m2 >= m) and (c2 < c or m2 != m))
            for n2, c2, m2 in points
            if n2 != name
        )
        if not beaten:
            front.append((c, name))
    return [name for _, name in sorted(front)]


@pytest.mark.parametrize(
    ("cost", "column", "metric"),
    [("latency_ms", 5, "ap"), ("flops", 4, "ap"), ("params", 3, "ap"), ("latency_ms", 5, "mr")],
)
def test_the_pareto_front_of_a_detector_on_a_dataset(client, headers, jobs, cost, column, metric):
    response = client.get(
        "/results/pareto",
        params={"detector": "fcos", "dataset": DATASET, "cost": cost, "metric": metric},
        headers=headers,
    )
    assert response.status_code == 200, response.text
    body = response.json()
    lower = metric == "mr"
    assert body["lower_is_better"] is lower and not body["truncated"]
    points = [(row[0], float(row[column]), row[7 if metric == "ap" else 8]) for row in ROWS]
    assert {p["job_id"] for p in body["points"]} == {jobs[name] for name, _, _ in points}
    expected = [jobs[name] for name in _brute_front(points, lower)]
    assert body["front"] == expected
    assert {p["job_id"] for p in body["points"] if p["on_front"]} == set(expected)
    by_job = {p["job_id"]: p for p in body["points"]}
    for name, c, m in points:
        assert (by_job[jobs[name]]["cost"], by_job[jobs[name]]["metric"]) == (c, m)
    assert jobs["dominated"] not in body["front"]


def test_pareto_refuses_bad_parameters_by_name(client, headers, jobs):
    bad = client.get(
        "/results/pareto",
        params={"detector": "fcos", "dataset": DATASET, "cost": "carbon"},
        headers=headers,
    )
    assert bad.status_code == 422 and "cost" in bad.text
    missing = client.get("/results/pareto", params={"dataset": DATASET}, headers=headers)
    assert missing.status_code == 422 and "detector" in missing.text
    assert (
        client.get("/results/pareto", params={"detector": "x", "dataset": "y"}).status_code == 401
    )
    empty = client.get(
        "/results/pareto", params={"detector": "gfl", "dataset": DATASET}, headers=headers
    )
    assert empty.status_code == 200 and empty.json()["points"] == []


def test_pareto_keeps_one_device_when_asked(client, headers, jobs):
    body = client.get(
        "/results/pareto",
        params={"detector": "fcos", "dataset": DATASET, "device": CPU},
        headers=headers,
    ).json()
    assert body["devices"] == {CPU: 5, "cuda:0 (H200)": 1} and body["device"] == CPU
    kept = [
        (name, latency, ap) for name, _, _, _, _, latency, device, ap, _ in ROWS if device == CPU
    ]
    assert {p["job_id"] for p in body["points"]} == {jobs[name] for name, _, _ in kept}
    assert body["front"] == [jobs[name] for name in _brute_front(kept, False)]
    # Without the filter the GPU-timed row is the cheapest of all.
    mixed = client.get(
        "/results/pareto", params={"detector": "fcos", "dataset": DATASET}, headers=headers
    ).json()
    assert mixed["front"][0] == jobs["pgd_gpu"] and mixed["device"] is None


def test_grouped_results_refuse_a_cost_sort_by_name(client, headers, jobs):
    refused = client.get(
        "/results", params={"group_by": "config", "sort": "-flops"}, headers=headers
    )
    assert refused.status_code == 422
    assert refused.json()["errors"] == [
        {"field": "sort", "message": "group_by=config sorts by a metric or created_at, not flops"}
    ]
