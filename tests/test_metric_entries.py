"""The mmengine metrics keep one entry per image, so mmengine's ``evaluate(size)``
scores every detection, on one process and gathered over distributed ranks.

The oracle is pycocotools (COCO) / mmdet 3.3's CrowdHumanMetric (CrowdHuman) on
all the detections, called directly, never through the metric under test.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from pgd_core.evaluation.evaluators import PGDCocoMetric, PGDCrowdHumanMetric

CLASSES = ("rectangle", "ellipse")
CATEGORY_IDS = (4, 9)  # not 0..C-1, so a label/id mix-up cannot pass
N_IMAGES = 5  # odd: two ranks get one padded (repeated) sample


def _ground_truth(path: Path) -> list[dict]:
    """A COCO file of 5 images and, per image, 12 detections around its boxes."""
    rng = np.random.default_rng(3)
    images, annotations, samples = [], [], []
    for i in range(N_IMAGES):
        image_id = 100 + 7 * i
        images.append({"id": image_id, "width": 200, "height": 160, "file_name": f"{i}.jpg"})
        boxes, labels, scores = [], [], []
        for _ in range(3):
            x, y = rng.uniform(0, 120, 2)
            w, h = rng.uniform(15, 60, 2)
            label = int(rng.integers(0, 2))
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": CATEGORY_IDS[label],
                    "bbox": [x, y, w, h],
                    "area": w * h,
                    "iscrowd": 0,
                }
            )
            for _ in range(4):  # one good, three worse predictions per box
                dx, dy = rng.normal(0, 4, 2)
                boxes.append([x + dx, y + dy, x + dx + w, y + dy + h])
                labels.append(label if rng.random() < 0.8 else 1 - label)
                scores.append(float(rng.uniform(0.05, 1.0)))
        samples.append(
            {
                "img_id": image_id,
                "ori_shape": (160, 200),
                "pred_instances": {
                    "bboxes": torch.tensor(boxes, dtype=torch.float32),
                    "labels": torch.tensor(labels),
                    "scores": torch.tensor(scores),
                },
            }
        )
    categories = [{"id": c, "name": n} for c, n in zip(CATEGORY_IDS, CLASSES)]
    path.write_text(
        json.dumps({"images": images, "annotations": annotations, "categories": categories})
    )
    return samples


def _pycocotools_ap(ann_file: Path, samples: list[dict]) -> float:
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    records = []
    for s in samples:
        p = s["pred_instances"]
        for (x1, y1, x2, y2), label, score in zip(
            p["bboxes"].tolist(), p["labels"].tolist(), p["scores"].tolist()
        ):
            records.append(
                {
                    "image_id": s["img_id"],
                    "category_id": CATEGORY_IDS[label],
                    "bbox": [x1, y1, x2 - x1, y2 - y1],
                    "score": score,
                }
            )
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(ann_file))
        ev = COCOeval(gt, gt.loadRes(records), "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return 100.0 * float(ev.stats[0])


def _coco_metric(ann_file: Path) -> PGDCocoMetric:
    metric = PGDCocoMetric(ann_file=str(ann_file))
    metric.dataset_meta = {"classes": CLASSES}
    return metric


def test_coco_metric_scores_every_detection_of_every_image(tmp_path: Path):
    ann_file = tmp_path / "val.json"
    samples = _ground_truth(ann_file)
    metric = _coco_metric(ann_file)
    for start in range(0, N_IMAGES, 2):  # batches of 2, as a loader would give them
        metric.process({}, samples[start : start + 2])
    assert len(metric.results) == N_IMAGES  # what mmengine's evaluate(size) slices
    metrics = metric.evaluate(N_IMAGES)
    expected = _pycocotools_ap(ann_file, samples)
    assert expected > 10.0  # a real score: a truncated result set could not reach it
    assert metrics["pgd/AP"] == pytest.approx(expected, abs=1e-6)


# --------------------------------------------------------------- distributed


def _rank_main(rank: int, world: int, init_file: str, ann_file: str, out: str, kind: str) -> None:
    from mmengine.dataset import DefaultSampler

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        # Deterministic: the same samples on every rank.
        samples = _for(kind, _ground_truth(Path(ann_file)))
        # mmengine's own sampler: it pads the index list to a multiple of the
        # world size, so one image is evaluated twice before the gather.
        sampler = DefaultSampler(list(range(N_IMAGES)), shuffle=False)
        metric = _make_metric(kind, Path(ann_file))
        for index in sampler:
            metric.process({}, [samples[index]])
        metrics = metric.evaluate(N_IMAGES)
        if rank == 0:
            Path(out).write_text(json.dumps(metrics))
    finally:
        dist.destroy_process_group()


def _make_metric(kind: str, ann_file: Path):  # noqa: ANN202 - one of two metric types
    if kind == "coco":
        return _coco_metric(ann_file)
    odgt = ann_file.with_suffix(".odgt")
    _write_odgt(ann_file, odgt)
    return PGDCrowdHumanMetric(ann_file=str(odgt))


def _for(kind: str, samples: list[dict]) -> list[dict]:
    """CrowdHuman image ids are strings."""
    return samples if kind == "coco" else [dict(s, img_id=str(s["img_id"])) for s in samples]


def _write_odgt(coco_file: Path, odgt: Path) -> None:
    """The same boxes as people in CrowdHuman's odgt format (IDs as strings)."""
    data = json.loads(coco_file.read_text())
    lines = []
    for image in data["images"]:
        boxes = [
            {"tag": "person", "fbox": a["bbox"], "vbox": a["bbox"], "hbox": a["bbox"], "extra": {}}
            for a in data["annotations"]
            if a["image_id"] == image["id"]
        ]
        lines.append(json.dumps({"ID": str(image["id"]), "gtboxes": boxes}))
    odgt.write_text("\n".join(lines) + "\n")


