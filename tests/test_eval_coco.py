"""COCO bbox evaluation: equal to pycocotools (imported here only) on randomised data."""

from __future__ import annotations

import contextlib
import copy
import gc
import io
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pgd_core.evaluation import (
    CocoEvaluation,
    EvaluationError,
    coco_bbox_metrics,
    coco_evaluate,
    plot_coco_pr,
)
from pgd_core.evaluation.coco import METRIC_KEYS

ROOT = Path(__file__).resolve().parents[1]
TOL = 1e-4
# Non-contiguous ids catch any id/index confusion; category 7 never has ground truth.
CATEGORY_IDS = (1, 3, 7, 10)
EMPTY_CATEGORY = 7
# Side ranges: with COCO areas of w*h*[0.6, 1], small and medium boxes never change band
# (42**2 * 0.6 > 32**2, 90**2 < 96**2); large ones may fall to medium, which is fine.
SIZE_RANGES = {"small": (4.0, 30.0), "medium": (42.0, 90.0), "large": (100.0, 300.0)}


# ----------------------------------------------------------------------------- synthetic data


def _random_box(
    rng: np.random.Generator, size: str, width: float = 640.0, height: float = 480.0
) -> list[float]:
    """A box whose sides fall in the named COCO size band, inside the image."""
    lo, hi = SIZE_RANGES[size]
    w, h = rng.uniform(lo, hi, size=2)
    x = rng.uniform(0.0, width - w)
    y = rng.uniform(0.0, height - h)
    return [float(x), float(y), float(w), float(h)]


def _jitter(rng: np.random.Generator, box: list[float], scale: float) -> list[float]:
    """Move and rescale a box by ``scale`` of its size (IoU with the original drops as it grows)."""
    x, y, w, h = box
    dx, dy = rng.normal(0.0, scale, size=2) * [w, h]
    sw, sh = np.exp(rng.normal(0.0, scale, size=2))
    return [float(x + dx), float(y + dy), float(w * sw), float(h * sh)]


def make_ground_truth(
    rng: np.random.Generator,
    n_images: int = 40,
    sizes: tuple[str, ...] = ("small", "medium", "large"),
    empty_image_frac: float = 0.2,
    max_boxes: int = 6,
    crowd_frac: float = 0.0,
) -> dict:
    """COCO instances dict: several categories (one without GT), some images without GT.

    ``crowd_frac`` of the boxes get iscrowd=1 (ignore regions), an extra check beyond iscrowd=0.
    """
    gt_categories = [c for c in CATEGORY_IDS if c != EMPTY_CATEGORY]
    images, annotations = [], []
    for i in range(n_images):
        image_id = 1000 + 3 * i
        images.append({"id": image_id, "width": 640, "height": 480, "file_name": f"{image_id}.jpg"})
        if rng.random() < empty_image_frac:
            continue
        for _ in range(int(rng.integers(1, max_boxes + 1))):
            box = _random_box(rng, str(rng.choice(sizes)))
            # COCO's area is the mask area, smaller than w*h: the area ranges must use it.
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": int(rng.choice(gt_categories)),
                    "bbox": box,
                    "area": box[2] * box[3] * float(rng.uniform(0.6, 1.0)),
                    "iscrowd": int(rng.random() < crowd_frac),
                }
            )
    categories = [{"id": c, "name": f"class_{c}", "supercategory": "thing"} for c in CATEGORY_IDS]
    return {"images": images, "annotations": annotations, "categories": categories}


def make_detections(
    rng: np.random.Generator,
    gt: dict,
    no_det_frac: float = 0.15,
    tie_scores: bool = False,
    crowded_image: bool = False,
) -> list[dict]:
    """Jittered GT boxes (some with the wrong class or duplicated) plus false positives.

    ``crowded_image`` adds 150 detections of one class to the first image with
    GT, so that (image, class) has more than maxDets=100 and the cut matters.
    """
    by_image: dict[int, list[dict]] = {img["id"]: [] for img in gt["images"]}
    for ann in gt["annotations"]:
        by_image[ann["image_id"]].append(ann)
    detections = []
    for image_id, anns in by_image.items():
        if rng.random() < no_det_frac:
            continue
        for ann in anns:
            for _ in range(int(rng.choice([0, 1, 1, 1, 2]))):  # missed, found, duplicated
                cat = ann["category_id"] if rng.random() < 0.9 else int(rng.choice(CATEGORY_IDS))
                # Near copies tend to score higher than false positives, as in a real
                # detector, so AP lands mid-range where errors would show.
                detections.append(
                    {
                        "image_id": image_id,
                        "category_id": cat,
                        "bbox": _jitter(rng, ann["bbox"], float(rng.uniform(0.01, 0.2))),
                        "score": float(rng.uniform(0.2, 1.0)),
                    }
                )
        for _ in range(int(rng.integers(0, 4))):
            size = str(rng.choice(list(SIZE_RANGES)))
            detections.append(
                {
                    "image_id": image_id,
                    "category_id": int(rng.choice(CATEGORY_IDS)),
                    "bbox": _random_box(rng, size),
                    "score": float(rng.uniform(0.0, 0.8)),
                }
            )
    if crowded_image:
        detections.extend(_crowd(rng, gt["annotations"][0]))
    if tie_scores:  # many equal scores: tie-breaking must follow pycocotools' stable sorts
        for det in detections:
            det["score"] = round(det["score"], 1)
    return detections


