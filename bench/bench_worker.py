"""Worker benchmarks: queue latency, throughput of tiny jobs, cost of the database callbacks.

Three sub-commands, each cleaning up after itself (throwaway PostgreSQL schema
dropped, Redis database flushed, worker processes stopped, temporary files removed):

``latency``
    For each broker (Redis ``redis://127.0.0.1:6379/13`` with a throwaway
    PostgreSQL schema, and the embedded ``sqla+sqlite:///<tmp>/broker.db`` with a
    SQLite database) one Celery worker (``--concurrency 1``) is started, the API
    is served over real HTTP (uvicorn in a thread of this process), and ``--jobs``
    tiny jobs (``tiny-fcos-student``) are POSTed one after another, each once the
    previous one has finished. Per job: POST -> claim (``jobs.started_at``,
    written by the worker) and POST -> first training iteration (the first time
    a 20 ms poll sees the metric point of step 1; the worker runs with
    ``PGD_METRICS_INTERVAL=1`` and ``PGD_HEARTBEAT_INTERVAL_S=0.05``).

``throughput``
    ``--jobs`` (default 200) cheap tiny jobs (2 iterations, checkpoint at 2,
    evaluation on the 8-image val split) POSTed at once to Redis + PostgreSQL,
    run by ``--workers`` Celery workers of ``--concurrency`` processes each
    (default one worker, concurrency 2). Wall time from the first POST to the
    last ``finished_at``, jobs/min, and checks that every job succeeded exactly
    once (first attempt, number 0; never lost; one eval_results row; one task received).

``overhead``
    The tiny preset with a longer schedule run in this process with
    ``run_spec(callbacks=None)`` and with a :class:`worker.reporting.Reporter`
    writing into PostgreSQL (a claimed running job row per run), heartbeat 5 s
    (the default) and 0.5 s, alternating order, several repetitions. The time
    per training iteration is taken by an extra mmengine hook (gaps between
    consecutive ``after_train_iter`` calls, the first ``--skip`` iterations
    left out; evaluation and the final checkpoint come after the last
    iteration and are not counted). Goal: ratio <= 1.02.

    python bench/bench_worker.py latency [--jobs 5]
    python bench/bench_worker.py throughput [--jobs 200] [--workers 1 --concurrency 2]
    python bench/bench_worker.py overhead [--reps 4] [--iters 60]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench_support import flushed_redis, throwaway_schema  # noqa: E402

REDIS_URL = "redis://127.0.0.1:6379/13"
TERMINAL = ("succeeded", "failed", "cancelled")


# ----------------------------------------------------------------- helpers


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def tiny_spec(**schedule: Any) -> dict[str, Any]:
    """The tiny FCOS student, schedule fields replaced, validated; as a JSON body."""
    from pgd_core.presets import get_preset
    from pgd_core.spec import RunSpec

    base = get_preset("tiny-fcos-student")
    spec = base.model_copy(update={"schedule": base.schedule.model_copy(update=schedule)})
    return RunSpec.model_validate(spec.model_dump()).model_dump(mode="json")


def cheap_schedule() -> dict[str, Any]:
    return {"max_iters": 2, "checkpoint_interval": 2, "milestones": (), "warmup_iters": 1}


def make_settings(tmp: Path, database_url: str, broker_url: str, **extra: Any):
    from pgd_service.settings import Settings

    settings = Settings(
        database_url=database_url,
        broker_url=broker_url,
        data_root=tmp / "data",
        work_root=tmp / "work",
        weights_root=tmp / "weights",
        run_maintenance=False,
        **extra,
    )
    for folder in (settings.data_root, settings.work_root, settings.weights_root):
        folder.mkdir(parents=True, exist_ok=True)
    return settings


def prepare(settings) -> None:
    """Migrate the database and register the synthetic ``shapes`` dataset."""
    from api.embedded import migrate
    from pgd_core.data.synthetic_shapes import make_coco_shapes

    migrate(settings.database_url)
    make_coco_shapes(settings.data_root, "shapes")


class Workers:
    """``count`` Celery worker processes (own process groups), stopped on exit."""

    def __init__(self, settings, tmp: Path, *, count: int = 1, concurrency: int = 1) -> None:
        from api.embedded import settings_env, worker_command

        self.logs: list[Path] = []
        self.processes: list[subprocess.Popen[bytes]] = []
        env = settings_env(settings)
        for index in range(count):
            path = tmp / f"worker{index}.log"
            self.logs.append(path)
            name = f"bench{index}-{os.getpid()}@{socket.gethostname()}"
            with open(path, "ab") as out:
                self.processes.append(
                    subprocess.Popen(
                        worker_command("gpu,cpu", concurrency, name),
                        env=env,
                        cwd=ROOT,
                        stdout=out,
                        stderr=subprocess.STDOUT,
                        start_new_session=True,
                    )
                )

    def wait_ready(self, timeout: float = 180.0) -> float:
        """Block until every worker logged ``ready.``; returns the seconds waited."""
        start = time.monotonic()
        while True:
            if all(" ready." in path.read_text(errors="replace") for path in self.logs):
                return time.monotonic() - start
            for process, path in zip(self.processes, self.logs, strict=True):
                if process.poll() is not None:
                    raise RuntimeError(f"worker exited early; see {path}:\n{path.read_text()}")
            if time.monotonic() - start > timeout:
                raise TimeoutError(f"workers not ready after {timeout:.0f} s: {self.logs}")
            time.sleep(0.1)

    def text(self) -> str:
        return "".join(path.read_text(errors="replace") for path in self.logs)

    def stop(self) -> None:
        from api.embedded import stop_worker

        for process in self.processes:
            stop_worker(process)
        log(f"stopped {len(self.processes)} worker process group(s)")


@contextlib.contextmanager
def served(settings) -> Iterator[tuple[str, dict[str, str], Any]]:
    """The real app on a free local port (uvicorn in a thread); yields URL, auth headers, app."""
    import uvicorn

    from api.auth import create_token
    from api.main import create_app

    app = create_app(settings)
    with app.state.session_factory() as session:
        token = create_token(db_session=session, owner="bench", is_admin=True)
        session.commit()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)
    )
    thread = threading.Thread(target=server.run, name="uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline:
            raise TimeoutError("uvicorn did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}", {"Authorization": f"Bearer {token}"}, app
    finally:
        server.should_exit = True
        thread.join(10)
        app.state.engine.dispose()


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


# ----------------------------------------------------------------- latency


def latency_one(broker: str, jobs: int, gap_s: float, keep: bool) -> dict[str, Any]:
    import httpx
    import sqlalchemy as sa

    tmp = Path(tempfile.mkdtemp(prefix=f"pgd-bench-lat-{broker}-"))
    try:
        with contextlib.ExitStack() as stack:
            if broker == "redis":
                stack.enter_context(flushed_redis(REDIS_URL))
                database_url = stack.enter_context(throwaway_schema("pgd_wbench", migrated=False))
                broker_url = REDIS_URL
            else:
                database_url = f"sqlite:///{tmp / 'pgd.db'}"
                broker_url = f"sqla+sqlite:///{tmp / 'broker.db'}"
            settings = make_settings(
                tmp, database_url, broker_url, heartbeat_interval_s=0.05, metrics_interval=1
            )
            prepare(settings)
            workers = Workers(settings, tmp, count=1, concurrency=1)
            stack.callback(workers.stop)
            ready_s = workers.wait_ready()
            log(f"{broker}: worker ready after {ready_s:.1f} s")
            url, headers, app = stack.enter_context(served(settings))
            engine = app.state.engine
            spec = tiny_spec()
            rows: list[dict[str, Any]] = []
            with httpx.Client(base_url=url, headers=headers, timeout=30) as http:
                for index in range(jobs):
                    time.sleep(gap_s)  # the prefork pool replaces the last job's child
                    t_post = time.time()
                    response = http.post("/jobs", json=spec)
                    t_answer = time.time()
                    response.raise_for_status()
                    job_id = response.json()["id"]
                    started = first_iter = None
                    state = "queued"
                    deadline = time.monotonic() + 300
                    with engine.connect() as conn:
                        while state not in TERMINAL:
                            if time.monotonic() > deadline:
                                raise TimeoutError(f"job {job_id} still {state}")
                            row = conn.execute(
                                sa.text(
                                    "SELECT state, started_at, finished_at, EXISTS("
                                    "SELECT 1 FROM metric_points WHERE job_id = :id AND step = 1)"
                                    " FROM jobs WHERE id = :id"
                                ),
                                {"id": job_id},
                            ).one()
                            conn.commit()  # a fresh snapshot at every poll
                            now = time.time()
                            state = row[0]
                            if row[3] and first_iter is None:
                                first_iter = now
                            started = row[1]
                            finished = row[2]
                            if first_iter is None:
                                time.sleep(0.02)
                            else:
                                time.sleep(0.1)
                    started_ts = _timestamp(started)
                    finished_ts = _timestamp(finished)
                    rows.append(
                        {
                            "job": job_id,
                            "state": state,
                            "post_answer_ms": (t_answer - t_post) * 1e3,
                            "claim_ms": (started_ts - t_post) * 1e3,
                            "first_iter_ms": (first_iter - t_post) * 1e3 if first_iter else None,
                            "run_s": finished_ts - started_ts,
                        }
                    )
                    log(
                        f"{broker} job {index + 1}/{jobs}: {state}, POST answered in "
                        f"{rows[-1]['post_answer_ms']:.0f} ms, "
                        f"claim {rows[-1]['claim_ms']:.0f} ms, "
                        f"first iteration {rows[-1]['first_iter_ms']:.0f} ms, "
                        f"job ran {rows[-1]['run_s']:.2f} s"
                    )
            return {"broker": broker, "broker_url": broker_url, "ready_s": ready_s, "jobs": rows}
    finally:
        if keep:
            log(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


def _timestamp(value: Any) -> float:
    from datetime import UTC, datetime

    if isinstance(value, str):  # SQLite through a raw query returns text
        value = datetime.fromisoformat(value)
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.timestamp()


def summarise(values: list[float]) -> str:
    return f"p50 {statistics.median(values):.0f}  max {max(values):.0f}  min {min(values):.0f}"


def cmd_latency(args: argparse.Namespace) -> dict[str, Any]:
    results = []
    for broker in args.brokers:
        result = latency_one(broker, args.jobs, args.gap, args.keep)
        rows = result["jobs"]
        ok = [r for r in rows if r["state"] == "succeeded" and r["first_iter_ms"] is not None]
        result["summary"] = {
            "succeeded": len(ok),
            "post_answer_ms": summarise([r["post_answer_ms"] for r in rows]),
            "claim_ms": summarise([r["claim_ms"] for r in rows]),
            "first_iter_ms": summarise([r["first_iter_ms"] for r in ok]) if ok else None,
        }
        results.append(result)
    for result in results:
        log(f"{result['broker']}: {json.dumps(result['summary'])}")
    return {"latency": results}


# ----------------------------------------------------------------- throughput


def cmd_throughput(args: argparse.Namespace) -> dict[str, Any]:
    import httpx
    import sqlalchemy as sa

    tmp = Path(tempfile.mkdtemp(prefix="pgd-bench-tp-"))
    try:
        with contextlib.ExitStack() as stack:
            stack.enter_context(flushed_redis(REDIS_URL))
            database_url = stack.enter_context(throwaway_schema("pgd_wbench", migrated=False))
            settings = make_settings(tmp, database_url, REDIS_URL)
            prepare(settings)
            workers = Workers(settings, tmp, count=args.workers, concurrency=args.concurrency)
            stack.callback(workers.stop)
            ready_s = workers.wait_ready()
            log(
                f"{args.workers} worker(s) x concurrency {args.concurrency} "
                f"ready after {ready_s:.1f} s"
            )
            url, headers, app = stack.enter_context(served(settings))
            engine = app.state.engine
            spec = tiny_spec(**cheap_schedule())
            ids: list[str] = []
            with httpx.Client(base_url=url, headers=headers, timeout=60) as http:
                t_first = time.time()
                for index in range(args.jobs):
                    body = dict(spec, seed=index)
                    response = http.post("/jobs", json=body)
                    response.raise_for_status()
                    ids.append(response.json()["id"])
                t_posted = time.time()
            log(f"POSTed {args.jobs} jobs in {t_posted - t_first:.2f} s")
            deadline = time.monotonic() + args.timeout
            done = 0
            while True:
                with engine.connect() as conn:
                    done = conn.execute(
                        sa.text("SELECT count(*) FROM jobs WHERE state IN :t").bindparams(
                            sa.bindparam("t", expanding=True)
                        ),
                        {"t": list(TERMINAL)},
                    ).scalar_one()
                if done >= args.jobs:
                    break
                if time.monotonic() > deadline:
                    log(f"timeout: {done}/{args.jobs} terminal")
                    break
                time.sleep(0.5)
            with engine.connect() as conn:
                rows = conn.execute(
                    sa.text(
                        "SELECT j.id, j.state, j.attempt, j.lost_count, j.started_at, "
                        "j.finished_at, (SELECT count(*) FROM eval_results e WHERE e.job_id = j.id)"
                        " FROM jobs j"
                    )
                ).all()
            worker_log = workers.text()
            received = worker_log.count("] received")
            task_ok = worker_log.count("succeeded in")
            dropped = worker_log.count("message dropped")
            states: dict[str, int] = {}
            for row in rows:
                states[row[1]] = states.get(row[1], 0) + 1
            finished = [_timestamp(r[5]) for r in rows if r[5] is not None]
            run_s = [_timestamp(r[5]) - _timestamp(r[4]) for r in rows if r[5] and r[4]]
            wall = max(finished) - t_first if finished else float("nan")
            exactly_once = (
                len(rows) == args.jobs
                # a new job's first attempt is number 0: never re-queued, one result row
                and all(r[1] == "succeeded" and r[2] == 0 and r[3] == 0 and r[6] == 1 for r in rows)
                and received == args.jobs
                and dropped == 0
            )
            result = {
                "jobs": args.jobs,
                "workers": args.workers,
                "concurrency": args.concurrency,
                "post_all_s": t_posted - t_first,
                "wall_s": wall,
                "jobs_per_min": 60 * len(finished) / wall if finished else 0.0,
                "states": states,
                "tasks_received": received,
                "tasks_succeeded_log": task_ok,
                "messages_dropped": dropped,
                "eval_rows_per_job": sorted({r[6] for r in rows}),
                "attempts": sorted({r[2] for r in rows}),
                "lost_counts": sorted({r[3] for r in rows}),
                "job_run_s_p50": statistics.median(run_s) if run_s else None,
                "job_run_s_max": max(run_s) if run_s else None,
                "exactly_once": exactly_once,
            }
            log(json.dumps(result))
            return {"throughput": result}
    finally:
        if args.keep:
            log(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


# ----------------------------------------------------------------- overhead


def cmd_overhead(args: argparse.Namespace) -> dict[str, Any]:
    import logging

    import sqlalchemy as sa
    from mmengine.hooks import Hook

    import pgd_core.runner as runner_mod
    from pgd_core.spec import RunSpec
    from pgd_service.db.models import Job
    from pgd_service.db.session import make_engine, make_session_factory
    from pgd_service.db.types import utcnow
    from worker.reporting import Reporter

    class IterClock(Hook):
        """Records the time at the end of every training iteration (after every other hook)."""

        priority = "LOWEST"

        def __init__(self) -> None:
            self.stamps: list[float] = []

        def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None) -> None:
            self.stamps.append(time.perf_counter())

    clocks: list[IterClock] = []
    original_build = runner_mod.build_runner

    def build_with_clock(*a: Any, **kw: Any):
        runner = original_build(*a, **kw)
        for handler in runner.logger.handlers:
            if type(handler) is logging.StreamHandler:
                handler.setLevel(logging.WARNING)
        clock = IterClock()
        runner.register_hook(clock)
        clocks.append(clock)
        return runner

    runner_mod.build_runner = build_with_clock
    iters = args.iters
    spec = RunSpec.model_validate(
        tiny_spec(
            max_iters=iters,
            milestones=(int(iters * 0.75),),
            checkpoint_interval=iters,
            log_interval=10,
        )
    )
    tmp = Path(tempfile.mkdtemp(prefix="pgd-bench-ovh-"))
    configs = ["none", *[f"db-{hb:g}s" for hb in args.heartbeats]]
    per_iter: dict[str, list[float]] = {name: [] for name in configs}
    # The median gap of a run resists the bursts of other processes on a shared machine.
    per_iter_median: dict[str, list[float]] = {name: [] for name in configs}
    points: dict[str, list[int]] = {name: [] for name in configs}
    try:
        with throwaway_schema("pgd_wbench") as database_url:
            from pgd_core.data.synthetic_shapes import make_coco_shapes

            data_root = tmp / "data"
            make_coco_shapes(data_root, "shapes")
            engine = make_engine(database_url)
            factory = make_session_factory(engine)
            counter = iter(range(10_000))

            def run(config: str) -> tuple[float, int]:
                work = tmp / f"run{next(counter)}"
                reporter = None
                callbacks = None
                job_id = None
                if config != "none":
                    heartbeat = float(config[3:-1])
                    with factory() as session:
                        now = utcnow()
                        job = Job(
                            kind="train",
                            detector="fcos",
                            dataset="shapes",
                            method="none",
                            spec=spec.model_dump(mode="json"),
                            spec_hash="0" * 64,
                            owner="bench",
                            max_attempts=3,
                            state="running",
                            attempt=1,
                            heartbeat_at=now,
                            started_at=now,
                        )
                        session.add(job)
                        session.commit()
                        job_id = job.id
                    reporter = Reporter(factory, job_id, 1, heartbeat_s=heartbeat)
                    reporter.start()
                    callbacks = reporter.callbacks(metrics_interval=args.metrics_interval)
                try:
                    result = runner_mod.run_spec(
                        spec, work, data_root=data_root, callbacks=callbacks
                    )
                finally:
                    if reporter is not None:
                        reporter.stop(flush=True)
                assert result.status == "completed", result
                stamps = clocks[-1].stamps
                assert len(stamps) == iters, len(stamps)
                gaps = [b - a for a, b in zip(stamps[args.skip - 1 : -1], stamps[args.skip :])]
                written = 0
                if job_id is not None:
                    assert not reporter.lost
                    with engine.connect() as conn:
                        written = conn.execute(
                            sa.text("SELECT count(*) FROM metric_points WHERE job_id = :id"),
                            {"id": job_id},
                        ).scalar_one()
                shutil.rmtree(work, ignore_errors=True)
                return statistics.fmean(gaps), statistics.median(gaps), written

            log("warm-up run (discarded)")
            run("none")
            for rep in range(args.reps):
                order = configs if rep % 2 == 0 else list(reversed(configs))
                for config in order:
                    mean_s, median_s, written = run(config)
                    per_iter[config].append(mean_s)
                    per_iter_median[config].append(median_s)
                    points[config].append(written)
                    log(
                        f"rep {rep + 1}/{args.reps} {config}: {mean_s * 1e3:.2f} ms/iter mean, "
                        f"{median_s * 1e3:.2f} median"
                        + (f", {written} metric points written" if config != "none" else "")
                    )
            engine.dispose()
    finally:
        runner_mod.build_runner = original_build
        shutil.rmtree(tmp, ignore_errors=True)
    base = per_iter["none"]
    result: dict[str, Any] = {
        "iters": iters,
        "skip": args.skip,
        "reps": args.reps,
        "metrics_interval": args.metrics_interval,
        "ms_per_iter": {k: [round(v * 1e3, 3) for v in vals] for k, vals in per_iter.items()},
        "ms_per_iter_median": {
            k: [round(v * 1e3, 3) for v in vals] for k, vals in per_iter_median.items()
        },
        "metric_points": points,
        "ratios": {},
    }
    for config in configs[1:]:
        paired = [d / b for d, b in zip(per_iter[config], base, strict=True)]
        result["ratios"][config] = {
            "per_rep": [round(r, 4) for r in paired],
            "median": round(statistics.median(paired), 4),
            "min": round(min(paired), 4),
            "max": round(max(paired), 4),
            "ratio_of_means": round(statistics.fmean(per_iter[config]) / statistics.fmean(base), 4),
            "median_gap_ratio_per_rep": [
                round(d / b, 4)
                for d, b in zip(per_iter_median[config], per_iter_median["none"], strict=True)
            ],
        }
        log(f"{config} / none: {json.dumps(result['ratios'][config])}")
    return {"overhead": result}


# ----------------------------------------------------------------- main


def _exit_on_signal(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", type=Path, help="also write the results to this file")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    sub = parser.add_subparsers(dest="command", required=True)
    lat = sub.add_parser("latency", help="POST /jobs -> claim and -> first iteration")
    lat.add_argument("--jobs", type=int, default=5)
    lat.add_argument(
        "--brokers", nargs="+", choices=("redis", "embedded"), default=["redis", "embedded"]
    )
    lat.add_argument(
        "--gap", type=float, default=1.0, help="seconds between a job's end and the next POST"
    )
    tp = sub.add_parser("throughput", help="many tiny jobs queued at once")
    tp.add_argument("--jobs", type=int, default=200)
    tp.add_argument("--workers", type=int, default=1)
    tp.add_argument("--concurrency", type=int, default=2)
    tp.add_argument("--timeout", type=float, default=1800.0)
    ov = sub.add_parser("overhead", help="training-speed cost of the database callbacks")
    ov.add_argument("--reps", type=int, default=4)
    ov.add_argument("--iters", type=int, default=60)
    ov.add_argument("--skip", type=int, default=10, help="first iterations left out")
    ov.add_argument("--heartbeats", type=float, nargs="+", default=[5.0, 0.5])
    ov.add_argument(
        "--metrics-interval", type=int, default=10, help="the PGD_METRICS_INTERVAL default"
    )
    args = parser.parse_args(argv)
    # A plain kill (or Ctrl-C in a background job, where SIGINT is ignored) must
    # still run the clean-up: stop workers, drop the schema, flush Redis.
    signal.signal(signal.SIGTERM, _exit_on_signal)
    signal.signal(signal.SIGINT, _exit_on_signal)
    handler = {"latency": cmd_latency, "throughput": cmd_throughput, "overhead": cmd_overhead}
    result = handler[args.command](args)
    result["machine"] = {"cpus": os.cpu_count(), "load_avg_end": os.getloadavg()}
    if args.json:
        args.json.write_text(json.dumps(result, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
