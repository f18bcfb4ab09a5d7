"""``GET /results?group_by=config``: seeds summarised, paired deltas, gap recovered.

Every expected number below is worked out by hand in the comments (and checked
with the statistics module), on SQLite and PostgreSQL migrated by Alembic.
"""

from __future__ import annotations

import csv
import io
import math
import statistics
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from db_helpers import bearer, migrated_app
from fastapi import FastAPI
from fastapi.testclient import TestClient

from api.services.groups import summarise, t975
from pgd_core.presets import get_preset
from pgd_core.spec import RunSpec
from pgd_service.db.models import EvalResult, Job
from pgd_service.lifecycle import job_values

T0 = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def app(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[FastAPI]:
    yield from migrated_app(request.param, tmp_path_factory, broker_url="redis://127.0.0.1:1/0")


@pytest.fixture
def client(app: FastAPI) -> Iterator[httpx.Client]:
    with TestClient(app) as http:
        yield http


def _store(
    app: FastAPI,
    spec: RunSpec,
    ap: float | None,
    *,
    minutes: int,
    teacher_job_id: str | None = None,
    study_id: str | None = None,
    state: str = "succeeded",
) -> str:
    """A finished job of ``spec`` with an evaluation result of ``ap`` (none if None)."""
    values = job_values(spec=spec, owner="grouping", max_attempts=3, teacher_job_id=teacher_job_id)
    when = T0 + timedelta(minutes=minutes)
    values.update(
        state=state,
        study_id=study_id,
        created_at=when,
        updated_at=when,
        finished_at=when + timedelta(minutes=30),
    )
    with app.state.session_factory() as session:
        session.add(Job(**values))
        session.flush()
        if ap is not None:
            session.add(
                EvalResult(
                    job_id=values["id"],
                    dataset=spec.dataset.name,
                    detector=spec.detector,
                    method=spec.method,
                    metrics={"bbox_mAP": ap / 100},
                    ap=ap,
                    ap50=ap + 20,
                    created_at=when + timedelta(minutes=31),
                )
            )
        session.commit()
    return values["id"]


@pytest.fixture(scope="module")
def scene(app: FastAPI) -> dict[str, object]:
    """One teacher (AP 50); no-KD controls for seeds 0 (twice: 30 then, newer, 29),
    1 (32) and 2 (31); PGD students for seeds 0, 1 and 3 (36, 35, 38: seed 3 has no
    control); one inherit student (seed 0, AP 40); a failed PGD job without result."""
    dataset = f"grp-{uuid.uuid4().hex[:6]}"
    data = get_preset("tiny-fcos-pgd").model_dump(mode="json")
    data["dataset"]["name"] = dataset
    pgd = RunSpec.model_validate(data)
    teacher_spec = get_preset("tiny-fcos-teacher").model_copy(update={"dataset": pgd.dataset})
    teacher = _store(app, teacher_spec, 50.0, minutes=0)
    base = pgd.baseline_spec()
    assert base is not None
    controls = [
        _store(app, base.model_copy(update={"seed": 0}), 30.0, minutes=1),
        _store(app, base.model_copy(update={"seed": 0}), 29.0, minutes=2),
        _store(app, base.model_copy(update={"seed": 1}), 32.0, minutes=3),
        _store(app, base.model_copy(update={"seed": 2}), 31.0, minutes=4),
    ]
    students = [
        _store(app, pgd.model_copy(update={"seed": s}), ap, minutes=10 + s, teacher_job_id=teacher)
        for s, ap in ((0, 36.0), (1, 35.0), (3, 38.0))
    ]
    _store(app, pgd.model_copy(update={"seed": 4}), None, minutes=20, state="failed")
    inherit = pgd.model_copy(update={"method": "inherit", "distill": None})
    inherit = RunSpec.model_validate(inherit.model_dump())
    _store(app, inherit, 40.0, minutes=21, teacher_job_id=teacher)
    return {
        "dataset": dataset,
        "teacher": teacher,
        "controls": controls,
        "students": students,
        "pgd_hash": pgd.config_hash(),
        "base_hash": base.config_hash(),
    }


def _groups(client: httpx.Client, app: FastAPI, **params: object) -> list[dict]:
    response = client.get(
        "/results",
        params={"group_by": "config", **params},
        headers=bearer(app, "reader", is_admin=True),
    )
    assert response.status_code == 200, response.text
    return response.json()["items"]


def test_pgd_group_mean_sd_interval_and_paired_delta(
    app: FastAPI, client: httpx.Client, scene: dict
) -> None:
    groups = {g["config_hash"]: g for g in _groups(client, app, dataset=scene["dataset"])}
    g = groups[scene["pgd_hash"]]
    assert (g["kind"], g["method"], g["n"], g["seeds"]) == ("distill", "pgd", 3, [0, 1, 3])
    assert sorted(g["job_ids"]) == sorted(scene["students"])
    assert g["teacher_job_ids"] == [scene["teacher"]]
    # AP 36, 35, 38: mean 109/3; squared deviations 1/9 + 16/9 + 25/9 = 42/9, so
    # sd = sqrt(42/9 / 2) = sqrt(7/3); the interval is t(0.975; 2) = 4.3027 sd/sqrt(3).
    assert g["ap_mean"] == pytest.approx(109 / 3)
    assert g["ap_sd"] == pytest.approx(math.sqrt(7 / 3))
    half = 4.302653 * math.sqrt(7 / 3) / math.sqrt(3)
    assert g["ap_ci95_low"] == pytest.approx(109 / 3 - half, abs=1e-3)
    assert g["ap_ci95_high"] == pytest.approx(109 / 3 + half, abs=1e-3)
    assert g["ap50_mean"] == pytest.approx(109 / 3 + 20)
    # Pairs: seed 0 with its newer control (36 - 29 = 7), seed 1 (35 - 32 = 3);
    # seed 3 has none. Mean 5, sd sqrt((2^2 + 2^2) / 1) = sqrt(8); controls' mean
    # (29 + 32) / 2 = 30.5; gap recovered 5 / (50 - 30.5) = 5 / 19.5.
    assert g["delta_ap_n"] == 2
    assert g["delta_ap_mean"] == pytest.approx(5.0)
    assert g["delta_ap_sd"] == pytest.approx(math.sqrt(8))
    assert g["baseline_ap_mean"] == pytest.approx(30.5)
    assert g["teacher_ap"] == pytest.approx(50.0)
    assert g["gap_recovered_ap"] == pytest.approx(5 / 19.5)
    # COCO results have no miss rate: empty, never zero.
    assert (g["mr_n"], g["mr_mean"], g["mr_sd"], g["delta_mr_n"], g["gap_recovered_mr"]) == (
        0,
        None,
        None,
        0,
        None,
    )


def test_single_seed_group_and_the_controls_group(
    app: FastAPI, client: httpx.Client, scene: dict
) -> None:
    groups = _groups(client, app, dataset=scene["dataset"])
    inherit = next(g for g in groups if g["method"] == "inherit")
    # n = 1: the mean is the value, sd and interval are empty; paired with the
    # newest seed-0 control: 40 - 29 = 11, gap 11 / (50 - 29).
    assert (inherit["n"], inherit["ap_mean"], inherit["ap_sd"], inherit["ap_ci95_low"]) == (
        1,
        40.0,
        None,
        None,
    )
    assert (inherit["delta_ap_n"], inherit["delta_ap_mean"], inherit["delta_ap_sd"]) == (
        1,
        11.0,
        None,
    )
    assert inherit["gap_recovered_ap"] == pytest.approx(11 / 21)
    controls = next(g for g in groups if g["config_hash"] == scene["base_hash"])
    # Seed 0 ran twice: its newer run (29) is the sample, as in the pairing; so
    # 29, 32, 31 -> mean 92/3, squared deviations 25/9 + 16/9 + 1/9 = 42/9, sd sqrt(7/3).
    assert (controls["kind"], controls["method"], controls["n"]) == ("train", "none", 3)
    assert controls["seeds"] == [0, 1, 2] and len(controls["job_ids"]) == 3
    assert scene["controls"][0] not in controls["job_ids"]
    assert controls["ap_mean"] == pytest.approx(92 / 3)
    assert controls["ap_sd"] == pytest.approx(math.sqrt(7 / 3))
    assert controls["delta_ap_n"] == 0 and controls["delta_ap_mean"] is None
    assert controls["teacher_ap"] is None and controls["gap_recovered_ap"] is None
    # Ordered by mean AP, highest first: teacher 50, inherit 40, pgd 36.3, controls 30.7.
    assert [g["ap_mean"] for g in groups] == sorted((g["ap_mean"] for g in groups), reverse=True)
    assert len(groups) == 4


def test_grouped_csv_carries_the_same_numbers(
    app: FastAPI, client: httpx.Client, scene: dict
) -> None:
    response = client.get(
        "/results",
        params={"group_by": "config", "dataset": scene["dataset"], "format": "csv"},
        headers=bearer(app, "reader", is_admin=True),
    )
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(response.text)))
    pgd = next(r for r in rows if r["config_hash"] == scene["pgd_hash"])
    assert float(pgd["ap_mean"]) == pytest.approx(109 / 3)
    assert float(pgd["delta_ap_mean"]) == pytest.approx(5.0)
    assert pgd["seeds"] == "0 1 3" and pgd["mr_mean"] == ""
    assert float(pgd["gap_recovered_ap"]) == pytest.approx(5 / 19.5)