def _crowd(
    rng: np.random.Generator, ann: dict, n_random: int = 120, n_copies: int = 30
) -> list[dict]:
    """Many detections of one GT's class on its image.

    The random boxes outscore the near copies of the GT, so the copies rank
    past 100 and the maxDets cut decides whether that GT is found.
    """
    out = []
    for _ in range(n_random):
        out.append(
            {
                "image_id": ann["image_id"],
                "category_id": ann["category_id"],
                "bbox": _random_box(rng, "medium"),
                "score": float(rng.uniform(0.5, 1.0)),
            }
        )
    for _ in range(n_copies):
        out.append(
            {
                "image_id": ann["image_id"],
                "category_id": ann["category_id"],
                "bbox": _jitter(rng, ann["bbox"], 0.1),
                "score": float(rng.uniform(0.0, 0.5)),
            }
        )
    return out


def write_json(path: Path, data: object) -> Path:
    path.write_text(json.dumps(data))
    return path


# ----------------------------------------------------------------------------- reference


def pycocotools_eval(ann_file: Path, detections: list[dict]):  # noqa: ANN201 - pycocotools types
    """The reference COCOeval after summarize(), with all its printing swallowed."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(ann_file))
        if detections:
            dt = gt.loadRes(copy.deepcopy(detections))
        else:
            # loadRes indexes anns[0]; build the empty result set it would have built.
            dt = COCO()
            dt.dataset = {
                "images": list(gt.dataset["images"]),
                "annotations": [],
                "categories": copy.deepcopy(gt.dataset["categories"]),
            }
            dt.createIndex()
        evaluator = COCOeval(gt, dt, "bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return evaluator


def _ar_with_max_dets(ann_file: Path, detections: list[dict], max_dets: int) -> float:
    """pycocotools' AR at a larger maxDets, to show that the 100 cut is binding."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(ann_file))
        evaluator = COCOeval(gt, gt.loadRes(copy.deepcopy(detections)), "bbox")
        evaluator.params.maxDets = [1, 10, max_dets]
        evaluator.evaluate()
        evaluator.accumulate()
    recall = evaluator.eval["recall"][:, :, 0, -1]
    return 100.0 * float(recall[recall > -1].mean())


def reference_metrics(evaluator) -> dict[str, float]:  # noqa: ANN001
    return {
        key: (-1.0 if v == -1 else 100.0 * float(v))
        for key, v in zip(METRIC_KEYS, evaluator.stats[:12])
    }


def assert_metrics_close(ours: dict[str, float], ref: dict[str, float]) -> None:
    assert list(ours) == list(METRIC_KEYS)
    for key in METRIC_KEYS:
        assert isinstance(ours[key], float), key
        assert abs(ours[key] - ref[key]) <= TOL, (key, ours[key], ref[key])


# ----------------------------------------------------------------------------- parity


@pytest.mark.parametrize(
    "seed,kwargs,gt_kwargs",
    [
        (0, {}, {}),
        (1, {}, {}),
        (2, {"tie_scores": True}, {}),
        (3, {"crowded_image": True}, {}),
        (4, {"crowded_image": True, "tie_scores": True}, {}),
        (5, {"crowded_image": True}, {"crowd_frac": 0.2}),
    ],
)
def test_matches_pycocotools(tmp_path: Path, seed: int, kwargs: dict, gt_kwargs: dict) -> None:
    rng = np.random.default_rng(seed)
    gt = make_ground_truth(rng, **gt_kwargs)
    detections = make_detections(rng, gt, **kwargs)
    ann_file = write_json(tmp_path / "gt.json", gt)

    ours = coco_evaluate(ann_file, detections)
    ref = pycocotools_eval(ann_file, detections)

    assert_metrics_close(ours.metrics, reference_metrics(ref))
    # The whole PR array, not just the summaries (plots are drawn from it).
    np.testing.assert_allclose(ours.precision, ref.eval["precision"], atol=1e-12)
    np.testing.assert_allclose(ours.recall, ref.eval["recall"], atol=1e-12)
    assert 0.0 < ours.metrics["AP"] < 100.0


