"""Data-parallel runs on this machine: step time at 1 and 2 gloo ranks, and what
launching through torchrun costs against a run in the calling process.

1. Step time: the tiny-fcos-student preset (global batch --batch, 160 px shapes)
   trained for --iters iterations with 1 process (in this process) and with 2
   gloo ranks under torchrun. The time per iteration is mmengine's own
   (IterTimerHook, rank 0's log), the median over the logged windows after the
   first; throughput is the global batch over it.
2. Launch overhead: one 2-iteration run of the same preset, in this process
   (torch and mmdet already imported, as in a worker's job process) and as one
   rank under torchrun; wall time to the first iteration and to the end.

    python bench/bench_dist.py [--iters 60] [--batch 4] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch


def _iteration_times(work: Path) -> list[float]:
    """mmengine's per-iteration times (one per log window) from rank 0's scalars."""
    [scalars] = sorted(work.glob("*/vis_data/scalars.json"))[-1:]
    times = []
    for line in scalars.read_text().splitlines():
        entry = json.loads(line)
        if "time" in entry and "loss" in entry:
            times.append(float(entry["time"]))
    return times


def _spec(iters: int, batch: int, processes: int, log_interval: int):
    from pgd_core.presets import get_preset
    from pgd_core.spec import RunSpec

    data = get_preset("tiny-fcos-student").model_dump(mode="json")
    data["schedule"].update(
        max_iters=iters,
        batch_size=batch,
        milestones=[],
        warmup_iters=0,
        checkpoint_interval=iters,
        log_interval=log_interval,
    )
    data["processes"] = processes
    return RunSpec.model_validate(data)


def step_times(root: Path, iters: int, batch: int, repeats: int) -> None:
    from pgd_core.runner import run_spec

    print(f"\n## step time, tiny-fcos-student, global batch {batch}, {iters} iterations\n")
    print("| ranks | s / iteration (median of runs) | images / s | vs 1 rank |")
    print("|---|---|---|---|")
    base = None
    for processes in (1, 2):
        medians = []
        for i in range(repeats):
            work = root / f"steps-{processes}-{i}"
            spec = _spec(iters, batch, processes, log_interval=10)
            run_spec(spec, work, data_root=root / "data")
            medians.append(statistics.median(_iteration_times(work)[1:]))
        per_iter = statistics.median(medians)
        base = base or per_iter
        print(f"| {processes} | {per_iter:.3f} | {batch / per_iter:.1f} | {base / per_iter:.2f}x |")


def launch_overhead(root: Path, repeats: int) -> None:
    from pgd_core.launch import launch
    from pgd_core.runner import RunCallbacks, check_data, run_spec

    spec = _spec(2, 4, 1, log_interval=1)
    rows = {}
    for how in ("in-process", "torchrun, 1 rank"):
        first, total = [], []
        for i in range(repeats):
            work = root / f"launch-{how[:2]}-{i}"
            seen: list[float] = []
            callbacks = RunCallbacks(
                on_progress=lambda it, n, seen=seen: seen.append(time.perf_counter())
            )
            begin = time.perf_counter()
            if how == "in-process":
                run_spec(spec, work, data_root=root / "data", callbacks=callbacks)
            else:
                reports = check_data(spec, root / "data")
                launch(spec, work, reports=reports, data_root=root / "data", callbacks=callbacks)
            total.append(time.perf_counter() - begin)
            first.append(seen[0] - begin)
        rows[how] = (statistics.median(first), statistics.median(total))
    print(f"\n## launch overhead, 2-iteration run + its evaluation ({repeats} runs, medians)\n")
    print("| how | to first iteration (s) | whole run (s) |")
    print("|---|---|---|")
    for how, (first, total) in rows.items():
        print(f"| {how} | {first:.2f} | {total:.2f} |")
    inproc, launched = rows["in-process"], rows["torchrun, 1 rank"]
    print(
        f"\ntorchrun adds {launched[0] - inproc[0]:.2f} s before the first iteration "
        f"and {launched[1] - inproc[1]:.2f} s to the whole run."
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--iters", type=int, default=60)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    from pgd_core.data.synthetic_shapes import make_coco_shapes

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads in this process")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        make_coco_shapes(root / "data", "shapes", num_train=64, num_val=8)
        step_times(root, args.iters, args.batch, args.repeats)
        launch_overhead(root, args.repeats)


if __name__ == "__main__":
    main()
