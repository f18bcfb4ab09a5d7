"""Every number a user reads, against an independent computation, end to end.

Models are trained for real (tests/trained_models.py, once per session) by the
library, the command line and the service. What each reports (RunResult, the
``pgd run`` JSON, ``GET /results`` rows and CSV, metric series, plots) is
compared with the model's own predictions from mmdet's inference API scored by
pycocotools or mmdet's CrowdHumanMetric (tests/oracle.py), or with mmengine's
own log. Before the evaluation fix, the COCO runs here reported AP near 1 where
pycocotools gives about 20: each test below failed on that code.
"""

from __future__ import annotations

import csv
import io
import math
import re
from pathlib import Path

import pytest
import torch
from oracle import (
    coco_ap_of_run,
    dumped_config,
    mean_over_window,
    mmdet_crowdhuman_metrics,
    student_model,
)
from trained_models import Run, ServiceRuns

from pgd_core.data.manifest import DatasetInfo
from pgd_core.evaluation.png import read_plot_text

COCO_KEYS = ("AP", "AP50", "AP75", "APs", "APm", "APl")
# "Equal to 0.1 AP": both sides score the same boxes, so the bound is loose.
AP_TOL = 0.1
MIN_REAL_AP = 10.0


def _oracle(run_dir: Path, checkpoint: Path, info: DatasetInfo) -> dict[str, float]:
    val = info.split("val")
    return coco_ap_of_run(run_dir, checkpoint, "fcos", val.ann_file, val.img_dir, info.classes)


def _assert_same_coco_numbers(reported: dict, oracle: dict, *, lower: bool = False) -> None:
    """``reported`` keys are the run's (AP, ...) or a result row's (ap, ...); pycocotools
    writes -100 where an area range has no ground truth, runs -1 and rows null."""
    assert oracle["AP"] >= MIN_REAL_AP, f"the trained model is too weak to judge: {oracle}"
    for key in COCO_KEYS:
        got = reported[key.lower() if lower else key]
        if oracle[key] < 0:
            assert got in ((None,) if lower else (-1.0,)), (key, got)
        else:
            assert got == pytest.approx(oracle[key], abs=AP_TOL), (key, got, oracle[key])


# ------------------------------------------------------------- library and CLI


def test_a_library_run_reports_the_ap_of_its_own_predictions(library_run: Run, shapes):
    oracle = _oracle(library_run.work_dir, library_run.checkpoint, shapes)
    _assert_same_coco_numbers(library_run.reported, oracle)


def test_pgd_run_prints_the_ap_of_the_distilled_student(
    cli_distilled: Run, library_run: Run, shapes
):
    """The student's own predictions (a plain detector from the student checkpoint),
    never the teacher's."""
    state = torch.load(cli_distilled.checkpoint, map_location="cpu", weights_only=False)
    assert not any(key.startswith("teacher") for key in state["state_dict"])
    oracle = _oracle(cli_distilled.work_dir, cli_distilled.checkpoint, shapes)
    _assert_same_coco_numbers(cli_distilled.reported, oracle)
    assert cli_distilled.reported["AP"] != pytest.approx(library_run.reported["AP"], abs=1e-3)


def test_an_evaluate_run_reports_what_the_training_run_did(library_run: Run, oracle_data, shapes):
    from pgd_core.runner import run_spec

    spec = library_run.spec.model_copy(update={"kind": "evaluate"})
    work = library_run.work_dir.parent / "evaluate-of-library-run"
    result = run_spec(spec, work, data_root=oracle_data, checkpoint=library_run.checkpoint)
    _assert_same_coco_numbers(result.metrics, _oracle(work, library_run.checkpoint, shapes))
    assert result.metrics == pytest.approx(library_run.reported, abs=1e-9)


def test_a_crowdhuman_run_reports_what_mmdet_measures(crowd_run: Run, crowd):
    model = student_model(dumped_config(crowd_run.work_dir), crowd_run.checkpoint, "fcos")
    val = crowd.split("val")
    theirs = mmdet_crowdhuman_metrics(val.ann_file, val.img_dir, model)
    ours = crowd_run.reported
    assert 0.0 < theirs["AP"] and theirs["MR"] < 100.0, theirs
    # mmdet rounds its fractions to 4 decimals: 0.005 in percent.
    assert ours["MR"] == pytest.approx(theirs["MR"], abs=0.005 + 1e-9)
    assert ours["AP"] == pytest.approx(theirs["AP"], abs=0.005 + 1e-9)
    # Our JI picks, among the maximum matchings, the one that leaves unmatched
    # boxes in ignore regions (docs/evaluation.md): never below mmdet's, and
    # only slightly above it (0.21 on the 1,000-image benchmark).
    assert theirs["JI"] - 0.005 <= ours["JI"] <= theirs["JI"] + 1.0


# ------------------------------------------------------------------ service


def _rows(runs: ServiceRuns) -> dict[str, dict]:
    page = runs.get("/results", dataset="shapes", limit=500).json()
    by_job = {row["job_id"]: row for row in page["items"]}
    return {role: by_job[job_id] for role, job_id in runs.jobs.items()}