def test_crowded_image_exceeds_max_dets(tmp_path: Path) -> None:
    """The crowded case really has >100 detections on one image, so maxDets is exercised."""
    rng = np.random.default_rng(3)
    gt = make_ground_truth(rng)
    detections = make_detections(rng, gt, crowded_image=True)
    counts: dict[tuple[int, int], int] = {}
    for det in detections:
        key = (det["image_id"], det["category_id"])
        counts[key] = counts.get(key, 0) + 1
    assert max(counts.values()) > 100  # maxDets applies per (image, category)
    # ... and the cut changes the result: pycocotools with maxDets 1000 scores differently.
    ann_file = write_json(tmp_path / "gt.json", gt)
    assert coco_bbox_metrics(ann_file, detections)["AR100"] != pytest.approx(
        _ar_with_max_dets(ann_file, detections, 1000), abs=1e-6
    )


def test_undefined_area_range_stays_minus_one(tmp_path: Path) -> None:
    """No large GT: pycocotools gives APl = ARl = -1, and so do we (not -100)."""
    rng = np.random.default_rng(5)
    gt = make_ground_truth(rng, sizes=("small", "medium"))
    # Medium sides stay below 96, and the area factor is <= 1, so no GT is "large".
    detections = make_detections(rng, gt)
    ann_file = write_json(tmp_path / "gt.json", gt)
    ours = coco_bbox_metrics(ann_file, detections)
    assert ours["APl"] == -1.0 and ours["ARl"] == -1.0
    assert_metrics_close(ours, reference_metrics(pycocotools_eval(ann_file, detections)))


# ----------------------------------------------------------------------------- known answers


def _one_box_per_class_dataset() -> dict:
    """Each image has at most one GT per category, so even AR1 can reach 100."""
    rng = np.random.default_rng(11)
    images, annotations = [], []
    sizes = ["small", "medium", "large"]
    for i in range(9):
        images.append({"id": i + 1, "width": 640, "height": 480})
        for j, cat in enumerate((1, 3)):
            box = _random_box(rng, sizes[(i + j) % 3])
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": i + 1,
                    "category_id": cat,
                    "bbox": box,
                    "area": box[2] * box[3],
                    "iscrowd": 0,
                }
            )
    images.append({"id": 100, "width": 640, "height": 480})  # an image without GT
    categories = [{"id": c, "name": f"class_{c}"} for c in CATEGORY_IDS]
    return {"images": images, "annotations": annotations, "categories": categories}


def test_perfect_detections_score_100(tmp_path: Path) -> None:
    gt = _one_box_per_class_dataset()
    ann_file = write_json(tmp_path / "gt.json", gt)
    detections = [
        {
            "image_id": a["image_id"],
            "category_id": a["category_id"],
            "bbox": list(a["bbox"]),
            "score": 1.0,
        }
        for a in gt["annotations"]
    ]
    metrics = coco_bbox_metrics(ann_file, detections)
    assert metrics == {key: 100.0 for key in METRIC_KEYS}
    assert_metrics_close(metrics, reference_metrics(pycocotools_eval(ann_file, detections)))


def test_no_detections_score_zero(tmp_path: Path) -> None:
    gt = _one_box_per_class_dataset()
    ann_file = write_json(tmp_path / "gt.json", gt)
    metrics = coco_bbox_metrics(ann_file, [])
    assert metrics == {key: 0.0 for key in METRIC_KEYS}
    assert_metrics_close(metrics, reference_metrics(pycocotools_eval(ann_file, [])))


def test_no_detections_keeps_undefined_ranges(tmp_path: Path) -> None:
    rng = np.random.default_rng(6)
    ann_file = write_json(tmp_path / "gt.json", make_ground_truth(rng, sizes=("medium",)))
    metrics = coco_bbox_metrics(ann_file, [])
    ref = reference_metrics(pycocotools_eval(ann_file, []))
    assert_metrics_close(metrics, ref)
    assert metrics["APs"] == metrics["APl"] == -1.0
    assert metrics["AP"] == metrics["APm"] == metrics["AR100"] == 0.0


