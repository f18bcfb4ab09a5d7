"""Requests per second and p50/p99 latency of ``POST /jobs`` and ``GET /results`` against
the minimal baseline (``bench/baseline_app.py``), side by side, with wrk on loopback.

Set-up: a throwaway PostgreSQL schema migrated to head for the real app (100,000
eval results for the leaderboard, see ``bench_leaderboard.populate``), another
for the baseline (100,000 indexed rows); a data root with one registered tiny
dataset; a token; Redis DB 15 as the broker (FLUSHDB before and after). Each app
runs in one uvicorn process; the real app twice, once with its leaderboard page
cache off (``PGD_RESULTS_CACHE_ENTRIES=0``: every page computed). Each case runs
with 1 and 50 connections (``wrk -t1 -c1``, ``wrk -t2 -c50``), real and baseline
back to back. At the end the jobs stored are counted against the messages in
the broker's queues (every accepted job must have been sent exactly once).

    python bench/bench_http.py [--duration 10] [--results 100000] [--rounds 1]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import redis
from sqlalchemy import text

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import baseline_app  # noqa: E402
from bench_leaderboard import populate  # noqa: E402
from bench_support import throwaway_schema  # noqa: E402

from api.auth import create_token  # noqa: E402
from pgd_core.data.synthetic_shapes import make_coco_shapes  # noqa: E402
from pgd_core.presets import get_preset  # noqa: E402
from pgd_service.db.session import make_engine, make_session_factory  # noqa: E402

REDIS_URL = "redis://127.0.0.1:6379/15"
RESULTS_QUERY = "/results?dataset=coco&detector=fcos&sort=-ap&limit=50"
CONNECTIONS = ((1, 1), (2, 50))  # (wrk threads, connections)

# A unique Idempotency-Key per request: run prefix, wrk thread, counter.
POST_LUA = """
local counter = 0
local threads = 0
function setup(thread)
  threads = threads + 1
  thread:set("tid", threads)
end
function init(args)
  counter = 0
end
wrk.method = "POST"
wrk.body = {body}
wrk.headers["Content-Type"] = "application/json"
{auth}
function request()
  counter = counter + 1
  -- wrk.format replaces wrk.headers by the table it is given: copy them.
  local headers = {}
  for name, value in pairs(wrk.headers) do
    headers[name] = value
  end
  headers["Idempotency-Key"] = "{prefix}-" .. tostring(tid) .. "-" .. tostring(counter)
  return wrk.format(nil, nil, headers, nil)
