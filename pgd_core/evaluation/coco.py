"""COCO bbox evaluation that reproduces pycocotools' numbers with faster-coco-eval.

pycocotools is the reference implementation of the COCO protocol, but its
per-image Python loops take ~30 s for 100k detections. faster-coco-eval runs
the same matching and accumulation in C++; driven as below (bbox IoU, default
parameters: 10 IoU thresholds 0.50:0.05:0.95, 101 recall points, maxDets
1/10/100, areas all/small/medium/large, ``separate_eval`` off, ``lvis_style``
and ``extra_calc`` off) its 12 summary numbers equal pycocotools' ``stats``
in the same order (the tests check this on randomised data).

Metric keys are the usual short names in percent. pycocotools reports -1 for
a summary that has nothing to average (e.g. APs when no ground-truth box is
small); that sentinel is kept as ``-1.0`` (not scaled to -100) so callers can
tell "undefined" from "zero".
"""

from __future__ import annotations

import contextlib
import gc
import json
import math
import os
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from faster_coco_eval import COCO, COCOeval_faster

from pgd_core.evaluation.png import save_png_atomic

__all__ = [
    "METRIC_KEYS",
    "CocoEvaluation",
    "EvaluationError",
    "coco_bbox_metrics",
    "coco_evaluate",
    "plot_coco_pr",
]

# Same order as pycocotools' COCOeval.stats[:12] (and faster-coco-eval's).
METRIC_KEYS: tuple[str, ...] = (
    "AP",
    "AP50",
    "AP75",
    "APs",
    "APm",
    "APl",
    "AR1",
    "AR10",
    "AR100",
    "ARs",
    "ARm",
    "ARl",
)
# pycocotools' "nothing to average" value; kept unscaled in the percent output.
UNDEFINED = -1.0

_DETECTION_KEYS = ("image_id", "category_id", "bbox", "score")
_GT_ANNOTATION_KEYS = ("id", "image_id", "category_id", "bbox", "area")


class EvaluationError(ValueError):
    """Invalid evaluation input (annotation file or detections); the message names the culprit."""


@dataclass(frozen=True)
class CocoEvaluation:
    """Result of one COCO bbox evaluation, with the raw arrays needed for plots.

    ``precision`` has pycocotools' layout [T, R, K, A, M] (IoU threshold,
    recall point, category, area range, maxDets) and holds -1 where a
    category has no ground truth in that area range; ``recall`` is [T, K, A, M].
    """

    metrics: dict[str, float]
    precision: np.ndarray
    recall: np.ndarray
    iou_thresholds: np.ndarray
    recall_thresholds: np.ndarray
    category_ids: tuple[int, ...]
    category_names: tuple[str, ...]
    area_labels: tuple[str, ...]
    max_dets: tuple[int, ...]


# ----------------------------------------------------------------------------- validation


