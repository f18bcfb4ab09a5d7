"""pgd against MLflow's tracking server: the leaderboard's first page by AP, and run creation.

Both sides hold the same runs. pgd: a throwaway PostgreSQL schema migrated to
head, filled by ``bench_leaderboard.populate`` (jobs, each with an eval result).
MLflow: its own database on the same PostgreSQL server, one experiment, one run
per pgd result, loaded from pgd's rows through MLflow's store API
(``bench/mlflow_load.py``: ``create_run``, ``log_batch``, ``update_run_info``)
with the same params (kind, detector, dataset, method, seed, student/teacher
architecture, schedule, owner), the same metrics (ap, ap50, ap75, aps, apm,
apl, and mr/ji where pgd has them) and pgd's job id as a tag. Job ids come
from a seeded RNG (``SeededUuid``), so a database kept with ``--mlflow-db`` holds
the very runs a later invocation generates for pgd: loading MLflow takes far
longer than the measurements (tens of runs a second on 2 cores).

MLflow runs in a venv of its own (``--mlflow-venv``, made on first use with
the pinned versions below; never the project's), served by ``mlflow server``
(its default server, uvicorn) with as many worker processes as the pgd API's
uvicorn (``--workers``). pgd runs twice, with its leaderboard page cache (the
default) and without it (``PGD_RESULTS_CACHE_ENTRIES=0``: every page computed,
as MLflow computes every search). Broker: Redis DB 14 (flushed before and
after); no Celery worker runs, so created jobs stay queued.

Measured, side by side, with 1 and 50 concurrent clients (asyncio tasks sharing
one httpx.AsyncClient per side and run, the same client code for both sides):

- the first page (50 rows) sorted by AP, descending: pgd ``GET /results?sort=-ap``
  against MLflow ``POST /api/2.0/mlflow/runs/search`` with ``order_by
  ["metrics.ap DESC"]``, unfiltered and filtered to dataset coco + detector fcos;
- run creation: pgd ``POST /jobs`` (the ``tiny-fcos-student`` preset, a unique
  Idempotency-Key) against MLflow ``runs/create`` then ``runs/log-batch`` of the
  same params (what ``MlflowClient.create_run`` + ``log_params`` send), into an
  experiment of its own (the leaderboard's stays as loaded). All page cases run
  before any creation.

Before timing, both first pages must hold the same 50 AP values in the same
order (asserted). Prints a markdown table and writes the results as JSON.

    python bench/bench_vs_mlflow.py [--runs 100000] [--duration 10] [--json out.json]
        [--mlflow-db NAME]   # keep MLflow's loaded database for the next run (reused if present)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from contextlib import ExitStack, contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"

MLFLOW_VERSION = "3.17.2"
# Installed next to MLflow: its PostgreSQL driver, and the same C HTTP parser and
# event loop as the project's uvicorn uses (so both servers parse HTTP alike).
MLFLOW_EXTRAS = ("psycopg2-binary==2.9.13", "httptools==0.9.0", "uvloop==0.23.0")
DEFAULT_VENV = Path(tempfile.gettempdir()) / "pgd-bench-mlflow-venv"
PG_HOST = "postgres@127.0.0.1:5432"
REDIS_URL = "redis://127.0.0.1:6379/14"
EXPERIMENT = "pgd-bench"
RUNS_TAG = "pgd.bench.runs"  # set by mlflow_load.py once every run is in
PAGE = 50
TIMEOUT = 120.0  # seconds, any single request
METRIC_KEYS = ("ap", "ap50", "ap75", "aps", "apm", "apl", "mr", "ji")
MLFLOW_STATUS = {"succeeded": "FINISHED", "failed": "FAILED", "cancelled": "KILLED"}

# (label, pgd query parameters, MLflow filter string)
PAGES: tuple[tuple[str, dict[str, str], str], ...] = (
    ("page: all runs, AP desc", {}, ""),
    (
        "page: coco+fcos, AP desc",
        {"dataset": "coco", "detector": "fcos"},
        "params.dataset = 'coco' AND params.detector = 'fcos'",
    ),
)


# --- pure helpers (tested in tests/test_bench_vs_mlflow.py) -------------------------------


def run_params(spec: dict[str, Any], owner: str) -> dict[str, str]:
    """The MLflow params of a pgd run: the spec's identifying fields, as strings."""
    student = spec.get("student") or {}
    teacher = spec.get("teacher") or {}
    schedule = spec.get("schedule") or {}
    distill = spec.get("distill") or {}
    values = {
        "kind": spec.get("kind"),
        "detector": spec.get("detector"),
        "dataset": (spec.get("dataset") or {}).get("name"),
        "method": spec.get("method"),
        "seed": spec.get("seed"),
        "student_depth": student.get("depth"),
        "student_width": student.get("base_channels"),
        "teacher_depth": teacher.get("depth"),
        "alpha": distill.get("alpha"),
        "max_iters": schedule.get("max_iters"),
        "lr": schedule.get("lr"),
        "owner": owner,
    }
    return {key: str(value) for key, value in values.items() if value is not None}


