"""The demo's printed leaderboard shows the API rows' own numbers (one decimal)."""

from __future__ import annotations

import contextlib
import io

from api.demo import print_leaderboard


def test_printed_leaderboard_rows_are_the_api_rows() -> None:
    rows = [
        {
            "job_id": "t",
            "method": "none",
            "ap": 37.64,
            "ap50": 68.55,
            "teacher_ap": None,
            "baseline_ap": None,
            "delta_ap_vs_baseline": None,
        },
        {
            "job_id": "p",
            "method": "pgd",
            "ap": 30.04,
            "ap50": 54.91,
            "teacher_ap": 37.64,
            "baseline_ap": 15.21,
            "delta_ap_vs_baseline": 14.83,
        },
    ]
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        print_leaderboard(rows, {"t": "teacher (R-34)", "p": "PGD student (R-18)"})
    lines = out.getvalue().splitlines()[2:]
    assert lines[0].split()[-5:] == ["37.6", "68.5", "-", "-", "-"]
    assert lines[1].split()[-5:] == ["30.0", "54.9", "37.6", "15.2", "+14.8"]
    assert lines[1].startswith("PGD student (R-18)")
