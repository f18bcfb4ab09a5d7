"""Training-step overhead of PGD on the tiny presets (CPU).

overhead = median over rounds of distillation step / (student-only step + teacher forward),
each round timing the three back to back

The denominator is the unavoidable work (the student's own step and one
teacher forward); the ratio measures what PGD adds on top: the hooks, the
teacher decoding, the region maps and the KD losses. Goal: at most 1.10.

    python bench/bench_overhead.py [--repeats 30] [--threads 2] [--batch 4]
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import time
from pathlib import Path

import torch
from mmdet.registry import MODELS
from mmengine.config import ConfigDict
from mmengine.logging import MMLogger
from mmengine.optim import OptimWrapper

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from helpers import synthetic_batch  # noqa: E402

import pgd_core.distill.distiller  # noqa: E402,F401
from pgd_core.configs.runner import model_cfg  # noqa: E402
from pgd_core.presets import get_preset  # noqa: E402

WARMUP_ROUNDS = 3


def _seconds(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _models(detector: str):
    spec = get_preset(f"tiny-{detector}-pgd")
    distiller = MODELS.build(ConfigDict(model_cfg(spec, 3)))
    distiller.init_weights()
    alone = spec.model_copy(update={"method": "none", "teacher": None, "distill": None})
    student = MODELS.build(ConfigDict(model_cfg(alone, 3)))
    student.init_weights()
    student.load_state_dict(distiller.state_dict())
    return distiller, student


def measure(detector: str, repeats: int, batch_size: int) -> dict[str, float]:
    distiller, student = _models(detector)
    batch = synthetic_batch(num_images=batch_size)
    distiller.train()
    student.train()
    opt_d = OptimWrapper(torch.optim.SGD(distiller.parameters(), lr=1e-4, momentum=0.9))
    opt_s = OptimWrapper(torch.optim.SGD(student.parameters(), lr=1e-4, momentum=0.9))
    teacher = distiller.teacher
    inputs = distiller.data_preprocessor(batch, True)["inputs"]

    def teacher_forward() -> None:
        with torch.no_grad():
            teacher.bbox_head(teacher.extract_feat(inputs))

    # Interleave the three measurements round by round so drift hits all alike.
    times: dict[str, list[float]] = {"distill": [], "student": [], "teacher": []}
    fns = {
        "distill": lambda: distiller.train_step(batch, opt_d),
        "student": lambda: student.train_step(batch, opt_s),
        "teacher": teacher_forward,
    }
    for _ in range(WARMUP_ROUNDS):
        for fn in fns.values():
            fn()
    for _ in range(repeats):
        for name, fn in fns.items():
            times[name].append(_seconds(fn))
    med = {k: statistics.median(v) for k, v in times.items()}
    # The ratio of each round, whose three timings share the machine's state,
    # then its median: steadier than a ratio of medians on a busy 2-core box.
    med["overhead"] = statistics.median(
        d / (s + t) for d, s, t in zip(times["distill"], times["student"], times["teacher"])
    )
    return med


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--detectors", nargs="+", default=["fcos", "atss"])
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    # init_weights logs every parameter at INFO: keep the table readable.
    MMLogger.get_current_instance().setLevel(logging.WARNING)
    torch.manual_seed(0)
    print(
        f"torch {torch.__version__}, {args.threads} threads, batch {args.batch} at 160 px, "
        f"median of {args.repeats} interleaved rounds"
    )
    print("| detector | distill step (ms) | student step (ms) | teacher fwd (ms) | overhead |")
    print("|---|---|---|---|---|")
    for det in args.detectors:
        m = measure(det, args.repeats, args.batch)
        print(
            f"| {det} | {1e3 * m['distill']:.1f} | {1e3 * m['student']:.1f} | "
            f"{1e3 * m['teacher']:.1f} | {m['overhead']:.3f} |"
        )


if __name__ == "__main__":
    main()