def mlflow_run(job: dict[str, Any], result: dict[str, Any]) -> dict[str, Any]:
    """One line of ``mlflow_load.py``'s input from a pgd job and its eval result."""
    start = _ms(job["created_at"])
    end = _ms(job["finished_at"] or job["created_at"])
    return {
        "name": f"{job['kind']}-{job['id'][:8]}",
        "status": MLFLOW_STATUS.get(job["state"], "FINISHED"),
        "start_time": start,
        "end_time": end,
        "params": run_params(job["spec"], job["owner"]),
        "metrics": {k: float(result[k]) for k in METRIC_KEYS if result.get(k) is not None},
        "tags": {"mlflow.user": job["owner"], "pgd.job_id": job["id"]},
    }


def _ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


def summarise(latencies_s: list[float], elapsed_s: float, errors: int) -> dict[str, float]:
    """Operations per second and p50/p95 latency in ms of one timed run."""
    ordered = sorted(latencies_s)
    if not ordered:
        return {"ops": 0, "ops_per_s": 0.0, "p50_ms": float("nan"), "p95_ms": float("nan"),
                "errors": errors}  # fmt: skip
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return {
        "ops": len(ordered),
        "ops_per_s": len(ordered) / elapsed_s,
        "p50_ms": statistics.median(ordered) * 1000,
        "p95_ms": p95 * 1000,
        "errors": errors,
    }


def pgd_page_aps(body: dict[str, Any]) -> list[tuple[float, str]]:
    return [(round(float(row["ap"]), 3), row["job_id"]) for row in body["items"]]


def mlflow_page_aps(body: dict[str, Any]) -> list[tuple[float, str | None]]:
    out = []
    for run in body.get("runs", []):
        data = run.get("data", {})
        metrics = {m["key"]: m["value"] for m in data.get("metrics", [])}
        tags = {t["key"]: t["value"] for t in data.get("tags", [])}
        out.append((round(float(metrics["ap"]), 3), tags.get("pgd.job_id")))
    return out


class SeededUuid:
    """Stands in for the ``uuid`` module inside ``bench_leaderboard`` while it generates
    rows: job ids from a seeded RNG (its metrics are seeded already), so every run of
    this script, and an MLflow database kept from an earlier one, hold the same ids."""

    def __init__(self, seed: int) -> None:
        self._rng = random.Random(seed)

    def uuid4(self) -> uuid.UUID:
        return uuid.UUID(int=self._rng.getrandbits(128), version=4)


@contextmanager
def seeded_job_ids(module: Any, seed: int = 0) -> Iterator[None]:
    saved = module.uuid
    module.uuid = SeededUuid(seed)
    try:
        yield
    finally:
        module.uuid = saved


# --- set-up -------------------------------------------------------------------------------


def ensure_mlflow_venv(venv: Path) -> Path:
    """The venv's python, with the pinned MLflow installed (made on first use)."""
    python = venv / "bin" / "python"
    probe = [str(python), "-c", "import mlflow, uvloop, httptools; print(mlflow.__version__)"]
    if python.exists():
        found = subprocess.run(probe, capture_output=True, text=True, cwd=tempfile.gettempdir())
        if found.returncode == 0 and found.stdout.strip() == MLFLOW_VERSION:
            return python
    base = shutil.which("python3.11") or sys.executable
    print(f"making the MLflow venv {venv} (mlflow=={MLFLOW_VERSION}), a few minutes", flush=True)
    subprocess.run([base, "-m", "venv", str(venv)], check=True)
    subprocess.run(
        [str(python), "-m", "pip", "install", "-q", f"mlflow=={MLFLOW_VERSION}", *MLFLOW_EXTRAS],
        check=True,
    )
    return python


