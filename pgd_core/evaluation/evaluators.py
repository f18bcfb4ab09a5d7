"""mmengine metrics that evaluate with pgd_core's own evaluators and write plots.

They replace mmdet's CocoMetric / CrowdHumanMetric in the runner: the same
numbers as pycocotools / the CrowdHuman protocol, computed much faster, plus a
PNG of the curves after every evaluation.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mmdet.registry import METRICS
from mmengine.evaluator import BaseMetric

from pgd_core.evaluation import (
    coco_evaluate,
    crowdhuman_evaluate,
    plot_coco_pr,
    plot_mr_fppi,
)

COCO_PLOT = "pr_curves.png"
CROWDHUMAN_PLOT = "mr_fppi.png"


def _detections(sample: dict[str, Any], category_of: Any) -> list[dict[str, Any]]:
    """One image's predictions as COCO-style records (bbox x, y, w, h in original pixels)."""
    pred = sample["pred_instances"]
    boxes = pred["bboxes"].cpu().double()
    xywh = boxes.clone()
    xywh[:, 2:] = boxes[:, 2:] - boxes[:, :2]
    return [
        {
            "image_id": sample["img_id"],
            "category_id": category_of(int(label)),
            "bbox": box,
            "score": float(score),
        }
        for box, score, label in zip(
            xywh.tolist(), pred["scores"].tolist(), pred["labels"].tolist()
        )
    ]


class ImageCountError(RuntimeError):
    """The gathered results hold an image twice or miss one (a sharded evaluation
    whose results were put back together wrongly): no number is computed."""


def check_each_image_once(image_ids: list[Any], expected: set[Any] | None = None) -> None:
    """Raise :class:`ImageCountError` unless every image appears exactly once (and,
    given ``expected``, exactly the images of the annotation file)."""
    seen: set[Any] = set()
    twice = []
    for image_id in image_ids:
        if image_id in seen:
            twice.append(image_id)
        seen.add(image_id)
    missing = sorted(expected - seen, key=str) if expected is not None else []
    extra = sorted(seen - expected, key=str) if expected is not None else []
    if twice or missing or extra:
        parts = []
        if twice:
            parts.append(f"{len(twice)} image(s) twice (first: {twice[0]!r})")
        if missing:
            parts.append(f"{len(missing)} image(s) missing (first: {missing[0]!r})")
        if extra:
            parts.append(f"{len(extra)} image(s) not in the annotations (first: {extra[0]!r})")
        raise ImageCountError("evaluation results: " + ", ".join(parts))


class _PlottingMetric(BaseMetric):
    default_prefix = "pgd"

    def __init__(self, ann_file: str, plot_dir: str | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.ann_file = ann_file
        self.plot_dir = Path(plot_dir) if plot_dir else None


@METRICS.register_module()
class PGDCocoMetric(_PlottingMetric):
    """COCO bbox AP / AR in percent (pycocotools' numbers, faster backend)."""

    def __init__(self, ann_file: str, plot_dir: str | None = None, **kwargs: Any) -> None:
        super().__init__(ann_file, plot_dir, **kwargs)
        annotations = json.loads(Path(ann_file).read_text())
        self._ids_by_name = {c["name"]: c["id"] for c in annotations["categories"]}
        self._image_ids = {image["id"] for image in annotations["images"]}

    def _category_of(self, label: int) -> int:
        # Labels index the dataset's class list, whose order is the manifest's.
        return self._ids_by_name[self.dataset_meta["classes"][label]]

    def process(self, data_batch: Any, data_samples: list[dict[str, Any]]) -> None:
        # One entry per image, never per detection: mmengine's evaluate(size)
        # keeps the first ``size`` (= number of images) entries of the gathered
        # results, to drop the samples a distributed sampler repeated.
        for sample in data_samples:
            self.results.append((sample["img_id"], _detections(sample, self._category_of)))

    def compute_metrics(self, results: list) -> dict[str, float]:
        # Results gathered from several ranks must still be each image once.
        check_each_image_once([image_id for image_id, _ in results], self._image_ids)
        detections = [d for _, per_image in results for d in per_image]
        evaluation = coco_evaluate(self.ann_file, detections)
        if self.plot_dir:
            plot_coco_pr(evaluation, self.plot_dir / COCO_PLOT)
        return dict(evaluation.metrics)


@METRICS.register_module()
class PGDCrowdHumanMetric(_PlottingMetric):
    """CrowdHuman MR^-2, AP and JI in percent (boxes clipped to each image)."""

    def process(self, data_batch: Any, data_samples: list[dict[str, Any]]) -> None:
        # One entry per image, as mmengine's evaluate(size) expects (see above).
        for sample in data_samples:
            height, width = sample["ori_shape"][:2]
            self.results.append(
                (sample["img_id"], (width, height), _detections(sample, lambda _label: 1))
            )

    def compute_metrics(self, results: list) -> dict[str, float]:
        check_each_image_once([image_id for image_id, _, _ in results])
        sizes = {image_id: size for image_id, size, _ in results}
        detections = [d for _, _, dets in results for d in dets]
        evaluation = crowdhuman_evaluate(self.ann_file, detections, image_sizes=sizes)
        if self.plot_dir:
            plot_mr_fppi(evaluation, self.plot_dir / CROWDHUMAN_PLOT)
        return dict(evaluation.metrics)
