"""COCO bbox evaluation time: pycocotools vs pgd_core's coco_bbox_metrics (faster-coco-eval).

Synthetic COCO-like data generated here: 80 categories, 640 x 480 images with
1-15 ground-truth boxes of all three COCO sizes, and exactly 100 detections
per image (jittered copies of the GT, some with the wrong class, plus random
false positives, scored so that true positives tend to rank first). Both
evaluators get the same annotation file and detection list in the same
process, and the twelve metrics they report are compared.

Each timing covers loading the annotation file, loading the detections and
evaluate + accumulate + summarize (what a caller waits for). Printing is
swallowed for both.

    python bench/bench_coco_eval.py [--images 1000 5000] [--seed 0]
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from pgd_core.evaluation.coco import (  # noqa: E402
    METRIC_KEYS,
    _detections_to_results,
    _gc_paused,
    coco_bbox_metrics,
)

NUM_CATEGORIES = 80
DETS_PER_IMAGE = 100
IMAGE_W, IMAGE_H = 640.0, 480.0


def random_boxes(rng: np.random.Generator, n: int) -> np.ndarray:
    """Array[n, 4] of xywh boxes inside the image; log-uniform sides cover small to large."""
    wh = np.exp(rng.uniform(np.log(6.0), np.log(300.0), size=(n, 2)))
    xy = rng.uniform(0.0, 1.0, size=(n, 2)) * ([IMAGE_W, IMAGE_H] - wh)
    return np.concatenate([xy, wh], axis=1)


def make_data(num_images: int, seed: int) -> tuple[dict, list[dict]]:
    """A COCO instances dict and exactly DETS_PER_IMAGE detections for every image."""
    rng = np.random.default_rng(seed)
    images, annotations, detections = [], [], []
    for image_id in range(1, num_images + 1):
        images.append({"id": image_id, "width": int(IMAGE_W), "height": int(IMAGE_H)})
        n_gt = int(rng.integers(1, 16))
        gt_boxes = random_boxes(rng, n_gt)
        gt_cats = rng.integers(1, NUM_CATEGORIES + 1, size=n_gt)
        for box, cat in zip(gt_boxes, gt_cats):
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": int(cat),
                    "bbox": box.tolist(),
                    "area": float(box[2] * box[3] * rng.uniform(0.6, 1.0)),
                    "iscrowd": 0,
                }
            )
        detections.extend(image_detections(rng, image_id, gt_boxes, gt_cats))
    categories = [{"id": c, "name": f"class_{c}"} for c in range(1, NUM_CATEGORIES + 1)]
    return {"images": images, "annotations": annotations, "categories": categories}, detections


def image_detections(
    rng: np.random.Generator, image_id: int, gt_boxes: np.ndarray, gt_cats: np.ndarray
) -> list[dict]:
    """Two jittered copies per GT (10% with a random class) and random false positives."""
    copies = np.repeat(gt_boxes, 2, axis=0)
    scale = rng.uniform(0.01, 0.2, size=(len(copies), 1))
    shift = rng.normal(0.0, 1.0, size=(len(copies), 2)) * scale * copies[:, 2:]
    size = copies[:, 2:] * np.exp(rng.normal(0.0, 1.0, size=(len(copies), 2)) * scale)
    tp_boxes = np.concatenate([copies[:, :2] + shift, size], axis=1)
    tp_cats = np.repeat(gt_cats, 2)
    wrong = rng.random(len(tp_cats)) < 0.1
    tp_cats[wrong] = rng.integers(1, NUM_CATEGORIES + 1, size=int(wrong.sum()))
    n_fp = DETS_PER_IMAGE - len(tp_boxes)
    boxes = np.concatenate([tp_boxes, random_boxes(rng, n_fp)])
    cats = np.concatenate([tp_cats, rng.integers(1, NUM_CATEGORIES + 1, size=n_fp)])
    scores = np.concatenate([rng.uniform(0.2, 1.0, len(tp_boxes)), rng.uniform(0.0, 0.8, n_fp)])
    return [
        {"image_id": image_id, "category_id": int(c), "bbox": b, "score": float(s)}
        for b, c, s in zip(boxes.tolist(), cats, scores)
    ]


def pycocotools_metrics(ann_file: Path, detections: list[dict]) -> dict[str, float]:
    """The reference: pycocotools COCO + loadRes + COCOeval, stats in percent (-1 kept)."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(ann_file))
        evaluator = COCOeval(gt, gt.loadRes(detections), "bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return {
        k: (-1.0 if v == -1 else 100.0 * float(v))
        for k, v in zip(METRIC_KEYS, evaluator.stats[:12])
    }


def timed(fn, *args):  # noqa: ANN001, ANN201 - tiny helper
    """(result, seconds) of one call."""
    start = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - start


def bench_one(num_images: int, seed: int, workdir: Path) -> dict:
    """Time both evaluators on one synthetic set and compare their metrics."""
    gt, detections = make_data(num_images, seed)
    ann_file = workdir / f"instances_{num_images}.json"
    ann_file.write_text(json.dumps(gt))
    reference_input = copy.deepcopy(detections)  # loadRes mutates its input
    ref, t_ref = timed(pycocotools_metrics, ann_file, reference_input)
    ours, t_ours = timed(coco_bbox_metrics, ann_file, detections)
    image_ids = {img["id"] for img in gt["images"]}
    category_ids = {cat["id"] for cat in gt["categories"]}
    with _gc_paused():  # as inside coco_bbox_metrics
        _, t_validate = timed(_detections_to_results, detections, image_ids, category_ids)
    return {
        "images": num_images,
        "detections": len(detections),
        "gts": len(gt["annotations"]),
        "t_ref": t_ref,
        "t_ours": t_ours,
        "t_validate": t_validate,
        "max_diff": max(abs(ours[k] - ref[k]) for k in METRIC_KEYS),
        "identical": ours == ref,
        "ap": ours["AP"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, nargs="+", default=[1000, 5000])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.images:
            rows.append(bench_one(n, args.seed, Path(tmp)))
            print(f"done {n} images", file=sys.stderr, flush=True)
    print(
        "| images | detections | GT boxes | pycocotools (s) | coco_bbox_metrics (s) "
        "| of which input checks (s) | speed-up | max abs diff (pct pts) | bit-identical | AP |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|:---:|---:|")
    for r in rows:
        print(
            f"| {r['images']:,} | {r['detections']:,} | {r['gts']:,} | {r['t_ref']:.2f} "
            f"| {r['t_ours']:.2f} | {r['t_validate']:.2f} | {r['t_ref'] / r['t_ours']:.1f}x "
            f"| {r['max_diff']:.1e} | {'yes' if r['identical'] else 'no'} | {r['ap']:.2f} |"
        )


if __name__ == "__main__":
    main()
