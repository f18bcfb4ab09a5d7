"""``pgd study``: a teacher and every (method, seed) student, on the embedded stack.

Makes a synthetic shapes data set, starts ``pgd up`` (SQLite, a server-less
broker, one real Celery worker), posts one study (``POST /studies``), follows
it, then prints the table of ``GET /studies/{id}`` (mean +- sd over seeds, the
95 % interval, the paired delta against the same-seed no-KD student, the share
of the teacher-student gap recovered) and saves the study's bar chart and JSON.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from api.demo import embedded_stack
from pgd_client import Client, PgdError
from pgd_core.presets import PAPER_HYPER
from pgd_core.spec import DETECTORS, METHODS


def _csv(kind: type, text: str) -> list[Any]:
    try:
        return [kind(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a comma-separated list") from None


def _schedule(spec: dict[str, Any], iters: int) -> None:
    spec["schedule"].update(
        max_iters=iters,
        milestones=[max(1, int(iters * 0.75))],
        warmup_iters=min(50, iters // 4),
        checkpoint_interval=max(1, iters // 2),
        log_interval=max(1, min(50, iters // 10)),
    )


def study_body(client: Client, args: argparse.Namespace) -> dict[str, Any]:
    """The ``POST /studies`` body the arguments ask for, from the tiny presets."""
    presets = client.presets()
    teacher = presets[f"tiny-{args.detector}-teacher"]
    student = presets[f"tiny-{args.detector}-pgd"]
    teacher["student"].update(depth=args.teacher_depth, base_channels=args.teacher_width)
    teacher["seed"] = args.teacher_seed
    _schedule(teacher, args.teacher_iters)
    for spec in (teacher, student):
        spec["dataset"]["name"] = args.dataset
    _schedule(student, args.student_iters)
    student["student"].update(depth=args.student_depth, base_channels=args.student_width)
    student["teacher"] = dict(teacher["student"])
    # The paper's settings for the detector unless --alpha says otherwise (the tiny
    # presets carry a tenth of its alpha: pgd_core.presets.TINY_ALPHA_SCALE).
    student["distill"]["alpha"] = (
        args.alpha if args.alpha is not None else PAPER_HYPER[args.detector][1]
    )
    if args.topk is not None:
        student["distill"]["topk"] = args.topk
    if args.no_init_student:
        student["distill"]["init_student"] = False
    return {
        "name": args.name,
        "teacher": teacher,
        "student": student,
        "methods": args.methods,
        "seeds": args.seeds,
    }


def _fmt(value: float | None, digits: int = 1, signed: bool = False) -> str:
    if value is None:
        return "-"
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"


def format_table(rows: list[dict[str, Any]], metric: str = "ap") -> str:
    """The study's grouped rows as a text table (one line per teacher and method)."""
    header = (
        f"{'role':<8} {'method':<16} {'n':>2} {metric.upper() + ' mean':>8} {'sd':>5} "
        f"{'95% CI':>13} {'d vs none':>9} {'d sd':>5} {'pairs':>5} {'gap rec.':>8}"
    )
    lines = [header, "-" * len(header)]
    for r in rows:
        low, high = r[f"{metric}_ci95_low"], r[f"{metric}_ci95_high"]
        ci = "-" if low is None else f"{low:.1f}..{high:.1f}"
        delta = r.get(f"delta_{metric}_mean")
        lines.append(
            f"{r['role']:<8} {r['method']:<16} {r[f'{metric}_n']:>2} "
            f"{_fmt(r[f'{metric}_mean']):>8} {_fmt(r[f'{metric}_sd']):>5} {ci:>13} "
            f"{_fmt(delta, signed=True):>9} {_fmt(r.get(f'delta_{metric}_sd')):>5} "
            f"{r.get(f'delta_{metric}_n', 0) if delta is not None else '-':>5} "
            f"{_fmt(r.get(f'gap_recovered_{metric}'), 2):>8}"
        )
    return "\n".join(lines)


def follow(client: Client, study_id: str, timeout: float) -> dict[str, Any]:
    """Poll the study, printing each job's state when it changes, until every job ends."""
    deadline = time.monotonic() + timeout
    seen: dict[str, str] = {}
    while True:
        study = client.study(study_id)
        for job in study["jobs"]:
            label = f"{job['role']} {job['method']} seed {job['seed']}"
            if seen.get(job["id"]) != job["state"]:
                seen[job["id"]] = job["state"]
                why = f" ({job['reason']}: {job['message']})" if job["state"] == "failed" else ""
                print(f"  {label:<36} {job['state']}{why}", flush=True)
        if study["done"]:
            return study
        if time.monotonic() > deadline:
            raise TimeoutError(f"study {study_id} not finished after {timeout:.0f} s")
        time.sleep(2.0)


def _results(client: Client, study_id: str) -> list[dict[str, Any]]:
    """The study's leaderboard rows, as the API's JSON."""
    page = client.results(study=study_id, limit=500)
    return [row if isinstance(row, dict) else row.model_dump(mode="json") for row in page.items]


