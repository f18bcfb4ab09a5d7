"""CrowdHuman evaluation time: mmdet 3.3's CrowdHumanMetric vs pgd_core's crowdhuman_metrics.

Synthetic CrowdHuman-like data generated here: images of 600-1000 x 450-800
pixels with 20-40 upright person boxes (aspect ~0.4, some crossing the image
border, ~8 % flagged ``extra.ignore``) and 0-2 ``mask`` regions each, and
100 detections per image: jittered copies of 90 % of the persons (20 % a
second time, as NMS leaves in crowds), most mask regions, and random false
positives, scored so that first detections of persons tend to rank first.
Both evaluators get the same annotation file and the same float32 boxes and
scores, in the same process.

Timings: ours covers reading the .odgt file, validating the detections and
the whole evaluation (best of ``--repeats``); mmdet's covers ``process()``
plus ``compute_metrics()`` with its defaults (JI in 10 worker processes), as
a validation loop runs it. mmdet rounds its output to 4 decimals, so the
unrounded values are recomputed from its internals (untimed) for the
comparison: MR and AP must be identical; JI is never below mmdet's (see
pgd_core.evaluation.crowdhuman: mmdet's choice among maximum matchings is
arbitrary) and equal when no ignore region is involved.

    python bench/bench_crowdhuman_eval.py [--images 1000] [--seed 0] [--repeats 3]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import os
import queue
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from pgd_core.evaluation.crowdhuman import crowdhuman_metrics  # noqa: E402

DETS_PER_IMAGE = 100


def person_boxes(rng: np.random.Generator, count: int, width: int, height: int) -> np.ndarray:
    """float64[count, 4] xywh upright boxes in 1-3 overlapping groups, some past the border."""
    centres = rng.uniform(0.1, 0.9, size=3) * width
    group = rng.integers(0, 3, size=count)
    h = rng.uniform(0.15, 0.6, size=count) * height
    w = h * rng.uniform(0.36, 0.46, size=count)
    cx = centres[group] + rng.normal(0.0, 0.12 * width, size=count)
    feet = rng.uniform(0.4, 1.1, size=count) * height
    boxes = np.stack([cx - w / 2, feet - h, w, h], axis=1).round()
    boxes[:, 2:] = np.maximum(boxes[:, 2:], 2.0)
    return boxes


def gt_entry(box: list[float], tag: str = "person", ignore: int = 0) -> dict:
    return {"tag": tag, "fbox": box, "vbox": box, "hbox": box, "extra": {"ignore": ignore}}


def detections_for(
    rng: np.random.Generator, persons: np.ndarray, masks: np.ndarray, width: int, height: int
) -> tuple[np.ndarray, np.ndarray]:
    """float32[N, 4] xyxy boxes and float32[N] scores, N = DETS_PER_IMAGE.

    Found persons score high, the duplicates NMS left in the crowd and boxes
    on ignore regions lower, random false positives lowest.
    """
    found = persons[rng.random(len(persons)) < 0.9]
    twice = persons[rng.random(len(persons)) < 0.2]
    on_masks = masks[rng.random(len(masks)) < 0.7]
    real = np.concatenate([found, twice, on_masks])
    real = real + rng.normal(0.0, 0.07, real.shape) * np.tile(real[:, 2:], 2)
    n_fp = max(0, DETS_PER_IMAGE - len(real))
    fp_h = rng.uniform(0.05, 0.5, n_fp) * height
    fp = np.stack(
        [
            rng.uniform(-20, width, n_fp),
            rng.uniform(-20, height, n_fp),
            fp_h * rng.uniform(0.3, 0.6, n_fp),
            fp_h,
        ],
        axis=1,
    )
    boxes = np.concatenate([real, fp])[:DETS_PER_IMAGE]
    boxes[:, 2:] = np.abs(boxes[:, 2:]) + 1.0
    scores = np.concatenate(
        [
            rng.beta(6, 1.5, len(found)),
            rng.beta(2, 4, len(twice)),
            rng.beta(2, 3, len(on_masks)),
            rng.beta(1, 12, n_fp),
        ]
    )
    xyxy = np.concatenate([boxes[:, :2], boxes[:, :2] + boxes[:, 2:]], axis=1)
    return xyxy.astype(np.float32), scores[: len(boxes)].astype(np.float32)


def make_data(num_images: int, seed: int) -> tuple[list[str], dict, list[tuple]]:
    """odgt lines, {ID: (width, height)}, and per image (ID, width, height, xyxy, scores)."""
    rng = np.random.default_rng(seed)
    lines, sizes, predictions = [], {}, []
    for index in range(num_images):
        image_id = f"{index:06d},{int(rng.integers(0, 16**15)):015x}"
        width, height = int(rng.integers(600, 1001)), int(rng.integers(450, 801))
        persons = person_boxes(rng, int(rng.integers(20, 41)), width, height)
        flags = (rng.random(len(persons)) < 0.08).astype(int)
        n_masks = int(rng.integers(0, 3))
        masks = np.concatenate(
            [
                rng.uniform(0.0, 0.7, (n_masks, 2)) * (width, height),
                rng.uniform(0.1, 0.3, (n_masks, 2)) * (width, height),
            ],
            axis=1,
        ).round()
        gtboxes = [gt_entry(b.tolist(), ignore=int(f)) for b, f in zip(persons, flags, strict=True)]
        gtboxes += [gt_entry(b.tolist(), tag="mask", ignore=1) for b in masks]
        lines.append(json.dumps({"ID": image_id, "gtboxes": gtboxes}))
        sizes[image_id] = (width, height)
        xyxy, scores = detections_for(rng, persons, masks, width, height)
        predictions.append((image_id, width, height, xyxy, scores))
    return lines, sizes, predictions


def our_detections(predictions: list[tuple]) -> list[dict]:
    """COCO-style dicts whose x + w gives back the float32 x2 exactly, as mmdet's dump does."""
    out = []
    for image_id, _, _, xyxy, scores in predictions:
        for (x1, y1, x2, y2), score in zip(xyxy.tolist(), scores.tolist(), strict=True):
            out.append(
                {
                    "image_id": image_id,
                    "category_id": 1,
                    "bbox": [x1, y1, x2 - x1, y2 - y1],
                    "score": score,
                }
            )
    return out


