"""``pgd demo``: the product in a few minutes on a laptop CPU.

Starts the embedded stack (``pgd up``: SQLite, a server-less broker, one real
Celery worker), makes a small synthetic detection data set, then through the
REST API trains a tiny teacher and a tiny no-KD student baseline, distils a
tiny PGD student from that teacher, and prints the leaderboard.
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from api.embedded import REPO_ROOT, home_env, wait_ready
from pgd_client import Client, PgdError, ResultPage


def _spec(client: Client, preset: str, iters: int, **extra: Any) -> dict[str, Any]:
    spec = client.preset(preset)
    spec["schedule"].update(
        max_iters=iters,
        milestones=[int(iters * 0.75)],
        warmup_iters=min(20, iters // 4),
        checkpoint_interval=max(1, iters // 2),
        log_interval=10,
    )
    spec.update(extra)
    return spec


def _post(client: Client, spec: dict[str, Any], label: str) -> str:
    try:
        job = client.submit(spec)
    except PgdError as exc:
        raise RuntimeError(f"POST /jobs ({label}): {exc}") from None
    print(f"  queued {label:<24} job {job.id}", flush=True)
    return job.id


def _wait(
    client: Client,
    jobs: dict[str, str],
    until: list[str],
    timeout: float,
    seen: dict[str, tuple[str, int]],
) -> None:
    """Print each job's state and progress (when it changed since ``seen``) while
    waiting for the ``until`` jobs."""
    deadline = time.monotonic() + timeout
    while True:
        done = True
        for label, job_id in jobs.items():
            job = client.job(job_id)
            now = (job.state, int(job.progress * 10) * 10)  # 10 % steps
            if seen.get(label) != now:
                seen[label] = now
                print(f"  {label:<24} {now[0]:<10} {now[1]:>3}%", flush=True)
            if job_id in until and not job.finished:
                done = False
            if job.state == "failed":
                raise RuntimeError(f"{label} failed ({job.reason}): {job.message}")
        if done:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"jobs not finished after {timeout:.0f} s")
        time.sleep(1.0)


def _fmt(value: float | None, signed: bool = False) -> str:
    if value is None:
        return "-"
    return f"{value:+.1f}" if signed else f"{value:.1f}"


def print_leaderboard(rows: list[dict[str, Any]], labels: dict[str, str]) -> None:
    header = (
        f"{'model':<24} {'method':<7} {'AP':>6} {'AP50':>6} "
        f"{'teacher AP':>10} {'baseline AP':>11} {'dAP vs base':>11}"
    )
    print(header)
    print("-" * len(header))
    for row in rows:
        print(
            f"{labels.get(row['job_id'], row['job_id'][:8]):<24} {row['method']:<7} "
            f"{_fmt(row['ap']):>6} {_fmt(row['ap50']):>6} {_fmt(row['teacher_ap']):>10} "
            f"{_fmt(row['baseline_ap']):>11} {_fmt(row['delta_ap_vs_baseline'], True):>11}"
        )


@contextlib.contextmanager
def embedded_stack(home: Path, port: int, timeout: float = 120) -> Iterator[Client]:
    """``pgd up`` in ``home`` (its log in ``home/up.log``) and a client with its token;
    the stack is stopped (SIGINT, then SIGKILL after a minute) on the way out."""
    env = home_env(home)
    env.update(PGD_HEARTBEAT_INTERVAL_S="1", PGD_MAINTENANCE_INTERVAL_S="5")
    token_file = home / "token"
    url = f"http://127.0.0.1:{port}"
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "api.cli",
            "up",
            "--port",
            str(port),
            "--token-file",
            str(token_file),
        ],
        env=env,
        cwd=REPO_ROOT,
        stdout=open(home / "up.log", "wb"),  # noqa: SIM115 - the child keeps it open
        stderr=subprocess.STDOUT,
    )
    try:
        wait_ready(url, timeout=timeout)
        with Client(url, token_file.read_text().strip()) as client:
            yield client
    finally:
        server.send_signal(signal.SIGINT)
        try:
            server.wait(60)
        except subprocess.TimeoutExpired:
            server.kill()


def run(args: argparse.Namespace) -> int:
    home = args.home.resolve()
    if home.exists() and not args.keep:
        shutil.rmtree(home)
    home.mkdir(parents=True, exist_ok=True)
    from pgd_core.data.synthetic_shapes import make_coco_shapes

    print(f"1/4 synthetic data set 'shapes' in {home / 'data'}", flush=True)
    make_coco_shapes(
        home / "data", "shapes", num_train=args.num_train, num_val=args.num_val, overwrite=True
    )
    print("2/4 starting the embedded stack (API + one Celery worker)", flush=True)
    try:
        with embedded_stack(home, args.port) as client:
            url = client.url
            print(f"    API at {url}, logs in {home}", flush=True)
            print("3/4 training through the API", flush=True)
            jobs = {
                "teacher (R-34)": _post(
                    client, _spec(client, "tiny-fcos-teacher", args.teacher_iters), "teacher (R-34)"
                ),
                "student baseline (R-18)": _post(
                    client,
                    _spec(client, "tiny-fcos-student", args.student_iters),
                    "student baseline (R-18)",
                ),
            }
            seen: dict[str, tuple[str, int]] = {}
            _wait(client, jobs, [jobs["teacher (R-34)"]], args.timeout, seen)
            pgd = _spec(
                client, "tiny-fcos-pgd", args.student_iters, teacher_ref=jobs["teacher (R-34)"]
            )
            jobs["PGD student (R-18)"] = _post(client, pgd, "PGD student (R-18)")
            _wait(client, jobs, list(jobs.values()), args.timeout, seen)
            print("4/4 leaderboard (GET /results?dataset=shapes, AP in percent)\n", flush=True)
            page = client.results(dataset="shapes", sort="-ap")
            assert isinstance(page, ResultPage)
            labels = {job_id: label for label, job_id in jobs.items()}
            rows = [r.model_dump(mode="json") for r in page.items if r.job_id in labels]
            print_leaderboard(rows, labels)
            print(f"\nPR curves: {url}/jobs/{jobs['PGD student (R-18)']}/artifacts")
        return 0
    except (RuntimeError, TimeoutError, PgdError) as exc:
        print(f"demo failed: {exc}\n(see {home / 'up.log'} and {home / 'work'})", file=sys.stderr)
        return 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="pgd demo", description=__doc__.splitlines()[0])
    parser.add_argument("--home", type=Path, default=Path("var/demo"), help="demo state folder")
    parser.add_argument("--port", type=int, default=8765)
    # Long enough for real scores on the shapes set (the teacher well above the
    # baseline), short enough for a few minutes on 2 cores: README.md has the figures.
    parser.add_argument("--teacher-iters", type=int, default=600)
    parser.add_argument("--student-iters", type=int, default=200)
    parser.add_argument("--num-train", type=int, default=200, help="synthetic training images")
    parser.add_argument("--num-val", type=int, default=50, help="synthetic validation images")
    parser.add_argument("--timeout", type=float, default=1800.0)
    parser.add_argument("--keep", action="store_true", help="do not wipe --home first")
    return run(parser.parse_args(argv))
