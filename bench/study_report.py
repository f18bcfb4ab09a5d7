"""Markdown tables of a ``pgd study`` run (its ``study.json``), for docs/study.md.

Every number comes from the study's JSON (``GET /studies/{id}`` and ``GET
/results?study=``): the per-seed APs from the results, the summaries from the
study's table. A paired delta "exceeds seed noise" when its 95 % t interval
(n - 1 degrees of freedom over the paired seeds) excludes zero.

    .venv/bin/python bench/study_report.py docs/studies/fcos.json
"""

from __future__ import annotations

import json
import math
import sqlite3
import sys
from pathlib import Path
from typing import Any

from api.services.groups import t975


def _f(value: float | None, digits: int = 1, signed: bool = False) -> str:
    if value is None:
        return "-"
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"


def _values(study: dict[str, Any], results: dict[str, float]) -> dict[str, dict[int, float]]:
    """method -> seed -> AP for the study's students."""
    out: dict[str, dict[int, float]] = {}
    for job in study["jobs"]:
        if job["role"] == "student" and job["id"] in results:
            out.setdefault(job["method"], {})[job["seed"]] = results[job["id"]]
    return out


def versus(values: dict[str, dict[int, float]], control: dict[int, float], name: str) -> list[str]:
    """Per method, the paired difference against ``control`` over shared seeds, with its
    95 % t interval, computed here from the per-seed APs."""
    lines = [
        f"| method | paired dAP vs {name} (mean +- sd, n) | 95 % CI | exceeds seed noise |",
        "|---|---|---|---|",
    ]
    for method, by_seed in values.items():
        seeds = sorted(set(by_seed) & set(control))
        diffs = [by_seed[s] - control[s] for s in seeds]
        if len(diffs) < 2 or method == name:
            continue
        mean = sum(diffs) / len(diffs)
        sd = math.sqrt(sum((d - mean) ** 2 for d in diffs) / (len(diffs) - 1))
        half = t975(len(diffs) - 1) * sd / math.sqrt(len(diffs))
        noise = "yes" if mean - half > 0 or mean + half < 0 else "no"
        lines.append(
            f"| {method} | {mean:+.1f} +- {sd:.1f} (n={len(diffs)}) "
            f"| {mean - half:+.1f}..{mean + half:+.1f} | {noise} |"
        )
    return lines


def _per_seed(study: dict[str, Any], results: dict[str, float]) -> dict[tuple[str, str], str]:
    out: dict[tuple[str, str], list[tuple[int, float]]] = {}
    for job in study["jobs"]:
        if job["id"] in results:
            key = (job["role"], job["method"])
            out.setdefault(key, []).append((job["seed"], results[job["id"]]))
    return {k: " / ".join(f"{ap:.1f}" for _, ap in sorted(v)) for k, v in out.items()}


def _noise(row: dict[str, Any]) -> str:
    n, mean, sd = row.get("delta_ap_n", 0), row.get("delta_ap_mean"), row.get("delta_ap_sd")
    if mean is None or n < 2 or sd is None:
        return "-"
    half = t975(n - 1) * sd / math.sqrt(n)
    low, high = mean - half, mean + half
    verdict = "yes" if low > 0 or high < 0 else "no"
    return f"{verdict} ({low:+.1f}..{high:+.1f})"


def table(study: dict[str, Any], results: dict[str, float], label: str = "method") -> str:
    seeds = _per_seed(study, results)
    lines = [
        f"| {label} | AP per seed | mean +- sd | 95 % CI | paired dAP vs none (mean +- sd) "
        "| exceeds seed noise (95 % CI of dAP) | gap recovered |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in study["table"]:
        name = "teacher" if row["role"] == "teacher" else row["method"]
        sd = f" +- {row['ap_sd']:.1f}" if row["ap_sd"] is not None else ""
        ci = (
            "-"
            if row["ap_ci95_low"] is None
            else f"{row['ap_ci95_low']:.1f}..{row['ap_ci95_high']:.1f}"
        )
        delta = row.get("delta_ap_mean")
        dsd = f" +- {row['delta_ap_sd']:.1f}" if row.get("delta_ap_sd") is not None else ""
        lines.append(
            f"| {name} | {seeds.get((row['role'], row['method']), '-')} "
            f"| {_f(row['ap_mean'])}{sd} | {ci} "
            f"| {_f(delta, signed=True)}{dsd if delta is not None else ''} | {_noise(row)} "
            f"| {_f(row.get('gap_recovered_ap'), 2)} |"
        )
    return "\n".join(lines)


def _results(path: Path, study: dict[str, Any]) -> dict[str, float]:
    """Per-job AP: the study's own ``results`` and ``all_results`` (docs/studies/ adds
    every result of the stack's database), completed from the database beside
    ``study.json`` (``pgd.db``) when there is one."""
    results = {r["job_id"]: r["ap"] for r in study.get("results", [])}
    results.update(study.get("all_results", {}))
    database = path.parent / "pgd.db"
    if database.is_file():
        with sqlite3.connect(database) as conn:
            for job_id, ap in conn.execute("SELECT job_id, ap FROM eval_results"):
                results.setdefault(job_id, ap)
    return results


def main(argv: list[str]) -> int:
    for name in argv:
        path = Path(name)
        study = json.loads(path.read_text())
        results = _results(path, study)
        print(f"### {study['name'] or study['id']}\n")
        print(table(study, results))
        print()
        values = _values(study, results)
        for extra in study.get("alpha_studies", []):
            print(f"alpha = {extra['alpha']:g}:\n")
            print(table(extra, results))
            print()
            for method, by_seed in _values(extra, results).items():
                values[f"{method} alpha={extra['alpha']:g}"] = by_seed
        for control in ("inherit", "pgd"):
            if control in values:
                print("\n".join(versus(values, values[control], control)))
                print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