def mmdet_samples(predictions: list[tuple]) -> list[dict]:
    import torch

    return [
        {
            "img_id": image_id,
            "ori_shape": (height, width),
            "pred_instances": {
                "bboxes": torch.from_numpy(xyxy),
                "scores": torch.from_numpy(scores),
            },
        }
        for image_id, width, height, xyxy, scores in predictions
    ]


def run_mmdet(ann_file: str, samples: list[dict]) -> tuple[float, dict]:
    """Seconds for process() + compute_metrics() with defaults, and its (rounded) result."""
    from mmdet.evaluation.metrics import CrowdHumanMetric

    metric = CrowdHumanMetric(ann_file=ann_file)
    start = time.perf_counter()
    metric.process({}, samples)
    result = metric.compute_metrics(metric.results)
    return time.perf_counter() - start, result


def mmdet_unrounded(ann_file: str, samples: list[dict], tmp: str) -> dict[str, float]:
    """mmdet's MR, AP, JI in percent without its 4-decimal rounding (JI in-process)."""
    from mmdet.evaluation.metrics import CrowdHumanMetric

    metric = CrowdHumanMetric(ann_file=ann_file)
    metric.process({}, samples)
    evals = metric.load_eval_samples(metric.results2json(metric.results, f"{tmp}/raw"))
    matches = metric.compare(evals)
    num_gt = sum(s.gt_num - s.ign_num for s in evals.values())
    ji = []
    for t in range(10):
        results: queue.Queue = queue.Queue()
        metric.compute_ji_with_ignore(results, evals, 0.1 * t)
        ji.append(metric.gather([results.get() for _ in evals])[1])
    return {
        "MR": 100 * metric.eval_mr(matches, num_gt, len(evals)),
        "AP": 100 * metric.eval_ap(matches, num_gt, len(evals)),
        "JI": 100 * max(ji),
    }


def time_ours(
    ann_file: str, detections: list[dict], sizes: dict, repeats: int
) -> tuple[float, dict]:
    best, metrics = float("inf"), {}
    for _ in range(repeats):
        start = time.perf_counter()
        metrics = crowdhuman_metrics(ann_file, detections, image_sizes=sizes)
        best = min(best, time.perf_counter() - start)
    return best, metrics


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    logging.getLogger("mmengine").setLevel(logging.WARNING)
    lines, sizes, predictions = make_data(args.images, args.seed)
    detections, samples = our_detections(predictions), mmdet_samples(predictions)
    with tempfile.TemporaryDirectory() as tmp:
        ann_file = os.path.join(tmp, "val.odgt")
        Path(ann_file).write_text("\n".join(lines) + "\n", encoding="utf-8")
        t_ours, ours = time_ours(ann_file, detections, sizes, args.repeats)
        with contextlib.redirect_stdout(io.StringIO()):  # mmengine's progress output
            t_mmdet, rounded = run_mmdet(ann_file, samples)
            theirs = mmdet_unrounded(ann_file, samples, tmp)
    num_gt = sum(line.count('"person"') for line in lines)
    print(
        f"{args.images} images, {num_gt} person boxes (incl. flagged), "
        f"{len(detections)} detections, seed {args.seed}\n"
    )
    print("| evaluator | time (s) | MR^-2 (%) | AP (%) | JI (%) |")
    print("|---|---:|---:|---:|---:|")
    print(
        f"| mmdet 3.3 CrowdHumanMetric | {t_mmdet:.2f} | {theirs['MR']:.6f} | "
        f"{theirs['AP']:.6f} | {theirs['JI']:.6f} |"
    )
    print(
        f"| pgd_core crowdhuman_metrics | {t_ours:.2f} | {ours['MR']:.6f} | "
        f"{ours['AP']:.6f} | {ours['JI']:.6f} |"
    )
    print(
        f"| difference (ours - mmdet) | x{t_mmdet / t_ours:.1f} faster | "
        f"{ours['MR'] - theirs['MR']:.1e} | {ours['AP'] - theirs['AP']:.1e} | "
        f"{ours['JI'] - theirs['JI']:+.1e} |"
    )
    print(f"\nmmdet's rounded output: {dict(rounded)}")
    same = abs(ours["MR"] - theirs["MR"]) < 1e-6 and abs(ours["AP"] - theirs["AP"]) < 1e-6
    ji_ok = ours["JI"] >= theirs["JI"] - 1e-4  # 1e-4 % = mmdet's 1e-6 denominator epsilon
    print(f"MR and AP identical (1e-6): {same}; JI >= mmdet's: {ji_ok}")
    if not (same and ji_ok):
        sys.exit(1)


if __name__ == "__main__":
    main()
