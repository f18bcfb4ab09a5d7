"""Independent paths to the numbers a user reads, for the end-to-end checks.

Nothing here goes through pgd_core's runner, metrics or evaluators: a model is
rebuilt from the run's own dumped mmengine config with mmdet's
``init_detector``, its predictions come from mmdet's ``inference_detector``
one image file at a time, and they are scored by pycocotools (COCO) or by
mmdet 3.3's ``CrowdHumanMetric`` (CrowdHuman).
"""

from __future__ import annotations

import contextlib
import io
import json
import re
from pathlib import Path
from typing import Any

import numpy as np

#: mmdet's class name of each detector family, written out here rather than
#: read from pgd_core, so a wrong mapping there cannot hide.
MMDET_TYPES = {
    "fcos": "FCOS",
    "atss": "ATSS",
    "gfl": "GFL",
    "autoassign": "AutoAssign",
    "ddod": "DDOD",
}
_DISTILLER_KEYS = ("teacher", "teacher_checkpoint", "distill")


def dumped_config(work_dir: Path) -> Path:
    """The config mmengine's Runner wrote into ``work_dir`` (``<timestamp>.py``)."""
    found = sorted(
        p for p in Path(work_dir).glob("*.py") if re.fullmatch(r"\d{8}_\d{6}\.py", p.name)
    )
    assert found, f"no dumped config in {work_dir}: {sorted(p.name for p in work_dir.iterdir())}"
    return found[-1]


def student_model(config: Path, checkpoint: Path, detector: str) -> Any:
    """The deployed model: the run's config, a distiller reduced to its plain
    student detector, weights loaded strictly (a key mismatch fails here)."""
    import torch
    from mmdet.apis import init_detector
    from mmengine.config import Config

    import pgd_core.compat  # noqa: F401  (torch >= 2.6 checkpoint loading only)

    cfg = Config.fromfile(str(config))
    model_cfg = dict(cfg.model)
    for key in _DISTILLER_KEYS:
        model_cfg.pop(key, None)
    model_cfg["type"] = MMDET_TYPES[detector]
    cfg.model = model_cfg
    model = init_detector(cfg, None, device="cpu")
    state = torch.load(str(checkpoint), map_location="cpu", weights_only=False)["state_dict"]
    model.load_state_dict(state, strict=True)
    return model.eval()


def predictions(model: Any, image_paths: list[Path]) -> list[Any]:
    """mmdet's inference API, one file at a time (boxes in original pixels)."""
    from mmdet.apis import inference_detector

    return [inference_detector(model, str(path)) for path in image_paths]


def coco_images(ann_file: Path, img_dir: Path) -> list[tuple[int, Path]]:
    data = json.loads(Path(ann_file).read_text())
    return [(img["id"], Path(img_dir) / img["file_name"]) for img in data["images"]]


def pycocotools_metrics(
    ann_file: Path, image_ids: list[int], samples: list[Any], classes: tuple[str, ...]
) -> dict[str, float]:
    """AP, AP50, AP75, APs, APm, APl in percent, as pycocotools prints them, and
    ``AP@0.50`` .. ``AP@0.95``: AP at each IoU threshold (area all, 100 detections)."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    gt_data = json.loads(Path(ann_file).read_text())
    category = {c["name"]: c["id"] for c in gt_data["categories"]}
    records = []
    for image_id, sample in zip(image_ids, samples):
        pred = sample.pred_instances
        for (x1, y1, x2, y2), score, label in zip(
            pred.bboxes.tolist(), pred.scores.tolist(), pred.labels.tolist()
        ):
            records.append(
                {
                    "image_id": image_id,
                    "category_id": category[classes[label]],
                    "bbox": [x1, y1, x2 - x1, y2 - y1],
                    "score": score,
                }
            )
    assert records, "the model predicted nothing: no score to compare"
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(ann_file))
        ev = COCOeval(gt, gt.loadRes(records), "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    names = ("AP", "AP50", "AP75", "APs", "APm", "APl")
    out = {name: 100.0 * float(v) for name, v in zip(names, ev.stats[:6])}
    precision = ev.eval["precision"][:, :, :, 0, 2]  # [T, R, K], area all, maxDets 100
    for t, iou in enumerate(ev.params.iouThrs):
        defined = precision[t][precision[t] > -1]
        out[f"AP@{iou:.2f}"] = 100.0 * float(defined.mean())
    return out


def coco_ap_of_run(
    work_dir: Path, checkpoint: Path, detector: str, ann_file: Path, img_dir: Path, classes
) -> dict[str, float]:
    """The whole independent path for a COCO-format run."""
    model = student_model(dumped_config(work_dir), checkpoint, detector)
    ids, paths = zip(*coco_images(ann_file, img_dir))
    return pycocotools_metrics(ann_file, list(ids), predictions(model, list(paths)), tuple(classes))


def mmdet_crowdhuman_metrics(odgt: Path, img_dir: Path, model: Any) -> dict[str, float]:
    """MR^-2, AP and JI in percent from mmdet 3.3's CrowdHumanMetric."""
    from mmdet.evaluation.metrics import CrowdHumanMetric

    records = [json.loads(line) for line in Path(odgt).read_text().splitlines() if line.strip()]
    metric = CrowdHumanMetric(ann_file=str(odgt), num_ji_process=1)
    for record in records:
        path = Path(img_dir) / f"{record['ID']}.jpg"
        sample = predictions(model, [path])[0]
        height, width = sample.ori_shape
        metric.process(
            {},
            [
                {
                    "img_id": record["ID"],
                    "ori_shape": (height, width),
                    "pred_instances": {
                        "bboxes": sample.pred_instances.bboxes,
                        "scores": sample.pred_instances.scores,
                    },
                }
            ],
        )
    out = metric.evaluate(len(records))
    return {
        "MR": 100.0 * out["crowd_human/mMR"],
        "AP": 100.0 * out["crowd_human/mAP"],
        "JI": 100.0 * out["crowd_human/JI"],
    }


def mean_over_window(values: dict[int, float], step: int, window: int) -> float:
    """The mean mmengine's LogProcessor logs at ``step``: the last ``window`` values."""
    taken = [values[s] for s in range(max(1, step - window + 1), step + 1)]
    return float(np.mean(taken))