def run(args: argparse.Namespace) -> int:
    started = time.monotonic()
    home = args.home.resolve()
    if home.exists() and not args.keep:
        shutil.rmtree(home)
    home.mkdir(parents=True, exist_ok=True)
    from pgd_core.data.synthetic_shapes import make_coco_shapes

    print(f"synthetic data set '{args.dataset}' in {home / 'data'}", flush=True)
    make_coco_shapes(
        home / "data",
        args.dataset,
        num_train=args.num_train,
        num_val=args.num_val,
        num_classes=args.num_classes,
        max_objects=args.max_objects,
        min_size=args.min_size,
        seed=args.data_seed,
        overwrite=True,
    )
    try:
        with embedded_stack(home, args.port) as client:
            body = study_body(client, args)
            created = client.submit_study(body)
            study_id = created["id"]
            print(f"study {study_id}: {len(created['jobs'])} jobs", flush=True)
            alpha_studies = []
            for alpha in args.extra_alphas:
                extra = dict(body, name=f"{args.name or 'study'} alpha={alpha:g}")
                extra.update(teacher=None, teacher_ref=created["teacher_job_id"])
                extra["student"] = dict(body["student"])
                extra["student"]["distill"] = dict(body["student"]["distill"], alpha=alpha)
                extra["methods"] = args.extra_alpha_methods
                alpha_studies.append((alpha, client.submit_study(extra)["id"]))
            study = follow(client, study_id, args.timeout)
            chart = client.study_chart(study_id, metric="ap")
            study["results"] = _results(client, study_id)
            study["alpha_studies"] = []
            for alpha, extra_id in alpha_studies:
                done = follow(client, extra_id, args.timeout)
                done["alpha"] = alpha
                done["results"] = _results(client, extra_id)
                study["alpha_studies"].append(done)
        out = args.out or home
        out.mkdir(parents=True, exist_ok=True)
        (out / "study.json").write_text(json.dumps(study, indent=2, sort_keys=True))
        (out / "study.png").write_bytes(chart)
        print(f"\n{format_table(study['table'])}\n")
        for extra in study["alpha_studies"]:
            print(f"alpha = {extra['alpha']:g} (same teacher, same seeds):")
            rows = [r for r in extra["table"] if r["role"] == "student"]
            print(f"{format_table(rows)}\n")
        jobs = [*study["jobs"], *(j for e in study["alpha_studies"] for j in e["jobs"])]
        failed = [j for j in jobs if j["state"] != "succeeded"]
        minutes, seconds = divmod(time.monotonic() - started, 60)
        print(
            f"wall time {int(minutes)} min {seconds:.0f} s; {out / 'study.json'}, "
            f"{out / 'study.png'}"
        )
        if failed:
            print(f"{len(failed)} jobs did not succeed", file=sys.stderr)
            return 1
        return 0
    except (RuntimeError, TimeoutError, PgdError) as exc:
        print(f"study failed: {exc}\n(see {home / 'up.log'} and {home / 'work'})", file=sys.stderr)
        return 1


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pgd study run", description=__doc__.splitlines()[0])
    p.add_argument("--detector", choices=DETECTORS, default="fcos")
    p.add_argument(
        "--methods",
        type=lambda text: _csv(str, text),
        default=["none", "inherit", "pgd"],
        help=f"comma-separated, of {', '.join(METHODS)}",
    )
    p.add_argument("--seeds", type=lambda text: _csv(int, text), default=[0, 1])
    p.add_argument("--name", default=None)
    p.add_argument("--teacher-iters", type=int, default=600)
    p.add_argument("--student-iters", type=int, default=200)
    p.add_argument("--teacher-depth", type=int, choices=(18, 34, 50, 101), default=34)
    p.add_argument("--teacher-width", type=int, default=16, help="teacher ResNet stem width")
    p.add_argument("--teacher-seed", type=int, default=0)
    p.add_argument("--student-depth", type=int, choices=(18, 34, 50, 101), default=18)
    p.add_argument("--student-width", type=int, default=16)
    p.add_argument("--alpha", type=float, default=None, help="distill.alpha (paper's if unset)")
    p.add_argument("--topk", type=int, default=None, help="distill.topk (paper's if unset)")
    p.add_argument(
        "--no-init-student",
        action="store_true",
        help="KD students start from their own init, not the teacher's neck and head "
        "(method inherit is then impossible)",
    )
    p.add_argument(
        "--extra-alphas",
        type=lambda text: _csv(float, text),
        default=[],
        help="also one study per alpha: --extra-alpha-methods, the same teacher job and seeds",
    )
    p.add_argument("--extra-alpha-methods", type=lambda text: _csv(str, text), default=["pgd"])
    p.add_argument("--dataset", default="shapes")
    p.add_argument("--num-train", type=int, default=200)
    p.add_argument("--num-val", type=int, default=50)
    p.add_argument("--num-classes", type=int, default=3)
    p.add_argument("--max-objects", type=int, default=6)
    p.add_argument("--min-size", type=int, default=8)
    p.add_argument("--data-seed", type=int, default=0)
    p.add_argument("--home", type=Path, default=Path("var/study"), help="state folder")
    p.add_argument("--out", type=Path, default=None, help="study.json/png folder (--home)")
    p.add_argument("--port", type=int, default=8766)
    p.add_argument("--timeout", type=float, default=4 * 3600.0)
    p.add_argument("--keep", action="store_true", help="do not wipe --home first")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.no_init_student and "inherit" in args.methods:
        parser().error(
            "--no-init-student: method inherit is the teacher's initialisation; "
            "drop it from --methods"
        )
    unknown = [m for m in (*args.methods, *args.extra_alpha_methods) if m not in METHODS]
    if unknown:
        parser().error(f"--methods: unknown {', '.join(unknown)}; known: {', '.join(METHODS)}")
    return run(args)