@contextmanager
def mlflow_database(name: str | None) -> Iterator[tuple[str, bool]]:
    """(MLflow's backend URI, whether it already existed). A database ``name`` is kept
    (and reused when present); without one, a fresh database is dropped afterwards."""
    import sqlalchemy as sa

    admin = sa.create_engine(
        f"postgresql+psycopg://{PG_HOST}/postgres", isolation_level="AUTOCOMMIT"
    )
    keep = name is not None
    name = name or f"pgd_bench_mlflow_{uuid.uuid4().hex[:10]}"
    with admin.connect() as conn:
        existed = bool(
            conn.execute(
                sa.text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": name}
            ).scalar()
        )
        if not existed:
            conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    try:
        # psycopg2: SQLAlchemy 2.1 maps a bare postgresql:// to psycopg 3.
        yield f"postgresql+psycopg2://{PG_HOST}/{name}", existed
    finally:
        if not keep:
            with admin.connect() as conn:
                conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def export_runs(pgd_url: str, path: Path) -> int:
    """Write pgd's jobs with their eval results as ``mlflow_load.py`` input; the count."""
    import sqlalchemy as sa

    from pgd_service.db.models import EvalResult, Job
    from pgd_service.db.session import make_engine

    engine = make_engine(pgd_url)
    job_cols = [Job.id, Job.kind, Job.state, Job.owner, Job.spec, Job.created_at, Job.finished_at]
    result_cols = [getattr(EvalResult, k) for k in METRIC_KEYS]
    statement = (
        sa.select(*job_cols, *result_cols)
        .join(EvalResult, EvalResult.job_id == Job.id)
        .order_by(Job.created_at)
    )
    count = 0
    try:
        with engine.connect() as conn, path.open("w", encoding="utf-8") as out:
            for row in conn.execute(statement).mappings():
                job = {k: row[k] for k in ("id", "kind", "state", "owner", "spec")}
                job["created_at"], job["finished_at"] = row["created_at"], row["finished_at"]
                out.write(json.dumps(mlflow_run(job, dict(row))) + "\n")
                count += 1
    finally:
        engine.dispose()
    return count


def load_mlflow(python: Path, uri: str, artifacts: str, runs_file: Path, procs: int) -> float:
    started = time.perf_counter()
    command = [str(python), str(BENCH / "mlflow_load.py"), "--db-uri", uri]
    command += ["--artifact-root", artifacts, "--input", str(runs_file), "--procs", str(procs)]
    subprocess.run(command, check=True, cwd=tempfile.gettempdir())
    return time.perf_counter() - started


