"""``pgd study`` end to end on the embedded default (SQLite, the server-less broker,
one real Celery worker), with tiny schedules: every job ends, and the grouped table
it prints and saves agrees with the per-run results recomputed here by hand."""

from __future__ import annotations

import json
import math
import os
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

from api.embedded import REPO_ROOT
from pgd_core.evaluation.png import read_plot_text


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, str, Path]:
    home = tmp_path_factory.mktemp("study")
    command = [
        sys.executable, "-m", "api.cli", "study",
        "--methods", "none,pgd", "--seeds", "0,1",
        "--teacher-iters", "30", "--student-iters", "12",
        "--num-train", "12", "--num-val", "6",
        "--extra-alphas", "0.4",
        "--home", str(home), "--port", str(_free_port()), "--timeout", "900",
    ]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith("PGD_")}
    done = subprocess.run(
        command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=1200
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    return json.loads((home / "study.json").read_text()), done.stdout, home


def test_every_job_of_the_study_ends(study: tuple[dict, str, Path]) -> None:
    body, _, _ = study
    assert body["done"] and body["total"] == 5
    assert sorted((j["role"], j["method"], j["seed"]) for j in body["jobs"]) == [
        ("student", "none", 0),
        ("student", "none", 1),
        ("student", "pgd", 0),
        ("student", "pgd", 1),
        ("teacher", "none", 0),
    ]
    assert all(j["state"] == "succeeded" for j in body["jobs"])
    # GET /results?study= holds this study's runs, one row each, and no other.
    assert sorted(r["job_id"] for r in body["results"]) == sorted(j["id"] for j in body["jobs"])
    (extra,) = body["alpha_studies"]
    assert extra["teacher_job_id"] == body["teacher_job_id"]
    assert [(j["method"], j["state"]) for j in extra["jobs"]] == [("pgd", "succeeded")] * 2


def _by_hand(body: dict) -> dict[str, dict]:
    """Mean, sd and the paired delta per method from the per-run results."""
    ap = {r["job_id"]: r["ap"] for r in body["results"]}
    jobs = [j for j in body["jobs"] if j["role"] == "student"]
    teacher_ap = ap[body["teacher_job_id"]]
    control = {j["seed"]: ap[j["id"]] for j in jobs if j["method"] == "none"}
    out = {}
    for method in ("none", "pgd"):
        values = {j["seed"]: ap[j["id"]] for j in jobs if j["method"] == method}
        deltas = [values[s] - control[s] for s in sorted(values)]
        out[method] = {
            "mean": statistics.fmean(values.values()),
            "sd": statistics.stdev(values.values()),
            "delta_mean": statistics.fmean(deltas),
            "delta_sd": statistics.stdev(deltas),
            "gap": (
                statistics.fmean(deltas) / (teacher_ap - statistics.fmean(control.values()))
                if teacher_ap != statistics.fmean(control.values())
                else None
            ),
        }
    return out


def test_the_table_is_the_runs_summarised(study: tuple[dict, str, Path]) -> None:
    body, stdout, _ = study
    expected = _by_hand(body)
    ap = {r["job_id"]: r["ap"] for r in body["results"]}
    rows = {(r["role"], r["method"]): r for r in body["table"]}
    assert list(rows) == [("teacher", "none"), ("student", "none"), ("student", "pgd")]
    assert rows[("teacher", "none")]["ap_mean"] == pytest.approx(ap[body["teacher_job_id"]])
    assert rows[("teacher", "none")]["n"] == 1
    for method in ("none", "pgd"):
        row = rows[("student", method)]
        assert (row["n"], row["seeds"]) == (2, [0, 1])
        assert row["ap_mean"] == pytest.approx(expected[method]["mean"])
        assert row["ap_sd"] == pytest.approx(expected[method]["sd"])
        half = 12.7062 * expected[method]["sd"] / math.sqrt(2)
        assert row["ap_ci95_high"] == pytest.approx(expected[method]["mean"] + half, abs=1e-3)
    pgd = rows[("student", "pgd")]
    assert pgd["delta_ap_n"] == 2
    assert pgd["delta_ap_mean"] == pytest.approx(expected["pgd"]["delta_mean"])
    assert pgd["delta_ap_sd"] == pytest.approx(expected["pgd"]["delta_sd"])
    assert pgd["gap_recovered_ap"] == pytest.approx(expected["pgd"]["gap"])
    assert rows[("student", "none")]["gap_recovered_ap"] is None  # the control itself
    # The printed table carries the same numbers (one decimal).
    line = next(x for x in stdout.splitlines() if x.startswith("student  pgd"))
    assert f"{expected['pgd']['mean']:.1f}" in line
    assert f"{expected['pgd']['delta_mean']:+.1f}" in line


def test_the_alpha_study_pairs_with_the_main_studys_controls(
    study: tuple[dict, str, Path],
) -> None:
    body, _, _ = study
    (extra,) = body["alpha_studies"]
    (row,) = [r for r in extra["table"] if r["role"] == "student"]
    ap = {r["job_id"]: r["ap"] for r in body["results"]}
    controls = [j for j in body["jobs"] if j["method"] == "none" and j["role"] == "student"]
    control = {j["seed"]: ap[j["id"]] for j in controls}
    assert row["seeds"] == [0, 1] and row["delta_ap_n"] == 2
    # The alpha study's own runs are in its own results (GET /results?study=<its id>).
    own = {r["job_id"]: r["ap"] for r in extra["results"]}
    assert sorted(own) == sorted(j["id"] for j in extra["jobs"])
    mine = {j["seed"]: own[j["id"]] for j in extra["jobs"]}
    diffs = [mine[s] - control[s] for s in (0, 1)]
    assert row["delta_ap_mean"] == pytest.approx(statistics.fmean(diffs))
    assert row["delta_ap_sd"] == pytest.approx(statistics.stdev(diffs))


def test_the_chart_shows_the_table(study: tuple[dict, str, Path]) -> None:
    body, _, home = study
    text = read_plot_text(home / "study.png")
    rows = {(r["role"], r["method"]): r for r in body["table"]}
    pgd, teacher = rows[("student", "pgd")], rows[("teacher", "none")]
    assert f"pgd: {pgd['ap_mean']:.1f} ± {pgd['ap_sd']:.1f} (n=2)" in text["Description"]
    assert f"teacher: {teacher['ap_mean']:.1f} (n=1)" in text["Description"]
    assert "AP over seeds" in text["Title"]