def _run_two_ranks(tmp_path: Path, kind: str) -> dict:
    ann_file = tmp_path / "val.json"
    _ground_truth(ann_file)
    out = tmp_path / "metrics.json"
    ctx = mp.get_context("spawn")
    procs = [
        ctx.Process(
            target=_rank_main,
            args=(rank, 2, str(tmp_path / "init"), str(ann_file), str(out), kind),
        )
        for rank in range(2)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0, 0]
    return json.loads(out.read_text())


def _one_process(tmp_path: Path, kind: str) -> dict:
    ann_file = tmp_path / "single" / "val.json"
    ann_file.parent.mkdir()
    samples = _for(kind, _ground_truth(ann_file))
    metric = _make_metric(kind, ann_file)
    metric.process({}, samples)
    return metric.evaluate(N_IMAGES)


@pytest.mark.parametrize("kind", ["coco", "crowdhuman"])
def test_two_gloo_ranks_give_exactly_the_numbers_of_one_process(tmp_path: Path, kind: str):
    """5 images over 2 ranks: the sampler repeats one, the gather must drop it and
    keep every other image once."""
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    gathered = _run_two_ranks(tmp_path, kind)
    single = _one_process(tmp_path, kind)
    assert gathered == single
    if kind == "coco":
        samples = _ground_truth(tmp_path / "oracle.json")
        assert single["pgd/AP"] == pytest.approx(
            _pycocotools_ap(tmp_path / "oracle.json", samples), abs=1e-6
        )


def test_crowdhuman_metric_equals_mmdet_on_every_image(tmp_path: Path):
    from mmdet.evaluation.metrics import CrowdHumanMetric

    ann_file = tmp_path / "val.json"
    samples = _for("crowdhuman", _ground_truth(ann_file))
    metric = _make_metric("crowdhuman", ann_file)
    for start in range(0, N_IMAGES, 2):
        metric.process({}, samples[start : start + 2])
    assert len(metric.results) == N_IMAGES
    ours = metric.evaluate(N_IMAGES)
    theirs = CrowdHumanMetric(ann_file=str(ann_file.with_suffix(".odgt")), num_ji_process=1)
    theirs.process({}, samples)
    reference = theirs.evaluate(N_IMAGES)
    # mmdet rounds its fractions to 4 decimals (0.01 in percent); no ignore
    # regions here, so JI has one value (docs/evaluation.md).
    for ours_key, theirs_key in (("MR", "mMR"), ("AP", "mAP"), ("JI", "JI")):
        expected = 100 * reference[f"crowd_human/{theirs_key}"]
        assert ours[f"pgd/{ours_key}"] == pytest.approx(expected, abs=0.005 + 1e-9)