def test_no_ground_truth_at_all_is_undefined(tmp_path: Path) -> None:
    """No GT boxes: pycocotools has nothing to average and reports -1 everywhere."""
    gt = {
        "images": [{"id": 1, "width": 10, "height": 10}],
        "annotations": [],
        "categories": [{"id": 1, "name": "a"}],
    }
    ann_file = write_json(tmp_path / "gt.json", gt)
    detections = [{"image_id": 1, "category_id": 1, "bbox": [0, 0, 5, 5], "score": 0.3}]
    metrics = coco_bbox_metrics(ann_file, detections)
    assert metrics == {key: -1.0 for key in METRIC_KEYS}
    assert_metrics_close(metrics, reference_metrics(pycocotools_eval(ann_file, detections)))


def test_fast_and_checked_detection_paths_agree() -> None:
    """The vectorised conversion builds exactly what the per-detection one does."""
    from pgd_core.evaluation.coco import _results_checked, _results_fast

    rng = np.random.default_rng(12)
    gt = make_ground_truth(rng)
    detections = make_detections(rng, gt, crowded_image=True)
    detections[0]["bbox"] = [1, 2, 3, 4]  # ints are valid too
    image_ids = {img["id"] for img in gt["images"]}
    fast = _results_fast(detections, image_ids, set(CATEGORY_IDS))
    assert fast is not None
    assert fast == _results_checked(detections, image_ids, set(CATEGORY_IDS))
    detections[5]["bbox"] = [1.0, 2.0, math.nan, 4.0]
    assert _results_fast(detections, image_ids, set(CATEGORY_IDS)) is None