@contextmanager
def mlflow_server(venv: Path, uri: str, artifacts: str, workers: int, log: Path) -> Iterator[str]:
    from bench_http import _free_port

    port = _free_port()
    command = [str(venv / "bin" / "mlflow"), "server", "--backend-store-uri", uri]
    command += ["--default-artifact-root", artifacts, "--host", "127.0.0.1"]
    command += ["--port", str(port), "--workers", str(workers)]
    # As the pgd API is served here: no access log.
    command += ["--uvicorn-opts", "--no-access-log --log-level warning"]
    # The GenAI job runner (a Huey supervisor and 7 consumer processes) is no part of
    # run tracking; left on, it polled for ~0.6 core-seconds a second while idle here.
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    with log.open("w") as sink:
        # Its own process group: the server's worker processes go down with it.
        process = subprocess.Popen(
            command,
            stdout=sink,
            stderr=subprocess.STDOUT,
            cwd=tempfile.gettempdir(),
            env=env,
            start_new_session=True,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                if httpx.get(base + "/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"mlflow server did not start:\n{log.read_text()[-3000:]}")
            time.sleep(0.5)
        yield base
    finally:
        try:
            os.killpg(process.pid, 15)
            process.wait(timeout=20)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            os.killpg(process.pid, 9)
            process.wait()


# --- load generation ------------------------------------------------------------------------

Op = Callable[[httpx.AsyncClient], Awaitable[None]]


async def drive(op: Op, clients: int, duration: float, warmup: float) -> dict[str, Any]:
    """``clients`` tasks repeating ``op`` for ``warmup`` seconds (not recorded), then for
    ``duration`` seconds; an op that raises counts as an error."""
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(limits=limits, timeout=TIMEOUT) as client:
        latencies: list[float] = []
        errors = 0
        first_error: list[str] = []

        async def worker(until: float, record: bool) -> None:
            nonlocal errors
            while time.perf_counter() < until:
                start = time.perf_counter()
                try:
                    await op(client)
                except Exception as exc:  # noqa: BLE001 - counted and reported
                    errors += record
                    if record and not first_error:
                        first_error.append(f"{type(exc).__name__}: {exc}"[:300])
                    continue
                if record:
                    latencies.append(time.perf_counter() - start)

        end_warmup = time.perf_counter() + warmup
        await asyncio.gather(*(worker(end_warmup, False) for _ in range(clients)))
        started = time.perf_counter()
        await asyncio.gather(*(worker(started + duration, True) for _ in range(clients)))
        summary = summarise(latencies, time.perf_counter() - started, errors)
        return {**summary, "first_error": first_error[0]} if first_error else summary


def pgd_page_op(base: str, params: dict[str, str], auth: dict[str, str]) -> Op:
    url = base + "/results"
    query = {**params, "sort": "-ap", "limit": str(PAGE)}

    async def op(client: httpx.AsyncClient) -> None:
        response = await client.get(url, params=query, headers=auth)
        response.raise_for_status()

    return op


def mlflow_search_body(experiment_id: str, filter_string: str) -> dict[str, Any]:
    return {
        "experiment_ids": [experiment_id],
        "filter": filter_string,
        "order_by": ["metrics.ap DESC"],
        "max_results": PAGE,
    }


def mlflow_page_op(base: str, experiment_id: str, filter_string: str) -> Op:
    url = base + "/api/2.0/mlflow/runs/search"
    body = mlflow_search_body(experiment_id, filter_string)

    async def op(client: httpx.AsyncClient) -> None:
        response = await client.post(url, json=body)
        response.raise_for_status()

    return op


def pgd_create_op(base: str, spec: dict[str, Any], auth: dict[str, str]) -> Op:
    url = base + "/jobs"

    async def op(client: httpx.AsyncClient) -> None:
        headers = {**auth, "Idempotency-Key": uuid.uuid4().hex}
        response = await client.post(url, json=spec, headers=headers)
        if response.status_code != 202:
            raise RuntimeError(f"POST /jobs: {response.status_code} {response.text[:200]}")

    return op


def mlflow_create_op(base: str, experiment_id: str, params: dict[str, str]) -> Op:
    create_url = base + "/api/2.0/mlflow/runs/create"
    batch_url = base + "/api/2.0/mlflow/runs/log-batch"
    param_list = [{"key": k, "value": v} for k, v in params.items()]

    async def op(client: httpx.AsyncClient) -> None:
        created = await client.post(
            create_url,
            json={
                "experiment_id": experiment_id,
                "start_time": int(time.time() * 1000),
                "tags": [{"key": "mlflow.user", "value": params.get("owner", "bench")}],
            },
        )
        created.raise_for_status()
        run_id = created.json()["run"]["info"]["run_id"]
        logged = await client.post(batch_url, json={"run_id": run_id, "params": param_list})
        logged.raise_for_status()

    return op


# --- main -------------------------------------------------------------------------------------


def check_pages(
    pgd: str, mlflow: str, experiment_id: str, auth: dict[str, str]
) -> list[dict[str, Any]]:
    """Both first pages of every case: the same AP values in the same order (asserted)."""
    checks = []
    for label, params, filter_string in PAGES:
        mine = httpx.get(
            pgd + "/results",
            params={**params, "sort": "-ap", "limit": PAGE},
            headers=auth,
            timeout=TIMEOUT,
        )
        mine.raise_for_status()
        theirs = httpx.post(
            mlflow + "/api/2.0/mlflow/runs/search",
            json=mlflow_search_body(experiment_id, filter_string),
            timeout=TIMEOUT,
        )
        theirs.raise_for_status()
        ours, others = pgd_page_aps(mine.json()), mlflow_page_aps(theirs.json())
        assert ours, f"{label}: pgd returned no rows"
        assert [ap for ap, _ in ours] == [ap for ap, _ in others], (
            f"{label}: the pages differ\npgd    {[ap for ap, _ in ours]}\n"
            f"mlflow {[ap for ap, _ in others]}"
        )
        same_ids = sum(a == b for (_, a), (_, b) in zip(ours, others, strict=True))
        checks.append(
            {"case": label, "rows": len(ours), "same_ap_order": True, "same_job_ids": same_ids}
        )
        print(f"check {label}: {len(ours)} AP values identical; {same_ids} same job ids")
    return checks


def experiment_of(mlflow: str) -> tuple[str, int | None]:
    response = httpx.get(
        mlflow + "/api/2.0/mlflow/experiments/get-by-name",
        params={"experiment_name": EXPERIMENT},
        timeout=TIMEOUT,
    )
    response.raise_for_status()
    experiment = response.json()["experiment"]
    tags = {t["key"]: t["value"] for t in experiment.get("tags", [])}
    runs = tags.get(RUNS_TAG)
    return experiment["experiment_id"], int(runs) if runs is not None else None


def experiment_for_creation(mlflow: str) -> str:
    name = f"{EXPERIMENT}-create"
    found = httpx.get(
        mlflow + "/api/2.0/mlflow/experiments/get-by-name",
        params={"experiment_name": name},
        timeout=TIMEOUT,
    )
    if found.status_code == 200:
        return found.json()["experiment"]["experiment_id"]
    created = httpx.post(
        mlflow + "/api/2.0/mlflow/experiments/create", json={"name": name}, timeout=TIMEOUT
    )
    created.raise_for_status()
    return created.json()["experiment_id"]


def _load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n".join(__doc__.splitlines()[1:]),
    )  # fmt: skip
    parser.add_argument("--runs", type=int, default=100_000, help="evaluated runs on each side")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per timed run")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds before each")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 50])
    parser.add_argument("--workers", type=int, default=1, help="server processes, each side")
    parser.add_argument("--load-procs", type=int, default=2, help="MLflow loader processes")
    parser.add_argument("--mlflow-venv", type=Path, default=DEFAULT_VENV)
    parser.add_argument(
        "--mlflow-db",
        default=None,
        help="keep MLflow's database under this name, and reuse it when it already holds "
        "--runs runs (skips the load); default: a fresh database, dropped at the end",
    )
    parser.add_argument("--only", default="", help="run only the cases containing this text")
    parser.add_argument(
        "--json", type=Path, default=ROOT / "var" / "bench_vs_mlflow.json", help="results file"
    )
    args = parser.parse_args()

    sys.path.insert(0, str(ROOT))
    sys.path.insert(0, str(BENCH))
    import bench_leaderboard
    from bench_http import served
    from bench_support import flushed_redis, throwaway_schema

    from api.auth import store_token
    from pgd_core.data.synthetic_shapes import make_coco_shapes
    from pgd_core.presets import get_preset
    from pgd_service.db.session import make_engine

    python = ensure_mlflow_venv(args.mlflow_venv)
    report: dict[str, Any] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "load_average_start": _load_average(),
        "mlflow_version": MLFLOW_VERSION,
        "mlflow_extras": list(MLFLOW_EXTRAS),
        "runs": args.runs,
        "workers": args.workers,
        "duration_s": args.duration,
        "warmup_s": args.warmup,
    }
    with ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="pgd-vs-mlflow-")))
        stack.enter_context(flushed_redis(REDIS_URL))
        data_root = tmp / "data"
        make_coco_shapes(data_root, "shapes", num_train=2, num_val=1, max_objects=2)

        pgd_url = stack.enter_context(throwaway_schema("pgd_bench_mlflow"))
        started = time.perf_counter()
        engine = make_engine(pgd_url)
        with seeded_job_ids(bench_leaderboard):
            bench_leaderboard.populate(engine, args.runs)
        engine.dispose()
        report["pgd_load_s"] = time.perf_counter() - started
        print(f"pgd: {args.runs:,} jobs + results inserted in {report['pgd_load_s']:.1f} s")
        auth = {"Authorization": f"Bearer {store_token(pgd_url, owner='bench', is_admin=True)}"}

        uri, existed = stack.enter_context(mlflow_database(args.mlflow_db))
        artifacts = (tmp / "mlartifacts").as_uri()
        if not existed:
            runs_file = tmp / "runs.jsonl"
            exported = export_runs(pgd_url, runs_file)
            report["mlflow_load_s"] = load_mlflow(
                python, uri, artifacts, runs_file, args.load_procs
            )
            print(f"mlflow: {exported:,} runs loaded in {report['mlflow_load_s']:.1f} s")
        else:
            report["mlflow_load_s"] = None
            print(f"mlflow: reusing database {args.mlflow_db}")

        mlflow = stack.enter_context(
            mlflow_server(args.mlflow_venv, uri, artifacts, args.workers, tmp / "mlflow.log")
        )
        experiment_id, loaded = experiment_of(mlflow)
        if loaded != args.runs:
            sys.exit(f"database {args.mlflow_db} holds {loaded} runs (an unfinished load?), "
                     f"not --runs {args.runs}: drop it or pick another name")  # fmt: skip

        env = {
            "PGD_DATABASE_URL": pgd_url,
            "PGD_BROKER_URL": REDIS_URL,
            "PGD_DATA_ROOT": str(data_root),
            "PGD_RUN_MAINTENANCE": "false",
        }
        pgd = stack.enter_context(served("api.main:app", env, "/healthz"))
        pgd_uncached = stack.enter_context(
            served("api.main:app", {**env, "PGD_RESULTS_CACHE_ENTRIES": "0"}, "/healthz")
        )
        report["checks"] = check_pages(pgd, mlflow, experiment_id, auth)

        # New runs go to an experiment of their own: the leaderboard's stays as loaded.
        create_experiment_id = experiment_for_creation(mlflow)
        spec = get_preset("tiny-fcos-student").model_dump(mode="json")
        params = run_params(spec, "bench")
        report["create_params"] = params
        cases: list[tuple[str, list[tuple[str, Op]]]] = [
            (
                label,
                [
                    ("pgd", pgd_page_op(pgd, query, auth)),
                    ("pgd, cache off", pgd_page_op(pgd_uncached, query, auth)),
                    ("mlflow", mlflow_page_op(mlflow, experiment_id, filter_string)),
                ],
            )
            for label, query, filter_string in PAGES
        ]
        cases.append(
            (
                "create run",
                [
                    ("pgd", pgd_create_op(pgd, spec, auth)),
                    ("mlflow", mlflow_create_op(mlflow, create_experiment_id, params)),
                ],
            )
        )
        rows = []
        # Every page case before any creation: new jobs and runs never touch the pages.
        for label, sides in cases:
            for clients in args.clients:
                if args.only not in label:
                    continue
                measured = {}
                for side, op in sides:
                    measured[side] = asyncio.run(drive(op, clients, args.duration, args.warmup))
                    print(f"{label}, {clients} clients, {side}: {measured[side]}", flush=True)
                rows.append({"case": label, "clients": clients, **measured})
        report["rows"] = rows
        report["load_average_end"] = _load_average()

    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\n{args.runs:,} runs each side; {args.duration:g} s per timed run; "
          f"{args.workers} server process(es) each; results in {args.json}")  # fmt: skip
    print(markdown(rows))


def markdown(rows: list[dict[str, Any]]) -> str:
    """The table: per case and client count, every side, and pgd against MLflow."""
    lines = [
        "| case | clients | side | ops/s | p50 (ms) | p95 (ms) | errors | ops/s vs MLflow "
        "| MLflow p50 / p50 |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        other = row["mlflow"]
        for side in [k for k in row if k not in ("case", "clients")]:
            m = row[side]
            ratio = m["ops_per_s"] / other["ops_per_s"] if other["ops_per_s"] else float("nan")
            latency = other["p50_ms"] / m["p50_ms"] if m["p50_ms"] else float("nan")
            lines.append(
                f"| {row['case']} | {row['clients']} | {side} | {m['ops_per_s']:.1f} "
                f"| {m['p50_ms']:.2f} | {m['p95_ms']:.2f} | {m['errors']} "
                + ("| - | - |" if side == "mlflow" else f"| {ratio:.2f}x | {latency:.2f}x |")
            )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
