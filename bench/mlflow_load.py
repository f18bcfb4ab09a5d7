"""Load runs into an MLflow tracking database with MLflow's own store (for ``bench_vs_mlflow.py``).

Runs in the MLflow venv that ``bench/bench_vs_mlflow.py`` makes, never in the
project's: it imports ``mlflow``. Input: a JSON-lines file, one run per line
(``name``, ``status``, ``start_time``/``end_time`` in ms, ``params``, ``metrics``,
``tags``). Every run goes through MLflow's maintained store API
(``SqlAlchemyStore.create_run``, ``log_batch``, ``update_run_info``): the rows
MLflow writes are whatever its own code writes, no SQL of ours touches its
schema. ``--procs`` processes load chunks of the file side by side. Prints the
experiment id on the last line of stdout (``experiment_id=<id>``).

    <mlflow venv>/bin/python bench/mlflow_load.py --db-uri postgresql://... \\
        --artifact-root file:///tmp/x --input runs.jsonl [--procs 2]
"""

from __future__ import annotations

import argparse
import itertools
import json
import multiprocessing
import sys
import time
from collections.abc import Iterator

EXPERIMENT = "pgd-bench"
RUNS_TAG = "pgd.bench.runs"
CHUNK = 250

_store = None


def _open_store(db_uri: str, artifact_root: str):
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    return SqlAlchemyStore(db_uri, artifact_root)


def _init_worker(db_uri: str, artifact_root: str) -> None:
    global _store
    _store = _open_store(db_uri, artifact_root)


def _load_chunk(job: tuple[str, list[str]]) -> int:
    from mlflow.entities import Metric, Param, RunStatus, RunTag

    experiment_id, lines = job
    for line in lines:
        run = json.loads(line)
        created = _store.create_run(
            experiment_id=experiment_id,
            user_id=run["tags"].get("mlflow.user", "bench"),
            start_time=run["start_time"],
            tags=[RunTag(k, v) for k, v in run["tags"].items()],
            run_name=run["name"],
        )
        run_id = created.info.run_id
        _store.log_batch(
            run_id=run_id,
            metrics=[Metric(k, v, run["end_time"], 0) for k, v in run["metrics"].items()],
            params=[Param(k, v) for k, v in run["params"].items()],
            tags=[],
        )
        _store.update_run_info(
            run_id=run_id,
            run_status=RunStatus.from_string(run["status"]),
            end_time=run["end_time"],
            run_name=run["name"],
        )
    return len(lines)


def _chunks(path: str, experiment_id: str) -> Iterator[tuple[str, list[str]]]:
    with open(path, encoding="utf-8") as handle:
        while True:
            lines = [line for line in itertools.islice(handle, CHUNK) if line.strip()]
            if not lines:
                return
            yield experiment_id, lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db-uri", required=True)
    parser.add_argument("--artifact-root", required=True)
    parser.add_argument("--input", required=True, help="JSON lines, one run per line")
    parser.add_argument("--procs", type=int, default=2)
    args = parser.parse_args()

    import mlflow

    started = time.perf_counter()
    # The first store creates MLflow's tables (its own migrations) before the workers start.
    store = _open_store(args.db_uri, args.artifact_root)
    experiment_id = store.create_experiment(EXPERIMENT)
    with open(args.input, encoding="utf-8") as handle:
        total = sum(1 for line in handle if line.strip())
    print(f"mlflow {mlflow.__version__}: loading {total:,} runs with {args.procs} processes")
    done, last = 0, time.perf_counter()
    context = multiprocessing.get_context("spawn")
    with context.Pool(
        args.procs, initializer=_init_worker, initargs=(args.db_uri, args.artifact_root)
    ) as pool:
        for count in pool.imap_unordered(_load_chunk, _chunks(args.input, experiment_id)):
            done += count
            now = time.perf_counter()
            if now - last >= 15 or done == total:
                rate = done / (now - started)
                print(f"  {done:,}/{total:,} runs, {rate:.0f} runs/s", flush=True)
                last = now
    # Marks the load complete: bench_vs_mlflow.py reuses only a database that has it.
    from mlflow.entities import ExperimentTag

    store.set_experiment_tag(experiment_id, ExperimentTag(RUNS_TAG, str(done)))
    print(f"loaded {done:,} runs in {time.perf_counter() - started:.1f} s")
    print(f"experiment_id={experiment_id}")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