def test_grouped_paging_and_bad_group_by(app: FastAPI, client: httpx.Client, scene: dict) -> None:
    headers = bearer(app, "reader", is_admin=True)
    first = client.get(
        "/results",
        params={"group_by": "config", "dataset": scene["dataset"], "limit": 3},
        headers=headers,
    ).json()
    assert len(first["items"]) == 3 and first["next_offset"] == 3
    rest = client.get(
        "/results",
        params={"group_by": "config", "dataset": scene["dataset"], "limit": 3, "offset": 3},
        headers=headers,
    ).json()
    assert len(rest["items"]) == 1 and rest["next_offset"] is None
    bad = client.get("/results", params={"group_by": "seed"}, headers=headers)
    assert bad.status_code == 422
    assert any(e["field"] == "group_by" for e in bad.json()["errors"])


def test_summarise_matches_the_statistics_module() -> None:
    values = [31.2, 33.9, 30.4, 35.0, 32.2]
    s = summarise(values)
    assert s.n == 5 and s.mean == pytest.approx(statistics.fmean(values))
    assert s.sd == pytest.approx(statistics.stdev(values))
    assert s.ci95_high - s.mean == pytest.approx(2.776445 * statistics.stdev(values) / 5**0.5, 1e-5)
    assert summarise([]) == summarise([None, float("nan")])
    assert summarise([]).n == 0 and summarise([3.0]).sd is None


def test_t_quantiles_against_scipy() -> None:
    stats = pytest.importorskip("scipy.stats")
    for df in [*range(1, 61), 80, 100, 200, 1000]:
        assert t975(df) == pytest.approx(stats.t.ppf(0.975, df), abs=1.5e-4), df
    with pytest.raises(ValueError, match="at least 1"):
        t975(0)