def _is_int(value: Any) -> bool:
    """True for Python/numpy integers; bools are rejected (True would silently mean id 1)."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _finite_numbers(values: Any, count: int) -> list[float] | None:
    """``values`` as ``count`` finite floats, or None if it is anything else.

    Strings are refused explicitly because ``float("1")`` would accept them.
    """
    if isinstance(values, (str, bytes, Mapping)):
        return None
    try:
        if len(values) != count:
            return None
        out = []
        for v in values:
            if isinstance(v, (str, bytes, bool, np.bool_)):
                return None
            f = float(v)
            if not math.isfinite(f):
                return None
            out.append(f)
    except (TypeError, ValueError):
        return None
    return out


def _load_ground_truth(ann_file: str | os.PathLike) -> dict:
    """Read and check a COCO instances json; errors name the file and the bad entry."""
    path = Path(ann_file)
    try:
        with path.open(encoding="utf-8") as handle:
            data = json.load(handle)
    except FileNotFoundError:
        raise EvaluationError(f"COCO annotation file {path} does not exist") from None
    except json.JSONDecodeError as exc:
        raise EvaluationError(f"COCO annotation file {path} is not valid JSON: {exc}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise EvaluationError(f"cannot read COCO annotation file {path}: {exc}") from None
    _check_ground_truth(data, path)
    return data


def _check_ground_truth(data: Any, path: Path) -> None:
    """Check the structure pycocotools relies on, so failures are not KeyErrors deep inside."""
    where = f"COCO annotation file {path}"
    if not isinstance(data, dict):
        raise EvaluationError(f"{where}: top level must be an object, got {type(data).__name__}")
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise EvaluationError(f"{where}: missing or non-list '{key}'")
    image_ids = _unique_ids(data["images"], f"{where}: images")
    category_ids = _unique_ids(data["categories"], f"{where}: categories")
    _unique_ids(data["annotations"], f"{where}: annotations")
    for index, ann in enumerate(data["annotations"]):
        missing = [key for key in _GT_ANNOTATION_KEYS if key not in ann]
        if missing:
            raise EvaluationError(f"{where}: annotations[{index}] lacks {missing}")
        if ann["image_id"] not in image_ids:
            raise EvaluationError(
                f"{where}: annotations[{index}] refers to unknown image_id {ann['image_id']!r}"
            )
        if ann["category_id"] not in category_ids:
            raise EvaluationError(
                f"{where}: annotations[{index}] refers to unknown category_id "
                f"{ann['category_id']!r}"
            )
        box = _finite_numbers(ann["bbox"], 4)
        if box is None or box[2] < 0 or box[3] < 0:
            raise EvaluationError(
                f"{where}: annotations[{index}] bbox {ann['bbox']!r} is not [x, y, w, h] "
                "with finite numbers and w, h >= 0"
            )
        if _finite_numbers([ann["area"]], 1) is None:
            raise EvaluationError(
                f"{where}: annotations[{index}] area {ann['area']!r} is not finite"
            )


def _unique_ids(entries: list, where: str) -> set[int]:
    """The integer ``id`` of every entry; duplicates would make the COCO index drop entries."""
    ids: set[int] = set()
    for index, entry in enumerate(entries):
        if not isinstance(entry, dict) or not _is_int(entry.get("id")):
            raise EvaluationError(f"{where}[{index}] has no integer 'id'")
        if entry["id"] in ids:
            raise EvaluationError(f"{where}[{index}] repeats id {entry['id']}")
        ids.add(int(entry["id"]))
    return ids


def _detections_to_results(
    detections: Sequence[Mapping[str, Any]], image_ids: set[int], category_ids: set[int]
) -> list[dict]:
    """Validate detections and build the result annotations pycocotools' ``loadRes`` would.

    Fresh dicts are built because the COCO API mutates what it is given, and
    the caller's list must stay untouched. ``area = w * h``, ``iscrowd = 0``
    and ids 1..N in input order are exactly what ``loadRes`` assigns for bbox
    results (input order matters: it breaks score ties); the dummy polygon
    ``loadRes`` adds is skipped because bbox IoU never reads it.

    A vectorised pass handles the common case (plain dicts, list boxes); if it
    finds anything unusual or wrong, the per-detection pass runs instead,
    which accepts every valid input and names the first bad detection.
    """
    if isinstance(detections, (str, bytes, Mapping)) or not isinstance(detections, Sequence):
        raise EvaluationError(
            f"detections must be a list of dicts, got {type(detections).__name__}"
        )
    results = _results_fast(detections, image_ids, category_ids)
    if results is None:
        results = _results_checked(detections, image_ids, category_ids)
    return results


def _all_types(values: list, allowed: tuple[type, ...], refused: tuple[type, ...]) -> bool:
    """True when every value's type is a subclass of ``allowed`` and none of ``refused``.

    Checks each distinct type once, which is what makes the fast path fast.
    """
    return all(
        issubclass(t, allowed) and not issubclass(t, refused) for t in set(map(type, values))
    )


_INTS = (int, np.integer)
_REALS = (int, float, np.integer, np.floating)
_NOT_NUMBERS = (bool, np.bool_)


def _results_fast(
    detections: Sequence[Any], image_ids: set[int], category_ids: set[int]
) -> list[dict] | None:
    """Vectorised validation + conversion; None means "use the per-detection pass"."""
    if not all(type(det) is dict for det in detections):
        return None
    try:
        images = [det["image_id"] for det in detections]
        cats = [det["category_id"] for det in detections]
        boxes = [det["bbox"] for det in detections]
        scores = [det["score"] for det in detections]
    except KeyError:
        return None
    if not (
        _all_types(images, _INTS, _NOT_NUMBERS)
        and _all_types(cats, _INTS, _NOT_NUMBERS)
        and _all_types(scores, _REALS, _NOT_NUMBERS)
    ):
        return None
    if not (set(images) <= image_ids and set(cats) <= category_ids):
        return None
    if not all(type(box) in (list, tuple) and len(box) == 4 for box in boxes):
        return None
    box_types = set(map(type, [v for box in boxes for v in box]))
    if not all(issubclass(t, _REALS) and not issubclass(t, _NOT_NUMBERS) for t in box_types):
        return None
    box_array = np.array(boxes, dtype=np.float64).reshape(-1, 4)
    score_array = np.array(scores, dtype=np.float64)
    if not (
        np.isfinite(box_array).all()
        and np.isfinite(score_array).all()
        and (box_array[:, 2:] >= 0).all()
    ):
        return None
    areas = (box_array[:, 2] * box_array[:, 3]).tolist()
    # Plain Python floats need no conversion: copying the 4-element lists is much cheaper
    # than materialising 4 new floats per box with tolist().
    out_boxes = list(map(list, boxes)) if box_types <= {float} else box_array.tolist()
    out_scores = scores if set(map(type, scores)) <= {float} else score_array.tolist()
    if not set(map(type, images)) <= {int}:
        images = [int(v) for v in images]
    if not set(map(type, cats)) <= {int}:
        cats = [int(v) for v in cats]
    return [
        {
            "id": index,
            "image_id": image_id,
            "category_id": cat,
            "bbox": box,
            "score": score,
            "area": area,
            "iscrowd": 0,
        }
        for index, image_id, cat, box, score, area in zip(
            range(1, len(images) + 1), images, cats, out_boxes, out_scores, areas
        )
    ]


def _results_checked(
    detections: Sequence[Any], image_ids: set[int], category_ids: set[int]
) -> list[dict]:
    """Per-detection validation + conversion; raises ``EvaluationError`` at the first bad one."""
    results = []
    for index, det in enumerate(detections):
        if not isinstance(det, Mapping):
            raise EvaluationError(f"detection {index} is a {type(det).__name__}, not a dict")
        missing = [key for key in _DETECTION_KEYS if key not in det]
        if missing:
            raise EvaluationError(f"detection {index} lacks {missing}")
        image_id, category_id = det["image_id"], det["category_id"]
        if not _is_int(image_id) or image_id not in image_ids:
            raise EvaluationError(
                f"detection {index} has image_id {image_id!r}, which is not in the annotation file"
            )
        if not _is_int(category_id) or category_id not in category_ids:
            raise EvaluationError(
                f"detection {index} has unknown category_id {category_id!r} "
                f"(annotation file has {sorted(category_ids)})"
            )
        box = _finite_numbers(det["bbox"], 4)
        if box is None:
            raise EvaluationError(
                f"detection {index} bbox {det['bbox']!r} is not 4 finite numbers [x, y, w, h]"
            )
        if box[2] < 0 or box[3] < 0:
            raise EvaluationError(
                f"detection {index} bbox {det['bbox']!r} has negative width/height"
            )
        score = _finite_numbers([det["score"]], 1)
        if score is None:
            raise EvaluationError(
                f"detection {index} score {det['score']!r} is not a finite number"
            )
        results.append(
            {
                "id": index + 1,
                "image_id": int(image_id),
                "category_id": int(category_id),
                "bbox": box,
                "score": score[0],
                "area": box[2] * box[3],
                "iscrowd": 0,
            }
        )
    return results


# ----------------------------------------------------------------------------- evaluation


def _silent(*_args: Any, **_kwargs: Any) -> None:
    """Print function handed to faster-coco-eval so it emits no progress lines or summaries."""


def _result_coco(gt_data: dict, results: list[dict]) -> COCO:
    """The detection-side COCO object as ``loadRes`` builds it (the GT's images and categories)."""
    res = COCO(print_function=_silent)
    res.dataset = {
        "images": list(gt_data["images"]),
        "categories": [dict(cat) for cat in gt_data["categories"]],
        "annotations": results,
    }
    res.createIndex()
    return res


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector, restoring its previous state afterwards.

    Building ~10^5-10^6 result dicts and lists triggers repeated full collections
    that walk every live object; measured, that doubled the time of the input
    conversion. Nothing built here forms reference cycles, so pausing loses
    nothing (``timeit`` does the same).
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _percent(value: float) -> float:
    """pycocotools' fraction in percent, keeping its -1 'undefined' sentinel as -1.0."""
    value = float(value)
    return UNDEFINED if value == -1 else 100.0 * value


def _run_cocoeval(gt_data: dict, results: list[dict]) -> COCOeval_faster:
    """Run faster-coco-eval's evaluate/accumulate/summarize with pycocotools' defaults, silently."""
    gt = COCO(gt_data, print_function=_silent)
    dt = _result_coco(gt_data, results)
    evaluator = COCOeval_faster(
        gt,
        dt,
        iouType="bbox",
        print_function=_silent,
        separate_eval=False,
        extra_calc=False,
        lvis_style=False,
    )
    with warnings.catch_warnings():
        # numpy's "mean of empty slice" never fires here (empty slices return -1 first),
        # but keep the evaluation free of incidental warnings from the backend.
        warnings.simplefilter("ignore", RuntimeWarning)
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return evaluator


def coco_evaluate(
    ann_file: str | os.PathLike, detections: Sequence[Mapping[str, Any]]
) -> CocoEvaluation:
    """Evaluate bbox detections against a COCO instances json, keeping the PR arrays.

    ``detections`` are ``{"image_id", "category_id", "bbox": [x, y, w, h], "score"}``
    dicts. An empty list is valid: every defined metric is 0.0 (pycocotools'
    ``loadRes`` cannot load an empty list, but its evaluation of an empty result
    set gives 0 wherever ground truth exists and -1 elsewhere, which is what we return).
    Raises ``EvaluationError`` for a bad annotation file or detection.
    """
    with _gc_paused():
        gt_data = _load_ground_truth(ann_file)
        image_ids = {int(img["id"]) for img in gt_data["images"]}
        categories = sorted(gt_data["categories"], key=lambda cat: int(cat["id"]))
        category_ids = {int(cat["id"]) for cat in categories}
        results = _detections_to_results(detections, image_ids, category_ids)
        evaluator = _run_cocoeval(gt_data, results)
    stats = np.asarray(evaluator.stats, dtype=np.float64)[: len(METRIC_KEYS)]
    params = evaluator.params
    return CocoEvaluation(
        metrics={key: _percent(value) for key, value in zip(METRIC_KEYS, stats)},
        precision=np.array(evaluator.eval["precision"], dtype=np.float64),
        recall=np.array(evaluator.eval["recall"], dtype=np.float64),
        iou_thresholds=np.array(params.iouThrs, dtype=np.float64),
        recall_thresholds=np.array(params.recThrs, dtype=np.float64),
        # COCOeval orders the K axis by sorted category id, like `categories`.
        category_ids=tuple(int(cat["id"]) for cat in categories),
        category_names=tuple(str(cat.get("name", cat["id"])) for cat in categories),
        area_labels=tuple(params.areaRngLbl),
        max_dets=tuple(int(m) for m in params.maxDets),
    )


def coco_bbox_metrics(
    ann_file: str | os.PathLike, detections: Sequence[Mapping[str, Any]]
) -> dict[str, float]:
    """COCO bbox metrics in percent, equal to pycocotools' ``COCOeval.stats[:12] * 100``.

    Keys: AP, AP50, AP75, APs, APm, APl, AR1, AR10, AR100, ARs, ARm, ARl.
    A metric pycocotools reports as -1 (no ground truth in that area range)
    stays -1.0. See ``coco_evaluate`` for inputs and errors.
    """
    return coco_evaluate(ann_file, detections).metrics


# ----------------------------------------------------------------------------- plotting


def _mean_pr_curves(evaluation: CocoEvaluation) -> tuple[np.ndarray, np.ndarray]:
    """Category-mean precision per IoU threshold ([T, R]) and AP per threshold in percent ([T]).

    Uses area "all" and the largest maxDets, as AP does. Categories without
    ground truth (precision -1) are left out, exactly as pycocotools' mean over
    ``s > -1`` does, so the mean of a curve is the AP in its legend entry.
    Rows are NaN when no category has ground truth.
    """
    area = evaluation.area_labels.index("all")
    pr = evaluation.precision[:, :, :, area, -1]  # [T, R, K]
    valid = pr[0, 0, :] > -1  # a category is either fully defined or fully -1
    if not valid.any():
        nan = np.full(pr.shape[:2], np.nan)
        return nan, np.full(pr.shape[0], np.nan)
    curves = pr[:, :, valid].mean(axis=2)
    return curves, 100.0 * curves.mean(axis=1)


def plot_coco_pr(evaluation: CocoEvaluation, path: str | os.PathLike) -> Path:
    """Write a PNG of category-mean precision-recall curves, one per IoU threshold.

    Uses the object-oriented Agg canvas (no pyplot) so no display is needed and
    no global backend state changes. The file is written to a temporary file
    in the same directory and moved into place, so readers never see a
    partial PNG. Returns the path written.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    target = Path(path)
    curves, aps = _mean_pr_curves(evaluation)
    fig = Figure(figsize=(8.5, 5.5), dpi=110)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    colors = _threshold_colors(len(evaluation.iou_thresholds))
    for t, thr in enumerate(evaluation.iou_thresholds):
        if np.isnan(aps[t]):
            continue
        ax.plot(
            evaluation.recall_thresholds,
            curves[t],
            color=colors[t],
            linewidth=1.6,
            label=f"IoU={thr:.2f}  (AP {aps[t]:.1f})",
        )
    if np.isnan(aps).all():
        ax.text(
            0.5,
            0.5,
            "no ground truth: precision undefined",
            ha="center",
            va="center",
            transform=ax.transAxes,
        )
    ax.set_xlim(0.0, 1.0)
    ax.set_ylim(0.0, 1.02)
    ax.set_xlabel("Recall")
    ax.set_ylabel("Precision")
    ap = evaluation.metrics["AP"]
    ap_text = "undefined" if ap == UNDEFINED else f"{ap:.1f}"
    ax.set_title(
        f"COCO bbox precision-recall (area all, maxDets {evaluation.max_dets[-1]}), AP {ap_text}",
        fontsize=10,
    )
    ax.grid(True, alpha=0.3)
    if not np.isnan(aps).all():
        # Outside the axes: inside, it would hide curves wherever it sat for some detector.
        ax.legend(
            loc="upper left",
            bbox_to_anchor=(1.02, 1.0),
            fontsize=8.5,
            borderaxespad=0.0,
            title="IoU threshold (AP %)",
            title_fontsize=8.5,
        )
    fig.tight_layout()
    save_png_atomic(fig, target)
    return target


def _threshold_colors(count: int) -> list:
    """Distinct colours from a perceptual colormap, ordered from low to high IoU."""
    from matplotlib import colormaps

    cmap = colormaps["viridis"]
    # Stop short of viridis' pale yellow end, which is hard to see on white.
    return [cmap(0.85 * i / max(count - 1, 1)) for i in range(count)]