end
"""


def _lua_string(text: str) -> str:
    return "[==[" + text + "]==]"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def served(target: str, env: dict[str, str], ready_path: str) -> Iterator[str]:
    """``uvicorn target`` in one process on a free port; its base URL."""
    port = _free_port()
    command = [
        sys.executable,
        "-m",
        "uvicorn",
        target,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
        "--no-access-log",
        "--log-level",
        "warning",
    ]
    process = subprocess.Popen(command, cwd=ROOT, env={**os.environ, **env})
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(base + ready_path, timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{target} did not start")
            time.sleep(0.2)
        yield base
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1000.0, "m": 60000.0}


def _ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text)
    if match is None:
        raise ValueError(f"unparsed wrk duration {text!r}")
    return float(match.group(1)) * _UNITS[match.group(2)]


def wrk(
    url: str,
    threads: int,
    connections: int,
    duration: int,
    script: Path | None = None,
    headers: dict[str, str] | None = None,
) -> dict[str, float]:
    """One wrk run: requests/s, p50 and p99 in ms, errors (non-2xx and socket errors)."""
    # A request slower than wrk's default 2 s timeout would count as a socket error
    # and vanish from the latency distribution: wait up to 30 s instead.
    command = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{duration}s", "--latency"]
    command += ["--timeout", "30s"]
    for name, value in (headers or {}).items():
        command += ["-H", f"{name}: {value}"]
    if script is not None:
        command += ["-s", str(script)]
    out = subprocess.run(command + [url], capture_output=True, text=True, check=True).stdout
    latency = dict(re.findall(r"^\s+(50|99)%\s+(\S+)$", out, re.MULTILINE))
    errors = sum(int(n) for n in re.findall(r"Non-2xx or 3xx responses: (\d+)", out))
    socket_errors = re.search(r"Socket errors: (.*)$", out, re.MULTILINE)
    if socket_errors:
        errors += sum(int(n) for n in re.findall(r"\d+", socket_errors.group(1)))
    return {
        "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
        # wrk prints no distribution when no request completed.
        "p50": _ms(latency["50"]) if "50" in latency else float("nan"),
        "p99": _ms(latency["99"]) if "99" in latency else float("nan"),
        "requests": float(re.search(r"(\d+) requests in", out).group(1)),
        "errors": float(errors),
    }


def _count_jobs(url: str) -> int:
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            return int(conn.execute(text("SELECT count(*) FROM jobs")).scalar_one())
    finally:
        engine.dispose()


def post_script(directory: Path, body: dict, headers: dict[str, str]) -> Path:
    auth = "\n".join(
        f"wrk.headers[ {_lua_string(k)} ] = {_lua_string(v)}" for k, v in headers.items()
    )
    text = (
        POST_LUA.replace("{auth}", auth)
        .replace("{body}", _lua_string(json.dumps(body)))
        .replace("{prefix}", uuid.uuid4().hex[:12])
    )
    path = directory / f"post-{uuid.uuid4().hex[:6]}.lua"
    path.write_text(text)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=10, help="seconds per wrk run")
    parser.add_argument("--results", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=1, help="repeat every case this often")
    parser.add_argument(
        "--baseline-pre-ping",
        choices=("on", "off"),
        default="on",
        help="the baseline's pool pings each connection it hands out (on: as the real "
        "app's sync pool; off: SQLAlchemy's default)",
    )
    parser.add_argument(
        "--only", default="", help="run only the cases whose name contains this text"
    )
    parser.add_argument(
        "--clients",
        type=int,
        nargs="*",
        default=[c for _, c in CONNECTIONS],
        help="connection counts to run (1, 50)",
    )
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk not found: apt-get install wrk")
    broker = redis.Redis.from_url(REDIS_URL)
    broker.flushdb()

    with ExitStack() as stack:
        stack.callback(broker.flushdb)
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="pgd-bench-http-")))
        data_root = tmp / "data"
        make_coco_shapes(data_root, "shapes", num_train=2, num_val=1, max_objects=2)

        real_url = stack.enter_context(throwaway_schema("pgd_bench"))
        engine = make_engine(real_url)
        populate(engine, args.results)
        with make_session_factory(engine)() as session:
            token = create_token(db_session=session, owner="bench", is_admin=True)
            session.commit()
        engine.dispose()
        auth = {"Authorization": f"Bearer {token}"}

        base_url = stack.enter_context(throwaway_schema("pgd_bench_baseline", migrated=False))
        base_engine = baseline_app.make_engine(base_url)
        baseline_app.create_table(base_engine)
        baseline_app.populate(base_engine, args.results)
        base_engine.dispose()

        real_env = {
            "PGD_DATABASE_URL": real_url,
            "PGD_BROKER_URL": REDIS_URL,
            "PGD_DATA_ROOT": str(data_root),
            "PGD_RUN_MAINTENANCE": "false",
        }
        real = stack.enter_context(served("api.main:app", real_env, "/healthz"))
        # The same app without its leaderboard page cache: every page is a miss.
        uncached = stack.enter_context(
            served("api.main:app", {**real_env, "PGD_RESULTS_CACHE_ENTRIES": "0"}, "/healthz")
        )
        base_env = {
            "BASELINE_DATABASE_URL": base_url,
            "BASELINE_PRE_PING": "1" if args.baseline_pre_ping == "on" else "0",
        }
        base = stack.enter_context(served("bench.baseline_app:app", base_env, "/docs"))
        spec = get_preset("tiny-fcos-student").model_dump(mode="json")
        probe = urllib.request.Request(
            real + "/jobs",
            data=json.dumps(spec).encode(),
            headers={**auth, "Content-Type": "application/json"},
        )
        before = _count_jobs(real_url)
        with urllib.request.urlopen(probe) as response:
            assert response.status == 202, response.status
        item = {"name": "bench-item", "score": 42.0, "tags": ["a", "b"]}
        cases = (
            ("POST /jobs", real + "/jobs", spec, auth, base + "/items", item),
            ("GET /results", real + RESULTS_QUERY, None, auth, base + "/items/top", None),
            (
                "GET /results, cache off",
                uncached + RESULTS_QUERY,
                None,
                auth,
                base + "/items/top",
                None,
            ),
        )
        rows = []
        runs = [(t, c) for t, c in CONNECTIONS if c in args.clients]
        for (threads, connections), _ in itertools.product(runs, range(args.rounds)):
            for name, real_target, real_body, headers, base_target, base_body in cases:
                if args.only not in name:
                    continue
                measured = {}
                for side, target, body, side_headers in (
                    ("real", real_target, real_body, headers),
                    ("baseline", base_target, base_body, {}),
                ):
                    if body is not None:
                        script = post_script(tmp, body, side_headers)
                        measured[side] = wrk(target, threads, connections, args.duration, script)
                    else:
                        measured[side] = wrk(
                            target, threads, connections, args.duration, headers=side_headers
                        )
                    print(f"{name} c={connections} {side}: {measured[side]}", flush=True)
                rows.append((name, connections, measured["real"], measured["baseline"]))
        queued = broker.llen("cpu") + broker.llen("gpu")
        accepted = _count_jobs(real_url) - before  # populate's jobs were never sent

    print(
        f"\nbaseline pre-ping {args.baseline_pre_ping}; wrk {args.duration} s per run; "
        f"jobs stored {accepted}, messages in the broker queues {queued} "
        f"({'every job sent once' if queued == accepted else 'MISMATCH'})"
    )
    print(
        "| route | clients | real req/s | baseline req/s | real/baseline | real p50 (ms) "
        "| baseline p50 (ms) | real p99 (ms) | baseline p99 (ms) | errors (real/baseline) |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, connections, r, b in rows:
        print(
            f"| {name} | {connections} | {r['rps']:.0f} | {b['rps']:.0f} "
            f"| {r['rps'] / b['rps']:.2f} | {r['p50']:.2f} | {b['p50']:.2f} "
            f"| {r['p99']:.2f} | {b['p99']:.2f} | {r['errors']:.0f}/{b['errors']:.0f} |"
        )


if __name__ == "__main__":
    main()
