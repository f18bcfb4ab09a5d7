"""Vectorised prediction-guided weights vs a per-GT Python loop (CPU, float32).

A CrowdHuman-like image: 1333 x 800 input, FPN strides 8..128, one prior per
location at ``((j + 0.5) * s, (i + 0.5) * s)`` (about 22,300 priors), one class,
and G = 7, 23 and 120 pedestrian-shaped GT boxes. The loop baseline is written
the way the reference code does it (one GT at a time with torch ops, scatter
with a running max); both are checked to agree before they are timed.

    python bench/bench_regions.py [--repeats 20] [--threads 1] [--gts 7 23 120]
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from pgd_core.distill.regions import prediction_guided_weights  # noqa: E402

IMAGE_W, IMAGE_H = 1333, 800
STRIDES = (8, 16, 32, 64, 128)
TOPK, ALPHA = 30, 0.8  # FCOS/DDOD K and the cls-map quality exponent
RIDGE, EPS = 1e-3, 1e-10


def prior_centres() -> Tensor:
    """Tensor[N, 2]: (x, y) of every location of every level, P3 first."""
    levels = []
    for s in STRIDES:
        xs = (torch.arange(math.ceil(IMAGE_W / s)) + 0.5) * s
        ys = (torch.arange(math.ceil(IMAGE_H / s)) + 0.5) * s
        yy, xx = torch.meshgrid(ys, xs, indexing="ij")
        levels.append(torch.stack([xx.reshape(-1), yy.reshape(-1)], dim=1))
    return torch.cat(levels)


def random_gts(num: int, gen: torch.Generator) -> Tensor:
    """Tensor[G, 4]: pedestrian-shaped boxes (height 1.5-3x the width) in the image."""
    w = 20 + 180 * torch.rand(num, generator=gen)
    h = (w * (1.5 + 1.5 * torch.rand(num, generator=gen))).clamp(max=IMAGE_H - 1)
    x1 = (IMAGE_W - w) * torch.rand(num, generator=gen)
    y1 = (IMAGE_H - h) * torch.rand(num, generator=gen)
    return torch.stack([x1, y1, x1 + w, y1 + h], dim=1)


def teacher_outputs(centres: Tensor, gts: Tensor, gen: torch.Generator) -> tuple[Tensor, Tensor]:
    """Random logits Tensor[N, 1] and boxes Tensor[N, 4] near the GTs.

    Each prior predicts its nearest GT (by centre distance), displaced by half the
    prior's offset from that GT's centre plus noise: priors near an object's centre
    predict it well, as a trained teacher would, so the top-K lie around the GTs.
    """
    gt_centres = (gts[:, :2] + gts[:, 2:]) / 2
    owner = torch.cdist(centres, gt_centres).argmin(dim=1)
    base = gts[owner]
    size = (base[:, 2:] - base[:, :2]).repeat(1, 2)
    shift = 0.5 * (centres - gt_centres[owner]).repeat(1, 2)
    boxes = base + shift + 0.1 * size * torch.randn(centres.shape[0], 4, generator=gen)
    boxes = torch.cat([boxes[:, :2], torch.maximum(boxes[:, 2:], boxes[:, :2] + 1)], dim=1)
    return torch.randn(centres.shape[0], 1, generator=gen), boxes


def _iou_with_one(boxes: Tensor, gt: Tensor) -> Tensor:
    """Tensor[N]: IoU of boxes (Tensor[N, 4]) with one box gt (Tensor[4])."""
    wh = (torch.minimum(boxes[:, 2:], gt[2:]) - torch.maximum(boxes[:, :2], gt[:2])).clamp(min=0)
    inter = wh[:, 0] * wh[:, 1]
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    union = area + (gt[2] - gt[0]) * (gt[3] - gt[1]) - inter
    return inter / union.clamp(min=1e-12)


def loop_weights(
    centres: Tensor,
    logits: Tensor,
    boxes: Tensor,
    gts: Tensor,
    labels: Tensor,
    *,
    alpha: float,
    topk: int,
) -> Tensor:
    """The per-GT loop baseline (reference-code style). Returns Tensor[N]."""
    weights = centres.new_zeros(centres.shape[0])
    scores = logits.sigmoid()
    k = min(topk, centres.shape[0])
    eye = torch.eye(2, dtype=torch.float64)
    for j in range(gts.shape[0]):
        gt = gts[j]
        quality = scores[:, labels[j]].pow(1 - alpha) * _iou_with_one(boxes, gt).pow(alpha)
        idx = quality.topk(k).indices
        pts = centres[idx]
        # float64 for the K x 2 fit (free at this size): Sigma is ill-conditioned
        # when the K centres are collinear, and float32 would then disagree.
        pts64 = pts.double()
        dev = pts64 - pts64.mean(dim=0)
        cov = dev.T @ dev / k + RIDGE * eye
        w = torch.exp(-0.5 * ((dev @ torch.linalg.inv(cov)) * dev).sum(dim=1)).to(pts.dtype)
        inside = (
            (pts[:, 0] - gt[0] > EPS)
            & (pts[:, 1] - gt[1] > EPS)
            & (gt[2] - pts[:, 0] > EPS)
            & (gt[3] - pts[:, 1] > EPS)
        )
        weights[idx] = torch.maximum(weights[idx], w * inside)
    return weights


def median_seconds(fn, repeats: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def run_one(num_gts: int, repeats: int, seed: int = 0) -> dict[str, float]:
    gen = torch.Generator().manual_seed(seed)
    centres = prior_centres()
    gts = random_gts(num_gts, gen)
    logits, boxes = teacher_outputs(centres, gts, gen)
    labels = torch.zeros(num_gts, dtype=torch.int64)
    args = (centres, logits, boxes, gts, labels)

    def vec():
        return prediction_guided_weights(*args, alpha=ALPHA, topk=TOPK)

    def loop():
        return loop_weights(*args, alpha=ALPHA, topk=TOPK)

    with torch.no_grad():
        w_vec, w_loop = vec(), loop()
        max_diff = (w_vec - w_loop).abs().max().item()
        if not torch.allclose(w_vec, w_loop, rtol=1e-4, atol=1e-5):
            raise SystemExit(
                f"G={num_gts}: loop and vectorised weights differ (max {max_diff:.3g})"
            )
        t_vec = median_seconds(vec, repeats)
        t_loop = median_seconds(loop, repeats)
    return dict(
        n=centres.shape[0],
        g=num_gts,
        nonzero=int((w_vec > 0).sum()),
        max_diff=max_diff,
        loop_ms=1e3 * t_loop,
        vec_ms=1e3 * t_vec,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--gts", type=int, nargs="+", default=[7, 23, 120])
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(
        f"torch {torch.__version__}, float32, threads={torch.get_num_threads()} (both), "
        f"K={TOPK}, repeats={args.repeats}\n"
    )
    print(
        "| N priors | G | non-zero weights | max abs diff | loop ms | vectorised ms "
        "| loop / vectorised |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for g in args.gts:
        r = run_one(g, args.repeats)
        print(
            f"| {r['n']} | {r['g']} | {r['nonzero']} | {r['max_diff']:.1e} | {r['loop_ms']:.2f} "
            f"| {r['vec_ms']:.2f} | {r['loop_ms'] / r['vec_ms']:.1f}x |"
        )


if __name__ == "__main__":
    main()