def test_inputs_untouched_and_silent(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    rng = np.random.default_rng(7)
    gt = make_ground_truth(rng, n_images=10)
    detections = make_detections(rng, gt)
    before = copy.deepcopy(detections)
    ann_file = write_json(tmp_path / "gt.json", gt)
    capsys.readouterr()
    coco_bbox_metrics(ann_file, detections)
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == ""
    assert detections == before
    # The collector pause inside the evaluation restores the previous state either way.
    assert gc.isenabled()
    gc.disable()
    try:
        coco_bbox_metrics(ann_file, detections)
        assert not gc.isenabled()
    finally:
        gc.enable()


def test_numpy_scalars_accepted(tmp_path: Path) -> None:
    rng = np.random.default_rng(8)
    gt = make_ground_truth(rng, n_images=10)
    detections = make_detections(rng, gt)
    ann_file = write_json(tmp_path / "gt.json", gt)
    as_numpy = [
        {
            "image_id": np.int64(d["image_id"]),
            "category_id": np.int32(d["category_id"]),
            "bbox": np.asarray(d["bbox"], dtype=np.float32).astype(np.float64),
            "score": np.float64(d["score"]),
        }
        for d in detections
    ]
    assert coco_bbox_metrics(ann_file, as_numpy) == coco_bbox_metrics(ann_file, detections)


# ----------------------------------------------------------------------------- validation


@pytest.fixture()
def small_gt(tmp_path: Path) -> Path:
    return write_json(tmp_path / "gt.json", _one_box_per_class_dataset())


def _det(**overrides: object) -> dict:
    det = {"image_id": 1, "category_id": 1, "bbox": [1.0, 2.0, 30.0, 40.0], "score": 0.5}
    det.update(overrides)
    return det


@pytest.mark.parametrize(
    "bad,pattern",
    [
        ({"image_id": 999}, r"detection 1 .*image_id 999.*not in the annotation file"),
        ({"image_id": "1"}, r"detection 1 .*image_id '1'"),
        ({"category_id": 42}, r"detection 1 .*unknown category_id 42"),
        ({"bbox": [1.0, 2.0, 3.0]}, r"detection 1 bbox .*not 4 finite numbers"),
        ({"bbox": [1.0, 2.0, math.nan, 3.0]}, r"detection 1 bbox .*not 4 finite numbers"),
        ({"bbox": [1.0, 2.0, "3", 4.0]}, r"detection 1 bbox .*not 4 finite numbers"),
        ({"bbox": [1.0, 2.0, -3.0, 4.0]}, r"detection 1 bbox .*negative width/height"),
        ({"score": math.inf}, r"detection 1 score inf is not a finite number"),
        ({"score": None}, r"detection 1 score None"),
    ],
)
def test_bad_detection_is_named(small_gt: Path, bad: dict, pattern: str) -> None:
    with pytest.raises(EvaluationError, match=pattern):
        coco_bbox_metrics(small_gt, [_det(), _det(**bad)])


def test_detection_missing_key(small_gt: Path) -> None:
    det = _det()
    del det["score"]
    with pytest.raises(EvaluationError, match=r"detection 0 lacks \['score'\]"):
        coco_bbox_metrics(small_gt, [det])


def test_detections_not_a_list(small_gt: Path) -> None:
    with pytest.raises(EvaluationError, match="list of dicts"):
        coco_bbox_metrics(small_gt, _det())  # type: ignore[arg-type]


def test_missing_ann_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.json"
    with pytest.raises(EvaluationError, match=r"nope\.json does not exist"):
        coco_bbox_metrics(missing, [])


@pytest.mark.parametrize(
    "content,pattern",
    [
        ("{not json", r"bad\.json is not valid JSON"),
        ("[]", r"bad\.json: top level must be an object"),
        ('{"images": [], "categories": []}', r"bad\.json: missing or non-list 'annotations'"),
        (
            '{"images": [{"id": 1}], "categories": [{"id": 1}], '
            '"annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 1, 1]}]}',
            r"bad\.json: annotations\[0\] lacks \['area'\]",
        ),
        (
            '{"images": [{"id": 1}], "categories": [{"id": 1}], "annotations": '
            '[{"id": 1, "image_id": 2, "category_id": 1, "bbox": [0, 0, 1, 1], "area": 1}]}',
            r"bad\.json: annotations\[0\] refers to unknown image_id 2",
        ),
        (
            '{"images": [{"id": 1}, {"id": 1}], "categories": [], "annotations": []}',
            r"bad\.json: images\[1\] repeats id 1",
        ),
    ],
)
def test_malformed_ann_file_is_named(tmp_path: Path, content: str, pattern: str) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text(content)
    with pytest.raises(EvaluationError, match=pattern):
        coco_bbox_metrics(bad, [])


def test_evaluation_error_is_value_error() -> None:
    assert issubclass(EvaluationError, ValueError)


# ----------------------------------------------------------------------------- plot


def test_plot_pr_png(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    image_module = pytest.importorskip("PIL.Image")
    rng = np.random.default_rng(9)
    gt = make_ground_truth(rng)
    ann_file = write_json(tmp_path / "gt.json", gt)
    evaluation = coco_evaluate(ann_file, make_detections(rng, gt))
    assert isinstance(evaluation, CocoEvaluation)
    out = tmp_path / "plots" / "pr.png"

    assert plot_coco_pr(evaluation, out) == out
    data = out.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    assert 10_000 < len(data) < 2_000_000
    with image_module.open(out) as img:
        img.verify()
    with image_module.open(out) as img:
        assert img.format == "PNG" and 500 <= img.width <= 2000 and 400 <= img.height <= 2000
    # Deterministic bytes and no temp files left behind.
    plot_coco_pr(evaluation, tmp_path / "plots" / "again.png")
    assert (tmp_path / "plots" / "again.png").read_bytes() == data
    assert sorted(p.name for p in out.parent.iterdir()) == ["again.png", "pr.png"]


def test_plot_without_ground_truth(tmp_path: Path) -> None:
    """Nothing to draw still gives a valid, labelled PNG rather than an error."""
    pytest.importorskip("matplotlib")
    gt = {
        "images": [{"id": 1, "width": 10, "height": 10}],
        "annotations": [],
        "categories": [{"id": 1, "name": "a"}],
    }
    evaluation = coco_evaluate(write_json(tmp_path / "gt.json", gt), [])
    out = plot_coco_pr(evaluation, tmp_path / "pr.png")
    assert out.read_bytes().startswith(b"\x89PNG")


def test_plot_curve_means_equal_ap(tmp_path: Path) -> None:
    """The legend's per-threshold APs average to the reported AP."""
    from pgd_core.evaluation.coco import _mean_pr_curves

    rng = np.random.default_rng(10)
    gt = make_ground_truth(rng)
    evaluation = coco_evaluate(write_json(tmp_path / "gt.json", gt), make_detections(rng, gt))
    curves, aps = _mean_pr_curves(evaluation)
    assert curves.shape == (10, 101)
    assert abs(aps.mean() - evaluation.metrics["AP"]) <= TOL
    assert abs(aps[0] - evaluation.metrics["AP50"]) <= TOL
    assert abs(aps[5] - evaluation.metrics["AP75"]) <= TOL


# ----------------------------------------------------------------------------- layering


def test_imports_without_torch_or_plotting() -> None:
    """The package stays light: no torch/mmdet/mmengine, and matplotlib only when plotting."""
    code = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in {'torch', 'mmdet', 'mmengine', 'mmcv', 'matplotlib',"
        " 'pycocotools'}:\n"
        "            raise ImportError('blocked: ' + name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "import pgd_core.evaluation\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
