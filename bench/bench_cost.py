"""What measuring a model's cost adds to a job (pgd_core.cost), on this CPU.

1. A tiny job (the tiny-fcos-student preset, 20 iterations and its evaluation on
   the synthetic shapes set) timed with run_spec, then the measurement the worker
   runs after it (FLOPs, 30 timed forwards, peak memory, ONNX export and parity):
   seconds each and the ratio.
2. Paper-sized detectors at the COCO test size (1333 x 800, an 800 x 1344 input)
   from the coco-* presets, randomly initialised: each part of the measurement in
   seconds, with what it found (params, GFLOPs, latency).

    python bench/bench_cost.py [--threads 2] [--detectors fcos,gfl] [--repeats 3]
"""

from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
import time
from pathlib import Path

import torch


def tiny_job(repeats: int) -> None:
    from pgd_core.data.synthetic_shapes import make_coco_shapes
    from pgd_core.presets import get_preset
    from pgd_core.runner import measure_cost, run_spec

    spec = get_preset("tiny-fcos-student")
    jobs, costs = [], []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        make_coco_shapes(root / "data", "shapes", num_train=32, num_val=16)
        for i in range(repeats):
            work = root / f"run{i}"
            begin = time.perf_counter()
            result = run_spec(spec, work, data_root=root / "data", weights_root=root / "w")
            jobs.append(time.perf_counter() - begin)
            assert result.checkpoint is not None
            begin = time.perf_counter()
            cost = measure_cost(
                spec, result.checkpoint, data_root=root / "data", onnx_path=work / "m.onnx"
            )
            costs.append(time.perf_counter() - begin)
            assert cost.onnx is not None and cost.onnx.status == "ok", cost.onnx
    job, measured = statistics.median(jobs), statistics.median(costs)
    print(f"\n## tiny job ({repeats} runs, medians)\n")
    print("| run_spec (s) | measurement (s) | measurement / job |")
    print("|---:|---:|---:|")
    print(f"| {job:.2f} | {measured:.2f} | {measured / job:.2f} |")


def paper_sized(detectors: list[str]) -> None:
    from mmdet.registry import MODELS

    import pgd_core.compat  # noqa: F401
    from pgd_core.configs.model import detector_cfg
    from pgd_core.cost import measure, network_input_shape
    from pgd_core.presets import get_preset

    print("\n## paper-sized models, 800 x 1344 input\n")
    print(
        "| model | params (M) | GFLOPs | latency median / p90 (ms) | runs | peak (MiB) "
        "| FLOPs (s) | timing (s) | memory (s) | ONNX (s) | total (s) | ONNX max diff |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for detector in detectors:
        for role in ("student", "teacher"):
            spec = get_preset(f"coco-{detector}-{role}")
            model = MODELS.build(detector_cfg(detector, spec.student, 80))
            model.init_weights()
            shape = network_input_shape(spec.dataset.img_scale)
            with tempfile.TemporaryDirectory() as tmp:
                cost = measure(model.eval(), shape, onnx_path=Path(tmp) / "model.onnx")
            t = cost.timings
            onnx = cost.onnx
            diff = (
                "failed"
                if onnx is None or onnx.max_abs_diff is None
                else f"{onnx.max_abs_diff:.1e}"
            )
            print(
                f"| {detector} R-{spec.student.depth} | {cost.params / 1e6:.2f} "
                f"| {cost.flops / 1e9:.1f} "
                f"| {cost.latency.median_ms:.0f} / {cost.latency.p90_ms:.0f} | {cost.latency.runs} "
                f"| {cost.peak_memory_mb:.0f} | {t['flops_s']:.1f} | {t['latency_s']:.1f} "
                f"| {t['memory_s']:.1f} | {t.get('onnx_s', 0):.1f} | {cost.seconds:.1f} | {diff} |"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--detectors", default="fcos")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip-tiny", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    logging.getLogger("mmengine").setLevel(logging.WARNING)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    if not args.skip_tiny:
        tiny_job(args.repeats)
    paper_sized([d for d in args.detectors.split(",") if d])


if __name__ == "__main__":
    main()
