"""First page of the ``GET /results`` leaderboard over 100,000 eval results (PostgreSQL).

Creates a throwaway schema in the ``test`` database, migrates it to head with
Alembic, bulk-inserts jobs (teachers, no-KD student baselines, distillations
with every method, a few evaluations and failed runs) each with an eval result,
runs ANALYZE, then times, for several filter/sort combinations: the Python page
(``api.services.results.list_page``, the SQLite path and the CSV export's), the
page JSON the route serves (``page_body``: those rows through pydantic),
and the HTTP route (in-process through httpx, auth included) with its page
cache off (every page computed) and on (the same page again). Prints p50/p99
per combination, EXPLAIN ANALYZE of the main query, and drops the schema at the
end. Goal: the first page under 20 ms for a single client.

    python bench/bench_leaderboard.py [--results 100000] [--runs 200] [--limit 50]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import statistics
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench_support import throwaway_schema  # noqa: E402

from api.services import results as service  # noqa: E402
from pgd_service.db.models import EvalResult, Job  # noqa: E402
from pgd_service.db.session import make_engine  # noqa: E402

DATASETS = ("coco", "crowdhuman", "voc", "cityscapes")
DETECTORS = ("fcos", "atss", "gfl", "ddod")
DISTILL_METHODS = ("pgd", "pgd_no_gaussian", "pgd_cls_only", "fgd_box", "feature_mse", "none")
STUDENT_DEPTHS = (18, 34, 50)
T0 = datetime(2026, 1, 1, tzinfo=UTC)
BATCH = 5000

# (label, filters, sort)
CASES: tuple[tuple[str, dict[str, str], str], ...] = (
    ("dataset+detector, -ap", {"dataset": "coco", "detector": "fcos"}, "-ap"),
    (
        "dataset+detector+method, -ap",
        {"dataset": "coco", "detector": "fcos", "method": "pgd"},
        "-ap",
    ),
    (
        "dataset+detector+kind, -ap",
        {"dataset": "voc", "detector": "atss", "kind": "distill"},
        "-ap",
    ),
    ("dataset+detector, mr (asc)", {"dataset": "crowdhuman", "detector": "atss"}, "mr"),
    ("dataset+detector, -ap50", {"dataset": "coco", "detector": "gfl"}, "-ap50"),
    ("dataset, -ap", {"dataset": "coco"}, "-ap"),
    ("method, -ap", {"method": "pgd"}, "-ap"),
    ("no filter, -ap", {}, "-ap"),
    ("no filter, -created_at", {}, "-created_at"),
    # A non-admin token sees its owner's results only (the HTTP rows use its token).
    (
        "one owner's (1/50), dataset+detector, -ap",
        {"dataset": "coco", "detector": "fcos", "owner": "user7"},
        "-ap",
    ),
    ("one owner's (1/50), -ap", {"owner": "user7"}, "-ap"),
    ("a newcomer's (~0.05%), -ap", {"owner": "newcomer"}, "-ap"),
)


def _model(depth: int, width: int) -> dict[str, Any]:
    return {
        "depth": depth,
        "base_channels": width,
        "neck_channels": 256,
        "head_channels": 256,
        "stacked_convs": 4,
        "use_dcn": False,
        "pretrained": None,
        "num_classes": None,
    }


def _spec(kind: str, detector: str, dataset: str, method: str, student: dict, teacher: dict | None):
    return {
        "kind": kind,
        "detector": detector,
        "dataset": {"name": dataset, "train_split": "train", "val_split": "val"},
        "student": student,
        "teacher": teacher,
        "method": method,
        "distill": {"alpha": 0.1, "k": 30, "loss_weight": 2.0} if kind == "distill" else None,
        "schedule": {"max_iters": 90000, "batch_size": 16, "lr": 0.01, "milestones": [60000]},
        "seed": 0,
        "device": "cuda",
    }


def _metrics(rng: random.Random, dataset: str, base: float) -> dict[str, float | None]:
    ap = max(0.0, min(100.0, rng.gauss(base, 2.0)))
    crowd = dataset == "crowdhuman"
    return {
        "ap": round(ap, 3),
        "ap50": round(min(100.0, ap + rng.uniform(15, 25)), 3),
        "ap75": round(max(0.0, ap + rng.uniform(-5, 5)), 3),
        "aps": round(ap * rng.uniform(0.4, 0.6), 3),
        "apm": round(ap * rng.uniform(0.9, 1.1), 3),
        "apl": round(ap * rng.uniform(1.1, 1.4), 3),
        "mr": round(rng.uniform(0.4, 0.6), 4) if crowd else None,
        "ji": round(rng.uniform(0.7, 0.85), 4) if crowd else None,
    }


def generate(n: int, seed: int = 0) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    """(job row, eval result row) pairs: per (dataset, detector), ~2% teachers, ~20% student
    baselines (~8% of trains failed), ~74% distillations, ~4% evaluations."""
    rng = random.Random(seed)
    teachers: dict[tuple[str, str], list[str]] = {}
    pairs = [(d, s) for d in DETECTORS for s in DATASETS]
    for i in range(n):
        detector, dataset = pairs[i % len(pairs)] if i < len(pairs) * 2 else rng.choice(pairs)
        created = T0 + timedelta(seconds=i * 300 + rng.randint(0, 299))
        finished: datetime | None = created + timedelta(hours=rng.uniform(2, 30))
        state, teacher_job_id, teacher = "succeeded", None, None
        roll = rng.random() if i >= len(pairs) * 2 else (0.0 if i < len(pairs) else 0.1)
        job_id = str(uuid.uuid4())
        if roll < 0.02:
            kind, method = "train", "none"
            student = _model(101, 64)
            base = 44.0
            teachers.setdefault((detector, dataset), []).append(job_id)
        elif roll < 0.22:
            kind, method = "train", "none"
            student = _model(rng.choice(STUDENT_DEPTHS), rng.choice((32, 64)))
            base = 30.0 + student["depth"] / 10
            if rng.random() < 0.08:
                state = "failed"
        elif roll < 0.96 and teachers.get((detector, dataset)):
            kind, method = "distill", rng.choice(DISTILL_METHODS)
            student = _model(rng.choice(STUDENT_DEPTHS), rng.choice((32, 64)))
            teacher = _model(101, 64)
            teacher_job_id = rng.choice(teachers[(detector, dataset)])
            base = 33.0 + student["depth"] / 10
        else:
            kind, method = "evaluate", "none"
            student = _model(rng.choice(STUDENT_DEPTHS), 64)
            base = 32.0
        if state != "succeeded":
            finished = None if rng.random() < 0.5 else finished
        spec = _spec(kind, detector, dataset, method, student, teacher)
        job = {
            "id": job_id,
            "kind": kind,
            "detector": detector,
            "dataset": dataset,
            "method": method,
            "spec": spec,
            "spec_hash": hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest(),
            "state": state,
            "attempt": 1,
            "max_attempts": 3,
            "progress": 1.0,
            "owner": "newcomer" if rng.random() < 0.0005 else f"user{rng.randint(0, 49)}",
            "cancel_requested": False,
            "teacher_job_id": teacher_job_id,
            "created_at": created,
            "updated_at": finished or created,
            "started_at": created,
            "finished_at": finished,
        }
        values = _metrics(rng, dataset, base)
        result = {
            "job_id": job_id,
            "owner": job["owner"],
            "dataset": dataset,
            "detector": detector,
            "method": method,
            "metrics": {"bbox_mAP": values["ap"]},
            **values,
            "created_at": (finished or created) + timedelta(minutes=5),
        }
        yield job, result


def populate(engine: sa.Engine, n: int) -> dict[str, int]:
    """Insert ``n`` jobs with their results in batches; ANALYZE; counts per kind."""
    counts: dict[str, int] = {}
    jobs: list[dict[str, Any]] = []
    results: list[dict[str, Any]] = []

    def flush(conn: sa.Connection) -> None:
        if jobs:
            conn.execute(sa.insert(Job.__table__), jobs)
            conn.execute(sa.insert(EvalResult.__table__), results)
            jobs.clear()
            results.clear()

    with engine.begin() as conn:
        for job, result in generate(n):
            counts[job["kind"]] = counts.get(job["kind"], 0) + 1
            jobs.append(job)
            results.append(result)
            if len(jobs) >= BATCH:
                flush(conn)
        flush(conn)
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(sa.text("ANALYZE jobs"))
        conn.execute(sa.text("ANALYZE eval_results"))
    return counts


def percentiles(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]
    return statistics.median(ordered), p99


def time_runs(fn: Callable[[], object], runs: int, warmup: int = 10) -> tuple[float, float]:
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - start) * 1000)
    return percentiles(samples)


def explain(engine: sa.Engine, filters: service.ResultFilters, sort: str, limit: int) -> str:
    statement = service.page_statement(engine.dialect.name, filters, sort).params(
        service.page_parameters(filters, limit=limit + 1)
    )
    sql = statement.compile(dialect=engine.dialect, compile_kwargs={"literal_binds": True})
    with engine.connect() as conn:
        rows = conn.execute(sa.text(f"EXPLAIN (ANALYZE, BUFFERS) {sql}"))
        return "\n".join(row[0] for row in rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--limit", type=int, default=50)
    parser.add_argument("--no-http", action="store_true", help="skip the in-process HTTP timings")
    args = parser.parse_args()

    from fastapi.testclient import TestClient

    from api.auth import create_token
    from api.main import create_app
    from pgd_service.settings import Settings

    with throwaway_schema("pgd_bench") as url:
        engine = make_engine(url)
        started = time.perf_counter()
        counts = populate(engine, args.results)
        print(
            f"inserted {args.results:,} jobs + eval results in "
            f"{time.perf_counter() - started:.1f} s: "
            + ", ".join(f"{k} {v:,}" for k, v in sorted(counts.items()))
        )
        app = create_app(Settings(database_url=url, run_maintenance=False))
        factory = app.state.session_factory
        with factory() as session:
            token = create_token(db_session=session, owner="bench", is_admin=True)
            session.commit()
        headers = {"Authorization": f"Bearer {token}"}
        owner_headers: dict[str, dict[str, str]] = {}
        with factory() as session:
            for _, values, _ in CASES:
                if "owner" in values and values["owner"] not in owner_headers:
                    owned = create_token(db_session=session, owner=values["owner"])
                    owner_headers[values["owner"]] = {"Authorization": f"Bearer {owned}"}
            session.commit()

        cache = app.state.results_cache

        print(f"\nfirst page (limit {args.limit}), {args.runs} runs each, times in ms")
        print(
            "| filters, sort | rows | distilled | with baseline | service p50 | service p99 "
            "| page JSON p50 | page JSON p99 | HTTP p50 | HTTP p99 | HTTP cached p50 "
            "| HTTP cached p99 |"
        )
        print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        with TestClient(app) as client:
            for label, values, sort in CASES:
                filters = service.ResultFilters(**values)

                def call(filters: service.ResultFilters = filters, sort: str = sort) -> list:
                    with factory() as session:
                        rows, _ = service.list_page(
                            db_session=session, filters=filters, sort=sort, limit=args.limit
                        )
                    return rows

                rows = call()
                distilled = sum(1 for r in rows if r["teacher_job_id"] is not None)
                with_baseline = sum(1 for r in rows if r["baseline_job_id"] is not None)
                s50, s99 = time_runs(call, args.runs)

                def body(filters: service.ResultFilters = filters, sort: str = sort) -> bytes:
                    with factory() as session:
                        return service.page_body(
                            db_session=session, filters=filters, sort=sort, limit=args.limit
                        )

                j50, j99 = time_runs(body, args.runs)
                h50 = h99 = c50 = c99 = float("nan")
                if not args.no_http:
                    params = {k: v for k, v in values.items() if k != "owner"}
                    params |= {"sort": sort, "limit": args.limit}
                    who = owner_headers[values["owner"]] if "owner" in values else headers

                    def get(params: dict = params, who: dict = who) -> None:
                        response = client.get("/results", params=params, headers=who)
                        assert response.status_code == 200, response.text

                    cache.entries = 0  # every page computed
                    h50, h99 = time_runs(get, args.runs)
                    cache.entries = 256  # the default: the same page again is cached
                    c50, c99 = time_runs(get, args.runs)
                print(
                    f"| {label} | {len(rows)} | {distilled} | {with_baseline} | {s50:.2f} "
                    f"| {s99:.2f} | {j50:.2f} | {j99:.2f} | {h50:.2f} | {h99:.2f} "
                    f"| {c50:.2f} | {c99:.2f} |"
                )
        for label, values, sort in (CASES[1], CASES[3], CASES[-1]):
            print(f"\nEXPLAIN ANALYZE, {label}:")
            print(explain(engine, service.ResultFilters(**values), sort, args.limit))
        app.state.engine.dispose()
        engine.dispose()


if __name__ == "__main__":
    main()