def _service_oracle(runs: ServiceRuns, role: str, shapes, tmp_path: Path) -> dict[str, float]:
    """Config and checkpoint downloaded through the API, as a user would."""
    job_id = runs.jobs[role]
    folder = tmp_path / role
    runs.download(job_id, "config", folder / "20000101_000000.py")
    source = runs.jobs["teacher"] if role == "evaluate" else job_id
    checkpoint = runs.download(source, "checkpoint", folder / "model.pth")
    return _oracle(folder, checkpoint, shapes)


@pytest.mark.parametrize("role", ["teacher", "baseline", "pgd", "evaluate"])
def test_each_result_row_is_the_ap_of_the_jobs_own_model(
    service_runs: ServiceRuns, role: str, shapes, tmp_path: Path
):
    row = _rows(service_runs)[role]
    _assert_same_coco_numbers(
        row, _service_oracle(service_runs, role, shapes, tmp_path), lower=True
    )
    job = service_runs.get(f"/jobs/{service_runs.jobs[role]}").json()
    assert (row["job_id"], job["state"]) == (service_runs.jobs[role], "succeeded")


def test_evaluating_the_teachers_checkpoint_gives_the_teachers_row(service_runs: ServiceRuns):
    rows = _rows(service_runs)
    for key in ("ap", "ap50", "ap75", "aps", "apm", "apl"):
        assert rows["evaluate"][key] == rows["teacher"][key]


def test_leaderboard_deltas_are_differences_of_the_rows_own_values(service_runs: ServiceRuns):
    rows = _rows(service_runs)
    pgd, teacher, baseline = rows["pgd"], rows["teacher"], rows["baseline"]
    assert (pgd["teacher_job_id"], pgd["baseline_job_id"]) == (
        service_runs.jobs["teacher"],
        service_runs.jobs["baseline"],
    )
    assert (pgd["teacher_ap"], pgd["baseline_ap"]) == (teacher["ap"], baseline["ap"])
    assert pgd["delta_ap_vs_teacher"] == pytest.approx(pgd["ap"] - teacher["ap"], abs=1e-9)
    assert pgd["delta_ap_vs_baseline"] == pytest.approx(pgd["ap"] - baseline["ap"], abs=1e-9)
    # A real gap: the teacher (R-34, twice the schedule) leads the R-18 baseline.
    assert teacher["ap"] > baseline["ap"]


def test_csv_export_carries_the_numbers_of_the_json_rows(service_runs: ServiceRuns):
    page = service_runs.get("/results", dataset="shapes", sort="-ap", limit=500).json()["items"]
    text = service_runs.get("/results", dataset="shapes", sort="-ap", format="csv").text
    table = list(csv.DictReader(io.StringIO(text)))
    assert [r["job_id"] for r in table] == [r["job_id"] for r in page]
    assert len(table) == len(service_runs.jobs)
    for cells, row in zip(table, page):
        assert set(cells) == set(row) - {"metrics", "cost"}
        for name, cell in cells.items():
            value = row[name]
            if value is None:
                assert cell == "", name
            elif isinstance(value, float):
                assert float(cell) == value, name  # repr round-trips exactly
            else:
                assert cell == str(value), name


_LEGEND = re.compile(r"IoU=(\d\.\d\d)\s+\(AP ([\d.]+)\)")


def test_the_pr_plot_shows_the_reported_ap(service_runs: ServiceRuns, shapes, tmp_path: Path):
    """Its title carries the row's AP, its legend the AP at each IoU threshold,
    each equal to pycocotools' for the job's own model."""
    role = "teacher"
    row = _rows(service_runs)[role]
    oracle = _service_oracle(service_runs, role, shapes, tmp_path)
    plot = service_runs.download(
        service_runs.jobs[role], "plots/pr_curves.png", tmp_path / "pr.png"
    )
    text = read_plot_text(plot)
    title_ap = float(re.search(r"AP ([\d.]+)$", text["Title"]).group(1))
    assert title_ap == pytest.approx(row["ap"], abs=0.05 + 1e-9)
    legend = {iou: float(ap) for iou, ap in _LEGEND.findall(text["Description"])}
    assert len(legend) == 10
    for iou, ap in legend.items():
        assert ap == pytest.approx(oracle[f"AP@{iou}"], abs=0.05 + 1e-6), iou
    assert sum(legend.values()) / 10 == pytest.approx(oracle["AP"], abs=0.05 + 1e-6)


_TRAIN_LINE = re.compile(r"Iter\(train\) \[\s*(\d+)/\d+\]\s+(.*)$")
_VAL_LINE = re.compile(r"Iter\(val\) \[\d+/\d+\]\s+(pgd/AP: .*)$")


def _log_values(line: str) -> dict[str, float]:
    return {k: float(v) for k, v in re.findall(r"([\w/]+): ([-\d.e+]+)", line)}


@pytest.mark.parametrize("role", ["teacher", "pgd"])
def test_metric_series_equal_the_mmengine_log(service_runs: ServiceRuns, role: str):
    """The log prints, every 10 iterations, the mean of the last 10 losses (4 decimals)
    and the lr of that iteration; the API's series hold every iteration."""
    job_id = service_runs.jobs[role]
    series = {
        name: {p["step"]: p["value"] for p in points}
        for name, points in service_runs.get(f"/jobs/{job_id}/metrics").json()["series"].items()
    }
    log = service_runs.get(f"/jobs/{job_id}/logs", tail=10_000).text
    logged = [
        (int(m.group(1)), _log_values(m.group(2)))
        for m in map(_TRAIN_LINE.search, log.splitlines())
        if m
    ]
    assert len(logged) == (300 if role == "teacher" else 150) // 10
    losses = {name for name in logged[0][1] if name.startswith("loss")}
    assert "loss" in losses and (role != "pgd" or "loss_pgd_cls" in repr(losses))
    for step, values in logged:
        for name in losses:
            expected = mean_over_window(series[name], step, 10)
            assert values[name] == pytest.approx(expected, abs=5e-5 + 1e-9), (step, name)
        assert values["lr"] == pytest.approx(series["lr"][step], rel=5e-5), step
    (val_line,) = [m.group(1) for m in map(_VAL_LINE.search, log.splitlines()) if m]
    printed = _log_values(val_line)
    row = _rows(service_runs)[role]
    last = max(series["val/AP"])
    assert math.isclose(printed["pgd/AP"], series["val/AP"][last], abs_tol=5e-5)
    assert series["val/AP"][last] == row["ap"]


# ------------------------------------------------------------- what each model costs


@pytest.mark.parametrize("role", ["teacher", "baseline", "pgd"])
def test_each_rows_cost_is_that_of_its_own_model(service_runs: ServiceRuns, role: str, tmp_path):
    """Parameters and FLOPs of the downloaded checkpoint, rebuilt by mmdet's
    init_detector from the downloaded config and counted by mmengine's
    get_model_complexity_info (mmdet's get_flops path); the ONNX artifact run
    here by onnxruntime against that model."""
    import numpy as np
    import onnxruntime
    from mmengine.analysis import get_model_complexity_info

    row = _rows(service_runs)[role]
    job_id = service_runs.jobs[role]
    folder = tmp_path / role
    config = service_runs.download(job_id, "config", folder / "20000101_000000.py")
    checkpoint = service_runs.download(job_id, "checkpoint", folder / "model.pth")
    model = student_model(config, checkpoint, "fcos")
    inputs = torch.randn(1, 3, 160, 160, generator=torch.Generator().manual_seed(7))
    info = get_model_complexity_info(model, inputs=inputs, show_table=False, show_arch=False)
    assert row["params"] == info["params"] == sum(p.numel() for p in model.parameters())
    assert row["flops"] == info["flops"]
    assert 0 < row["latency_ms"] <= row["latency_p90_ms"]
    assert row["device"].startswith("cpu (") and row["threads"] >= 1
    assert row["peak_memory_mb"] > 0
    onnx = service_runs.download(job_id, "model.onnx", folder / "model.onnx")
    session = onnxruntime.InferenceSession(str(onnx), providers=["CPUExecutionProvider"])
    got = session.run(None, {"image": inputs.numpy()})
    with torch.no_grad():
        cls_scores, bbox_preds, centernesses = model._forward(inputs)
    # pgd_core flattens per output kind, then per level: scores, boxes, centerness.
    expected = [*cls_scores, *bbox_preds, *centernesses]
    assert len(got) == len(expected)
    for theirs, mine in zip(got, expected, strict=True):
        np.testing.assert_allclose(theirs, mine.numpy(), atol=1e-3, rtol=1e-3)
    assert row["onnx_max_abs_diff"] < 1e-3


def test_the_students_cost_ratios_are_of_the_rows_own_numbers(service_runs: ServiceRuns):
    rows = _rows(service_runs)
    pgd, teacher, baseline = rows["pgd"], rows["teacher"], rows["baseline"]
    # Same architecture, same cost: the distilled student is the baseline's network.
    assert (pgd["params"], pgd["flops"]) == (baseline["params"], baseline["flops"])
    assert rows["evaluate"]["params"] == teacher["params"]
    assert rows["evaluate"]["flops"] == teacher["flops"]
    # The R-18 student is smaller than the R-34 teacher.
    assert pgd["params"] < teacher["params"] and pgd["flops"] < teacher["flops"]
    assert pgd["params_ratio_vs_teacher"] == pgd["params"] / teacher["params"]
    assert pgd["flops_ratio_vs_teacher"] == pgd["flops"] / teacher["flops"]
    # One worker on one machine timed both: a speed-up is given.
    assert pgd["speedup_vs_teacher"] == teacher["latency_ms"] / pgd["latency_ms"]
    front = service_runs.get(
        "/results/pareto", detector="fcos", dataset="shapes", cost="flops"
    ).json()
    assert {p["job_id"] for p in front["points"]} == set(service_runs.jobs.values())
