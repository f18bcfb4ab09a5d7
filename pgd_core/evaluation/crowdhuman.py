"""CrowdHuman evaluation: MR^-2, AP and JI as the CrowdHuman toolkit computes them.

The conventions are those of the toolkit that mmdet 3.3's CrowdHumanMetric
ports (CrowdDet's ``APMRToolkits`` / ``JIToolkits``), evaluating full-body
boxes (``eval_mode=0``):

* Boxes are clipped to the image first (x1 to [0, W-1], x2 to [0, W], same
  for y) when image sizes are given; real CrowdHuman full-body boxes often
  extend past the image, so pass ``image_sizes`` to reproduce the toolkit.
* Overlaps are computed in float32, exactly as mmdet's ``bbox_overlaps``
  (union and detection area floored at 1e-6), so every threshold decision is
  bit-identical to mmdet's.
* AP and MR^-2 match per image, detections by descending score, each to the
  unmatched person box of highest IoU if that IoU is > 0.5 (strictly); a
  detection left unmatched whose intersection-over-its-own-area with an
  ignore region is > 0.5 is dropped (neither TP nor FP), otherwise it is a
  FP. Then all images' TP/FP are sorted by score (ties: image order, then
  per-image order). AP is the trapezoidal area under the PR curve from its
  first point (perfect detections give 1 - 1/#GT); MR^-2 averages in log
  space the miss rate at the first point whose FPPI reaches each of the
  toolkit's 9 reference FPPIs (0.0100 ... 1.000, 4-decimal values), or at the
  last point when the FPPI never gets there.
* JI, for score thresholds 0.0, 0.1, ..., 0.9 (detections with score >
  threshold): per image k / (m + n - k), where k is the size of a maximum
  one-to-one matching of detections and person boxes with IoU >= 0.5, n the
  detections and m the person boxes, each minus those left unmatched that
  lie in an ignore region (IoA > 0.5). Images with m = n = 0 are left out of
  the mean; the best threshold's mean is reported.

JI matching: maximum cardinality (unweighted), as in mmdet 3.3, not the
original toolkit's maximum-weight matching, so k (the number of pairs) is
mmdet's exactly. When several maximum matchings exist they can differ in
which boxes stay unmatched, and so in how many of those lie in ignore
regions; mmdet takes whichever scipy's Hopcroft-Karp returns, so its JI
changes when the detections are merely listed in another order. We take the
matching that leaves unmatched as many boxes inside ignore regions as
possible (on both sides; see ``_ji_counts``). That makes JI a function of the
boxes alone, and per image and threshold never below mmdet's; with no ignore
region in play the two are equal.

Deliberate differences from mmdet: no 1e-6 in the JI denominator (perfect
detections give exactly 100); no detections at all give MR^-2 = 100 (mmdet:
NaN); images without any box are allowed (mmdet crashes on them).

Only numpy (and the reader of pgd_core.data.odgt) is needed; matplotlib is
imported lazily, for the plot. No torch, mmdet or scipy.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from itertools import chain
from pathlib import Path
from typing import Any

import numpy as np

from pgd_core.data.odgt import OdgtRecord, read_odgt
from pgd_core.evaluation.coco import EvaluationError
from pgd_core.evaluation.png import save_png_atomic

__all__ = [
    "JI_SCORE_THRESHOLDS",
    "METRIC_KEYS",
    "MR_REFERENCE_FPPI",
    "CrowdHumanEvalError",
    "CrowdHumanEvaluation",
    "DetectionError",
    "crowdhuman_evaluate",
    "crowdhuman_metrics",
    "plot_mr_fppi",
]

METRIC_KEYS = ("MR", "AP", "JI")
IOU_THRESHOLD = 0.5
#: The toolkit's MR^-2 reference FPPIs: 10^-2 .. 10^0 in 9 log steps, as 4-decimal values.
MR_REFERENCE_FPPI = np.array(
    [0.0100, 0.0178, 0.0316, 0.0562, 0.1000, 0.1778, 0.3162, 0.5623, 1.0000]
)
#: JI score thresholds, computed like the toolkit (0.1 * i, so 0.30000000000000004).
JI_SCORE_THRESHOLDS = np.array([0.1 * i for i in range(10)])
_EPS32 = np.float32(1e-6)
_THR32 = np.float32(IOU_THRESHOLD)


class CrowdHumanEvalError(EvaluationError):
    """Evaluation input that cannot be evaluated; the message says what and where."""


class DetectionError(CrowdHumanEvalError):
    """A malformed detection; the message names its index in the list."""


@dataclass(frozen=True, eq=False)
class CrowdHumanEvaluation:
    """Metrics in percent plus the curves behind them.

    The curve arrays have one entry per counted detection (TP or FP, ignored
    ones excluded), in the global score order used for AP and MR^-2.
    """

    metrics: dict[str, float]
    scores: np.ndarray  # float64[K], descending
    recall: np.ndarray  # float64[K]
    precision: np.ndarray  # float64[K]
    fppi: np.ndarray  # float64[K], false positives per image
    miss_rate: np.ndarray  # float64[K], 1 - recall
    mr_reference_fppi: np.ndarray  # float64[9]
    mr_reference_miss_rate: np.ndarray  # float64[9], the miss rates MR^-2 averages
    ji_score_thresholds: np.ndarray  # float64[10]
    ji_per_threshold: np.ndarray  # float64[10], percent
    ji_counts: np.ndarray  # int64[I, 10, 3]: k, m, n per image (odgt order) and threshold
    num_images: int
    num_persons: int
    num_ignore_regions: int
    num_detections: int
    num_ignored_detections: int


# ------------------------------------------------------------------------ validation


def _finite_number(value: Any) -> float | None:
    """``value`` as a finite float, or None (bools and strings are not numbers here)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(
        value, (int, float, np.integer, np.floating)
    ):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def _check_detection(
    index: int, det: Any, ids: Mapping[str, int]
) -> tuple[int, list[float], float]:
    """(image index, [x, y, w, h], score) of one detection; DetectionError names ``index``."""
    where = f"detections[{index}]"
    if not isinstance(det, Mapping):
        raise DetectionError(f"{where}: must be a dict, got {type(det).__name__}")
    missing = [key for key in ("image_id", "category_id", "bbox", "score") if key not in det]
    if missing:
        raise DetectionError(f"{where}: missing key(s) {', '.join(missing)}")
    image_id = det["image_id"]
    if not isinstance(image_id, str) or image_id not in ids:
        raise DetectionError(f"{where}: image_id {image_id!r} is not an ID of the annotation file")
    category = det["category_id"]
    if isinstance(category, bool) or category != 1:
        raise DetectionError(f"{where}: category_id must be 1 (person), got {category!r}")
    box = det["bbox"]
    numbers = (
        [_finite_number(v) for v in box]
        if isinstance(box, (list, tuple, np.ndarray)) and len(box) == 4
        else [None]
    )
    values = [v for v in numbers if v is not None]
    if len(values) != 4:
        raise DetectionError(
            f"{where}: bbox must be [x, y, w, h] with 4 finite numbers, got {box!r}"
        )
    if values[2] < 0 or values[3] < 0:
        raise DetectionError(f"{where}: bbox {box!r} has a negative width or height")
    score = _finite_number(det["score"])
    if score is None:
        raise DetectionError(f"{where}: score must be a finite number, got {det['score']!r}")
    return ids[image_id], values, score


def _parse_fast(
    detections: Sequence[Any],
    ids: Mapping[str, int],
) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """Vectorised validation of the common case (plain dicts, list boxes, Python numbers).

    None means "something is unusual or wrong": the per-detection pass then
    accepts every valid input and names the first bad detection. Types are
    checked per distinct type, which is what makes this pass fast.
    """
    if not all(type(det) is dict for det in detections):
        return None
    try:
        image_ids = [det["image_id"] for det in detections]
        categories = [det["category_id"] for det in detections]
        boxes = [det["bbox"] for det in detections]
        scores = [det["score"] for det in detections]
        images = np.array([ids[image_id] for image_id in image_ids], dtype=np.int64)
    except (KeyError, TypeError):  # TypeError: an unhashable image_id
        return None
    numbers = {int, float}
    if not (
        set(map(type, image_ids)) <= {str}
        and set(map(type, categories)) <= {int}
        and set(categories) <= {1}
        and set(map(type, scores)) <= numbers
    ):
        return None
    if not all(type(box) is list and len(box) == 4 for box in boxes):
        return None
    if not set(map(type, chain.from_iterable(boxes))) <= numbers:
        return None
    box_array = np.array(boxes, dtype=np.float64).reshape(-1, 4)
    score_array = np.array(scores, dtype=np.float64)
    if not (
        np.isfinite(box_array).all()
        and np.isfinite(score_array).all()
        and (box_array[:, 2:] >= 0).all()
    ):
        return None
    return images, box_array, score_array


def _parse_slow(
    detections: Sequence[Any], ids: Mapping[str, int]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-detection validation; raises DetectionError at the first bad detection."""
    images = np.empty(len(detections), dtype=np.int64)
    boxes = np.empty((len(detections), 4), dtype=np.float64)
    scores = np.empty(len(detections), dtype=np.float64)
    for index, det in enumerate(detections):
        images[index], boxes[index], scores[index] = _check_detection(index, det, ids)
    return images, boxes, scores


def _parse_detections(
    detections: Sequence[Any], ids: Mapping[str, int]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """int64[N] image index, float64[N, 4] xyxy boxes and float64[N] scores, in input order."""
    if isinstance(detections, (str, bytes, Mapping)) or not isinstance(detections, Sequence):
        raise CrowdHumanEvalError(
            f"detections must be a list of dicts, got {type(detections).__name__}"
        )
    parsed = _parse_fast(detections, ids) or _parse_slow(detections, ids)
    images, boxes, scores = parsed
    # x2 = x + w in float64, as the toolkit converts its xywh input.
    boxes[:, 2:] += boxes[:, :2]
    return images, boxes, scores


def _load_records(odgt: str | os.PathLike[str] | Sequence[OdgtRecord]) -> list[OdgtRecord]:
    """Records of an .odgt path, or the given records (whose IDs must then be unique)."""
    if isinstance(odgt, (str, os.PathLike)):
        return read_odgt(odgt)
    records = list(odgt)
    ids = [record.image_id for record in records]
    if len(set(ids)) != len(ids):
        repeated = sorted({i for i in ids if ids.count(i) > 1})
        raise CrowdHumanEvalError(f"records repeat image ID(s) {repeated[:5]}")
    return records


def _image_shapes(
    records: Sequence[OdgtRecord], image_sizes: Mapping[str, Sequence[int]] | None
) -> np.ndarray | None:
    """float64[I, 2] (width, height) per record, or None for "do not clip"."""
    if image_sizes is None:
        return None
    shapes = np.empty((len(records), 2), dtype=np.float64)
    for i, record in enumerate(records):
        size = image_sizes.get(record.image_id)
        if size is None:
            raise CrowdHumanEvalError(f"image_sizes has no entry for ID {record.image_id!r}")
        values = (
            [_finite_number(v) for v in size]
            if isinstance(size, (list, tuple)) and len(size) == 2
            else [None]
        )
        if any(v is None or v < 1 for v in values):
            raise CrowdHumanEvalError(
                f"image_sizes[{record.image_id!r}] must be (width, height) >= 1, got {size!r}"
            )
        shapes[i] = values
    return shapes


# ------------------------------------------------------------------------- geometry


def _clip(boxes: np.ndarray, shape: np.ndarray | None) -> np.ndarray:
    """float64[N, 4] xyxy boxes clipped to a (width, height) image like the toolkit does."""
    if shape is None:
        return boxes
    width, height = shape
    out = boxes.copy()
    out[:, 0] = np.minimum(np.maximum(boxes[:, 0], 0), width - 1)
    out[:, 1] = np.minimum(np.maximum(boxes[:, 1], 0), height - 1)
    out[:, 2] = np.maximum(np.minimum(boxes[:, 2], width), 0)
    out[:, 3] = np.maximum(np.minimum(boxes[:, 3], height), 0)
    return out


def _area(boxes: np.ndarray) -> np.ndarray:
    return (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])


def _intersection(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """float32[A, B] intersection areas of float32 xyxy boxes."""
    w = np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0])
    h = np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1])
    return np.maximum(w, 0) * np.maximum(h, 0)


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """float32[A, B] IoU, the same float32 operations as mmdet's ``bbox_overlaps``."""
    inter = _intersection(a, b)
    union = _area(a)[:, None] + _area(b)[None, :] - inter
    return inter / np.maximum(union, _EPS32)


def _in_region(a: np.ndarray, regions: np.ndarray) -> np.ndarray:
    """bool[A]: box lies in some region, i.e. intersection / area(box) > 0.5 (float32)."""
    if len(a) == 0 or len(regions) == 0:
        return np.zeros(len(a), dtype=bool)
    ioa = _intersection(a, regions) / np.maximum(_area(a), _EPS32)[:, None]
    return (ioa > _THR32).any(axis=1)


# ------------------------------------------------------------------------- matching


def _greedy_tp(iou: np.ndarray) -> np.ndarray:
    """bool[D]: detections (rows, in score order) matched to a person box (columns).

    Each detection takes the unmatched column of highest IoU > 0.5, the first
    one on ties: the toolkit's Caltech-style rule. Only the few (detection,
    box) pairs above the threshold are visited.
    """
    tp = np.zeros(iou.shape[0], dtype=bool)
    rows, cols = np.nonzero(iou > _THR32)
    if rows.size == 0:
        return tp
    order = np.lexsort((cols, -iou[rows, cols], rows))
    taken = bytearray(iou.shape[1])
    done = -1
    for row, col in zip(rows[order].tolist(), cols[order].tolist(), strict=True):
        if row != done and not taken[col]:
            taken[col] = 1
            tp[row] = True
            done = row
    return tp


def _augment(root: int, adjacency: list[list[int]], owner: list[int], partner: list[int]) -> int:
    """Find an augmenting path from detection ``root`` and flip it; return the newly
    matched box, or -1. ``owner[g]``/``partner[d]`` hold the matching (-1: free).

    Iterative DFS: an augmenting path can be as long as the matching, which
    can exceed Python's recursion limit on crowded images.
    """
    for col in adjacency[root]:  # a free box needs no search (path of length 1)
        if owner[col] < 0:
            owner[col], partner[root] = root, col
            return col
    reached_from: dict[int, int] = {}
    stack = [(root, iter(adjacency[root]))]
    while stack:
        det, neighbours = stack[-1]
        for col in neighbours:
            if col in reached_from:
                continue
            reached_from[col] = det
            if owner[col] < 0:
                free = col
                while True:  # flip the path back to the root
                    det = reached_from[col]
                    previous = partner[det]
                    owner[col], partner[det] = det, col
                    if det == root:
                        return free
                    col = previous
            stack.append((owner[col], iter(adjacency[owner[col]])))
            break
        else:
            stack.pop()
    return -1


def _prefix_matching_sizes(
    rows: np.ndarray, cols: np.ndarray, num_dets: int, num_boxes: int
) -> np.ndarray:
    """int64[D + 1]: maximum matching size between the first p detections and the boxes.

    ``rows``/``cols`` are the edges (detection, box), detections in score
    order. Kuhn's algorithm adding detections in that order: augmenting paths
    never unmatch a vertex, so after adding p detections the matching is a
    maximum one of that prefix, and one pass serves every score threshold.
    """
    sizes = np.zeros(num_dets + 1, dtype=np.int64)
    if rows.size == 0:
        return sizes
    adjacency: list[list[int]] = [[] for _ in range(num_dets)]
    for row, col in zip(rows.tolist(), cols.tolist(), strict=True):
        adjacency[row].append(col)
    owner, partner = [-1] * num_boxes, [-1] * num_dets
    gained = np.zeros(num_dets, dtype=np.int64)
    for det in np.unique(rows).tolist():
        gained[det] = _augment(det, adjacency, owner, partner) >= 0
    sizes[1:] = np.cumsum(gained)
    return sizes


def _ji_counts(
    iou: np.ndarray, scores: np.ndarray, det_in_ignore: np.ndarray, box_in_ignore: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """k, m, n (int64[T] each) of every JI score threshold for one image.

    k is the maximum matching size at IoU >= 0.5 (unique). Among maximum
    matchings we take one that leaves unmatched as many boxes inside ignore
    regions as possible, on each side. That is well defined: the most
    non-ignore detections a maximum matching can cover is the maximum
    matching size of the non-ignore detections alone (likewise for boxes),
    and by the Mendelsohn-Dulmage theorem one maximum matching achieves both
    sides at once. So only three matching sizes are needed, and JI depends on
    the boxes alone, not on their order or a solver's choices.
    """
    kept = np.searchsorted(-scores, -JI_SCORE_THRESHOLDS, side="left")  # score > threshold
    rows, cols = np.nonzero(iou >= _THR32)
    num_dets, num_boxes = iou.shape
    k = _prefix_matching_sizes(rows, cols, num_dets, num_boxes)
    plain_dets = ~det_in_ignore[rows]
    plain_boxes = ~box_in_ignore[cols]
    k_plain_dets = (
        k
        if plain_dets.all()
        else _prefix_matching_sizes(rows[plain_dets], cols[plain_dets], num_dets, num_boxes)
    )
    k_plain_boxes = (
        k
        if plain_boxes.all()
        else _prefix_matching_sizes(rows[plain_boxes], cols[plain_boxes], num_dets, num_boxes)
    )
    ignore_dets = np.concatenate([[0], np.cumsum(det_in_ignore)])[kept]
    # Unmatched ones inside ignore regions = those inside minus the fewest that must be matched.
    n = kept - (ignore_dets - (k[kept] - k_plain_dets[kept]))
    m = num_boxes - (int(box_in_ignore.sum()) - (k[kept] - k_plain_boxes[kept]))
    return k[kept], m, n


# ------------------------------------------------------------------------ per image


@dataclass(frozen=True)
class _ImageResult:
    """What one image contributes: TP/FP of counted detections and JI counts per threshold."""

    scores: np.ndarray  # float64[C] counted detections, score order
    tp: np.ndarray  # bool[C]
    num_ignored: int
    ji_k: np.ndarray  # int64[T]
    ji_m: np.ndarray  # int64[T]
    ji_n: np.ndarray  # int64[T]


def _evaluate_image(
    record: OdgtRecord, shape: np.ndarray | None, boxes: np.ndarray, scores: np.ndarray
) -> _ImageResult:
    """Match one image's detections (float64[D, 4] xyxy, any order) to its annotations."""
    order = np.argsort(-scores, kind="stable")
    scores = scores[order]
    dets = _clip(boxes[order], shape).astype(np.float32)
    gt = record.fboxes.copy()
    gt[:, 2:] += gt[:, :2]
    gt = _clip(gt, shape).astype(np.float32)
    persons, regions = gt[~record.ignore], gt[record.ignore]
    iou = _iou(dets, persons)
    det_in_ignore = _in_region(dets, regions)
    tp = _greedy_tp(iou)
    counted = tp | ~det_in_ignore
    k, m, n = _ji_counts(iou, scores, det_in_ignore, _in_region(persons, regions))
    return _ImageResult(
        scores=scores[counted],
        tp=tp[counted],
        num_ignored=int((~counted).sum()),
        ji_k=k,
        ji_m=m,
        ji_n=n,
    )


# ----------------------------------------------------------------------- aggregation


def _average_precision(recall: np.ndarray, precision: np.ndarray) -> float:
    """Trapezoids from the first PR point on; cumsum sums left to right like the toolkit."""
    if len(recall) < 2:
        return 0.0
    terms = (recall[1:] - recall[:-1]) * ((precision[:-1] + precision[1:]) / 2)
    return float(np.cumsum(terms)[-1])


def _reference_miss_rates(fppi: np.ndarray, miss_rate: np.ndarray) -> np.ndarray:
    """Miss rate at the first point with FPPI >= each reference (the last point if none)."""
    if len(fppi) == 0:
        return np.ones(len(MR_REFERENCE_FPPI))  # nothing detected: everything missed
    index = np.minimum(np.searchsorted(fppi, MR_REFERENCE_FPPI, side="left"), len(fppi) - 1)
    return miss_rate[index]


def _log_average(values: np.ndarray) -> float:
    with np.errstate(divide="ignore"):  # a zero miss rate makes the average 0, as intended
        return float(np.exp(np.log(values).mean()))


def _jaccard(results: Sequence[_ImageResult]) -> np.ndarray:
    """float64[T]: mean per-image k / (m + n - k) over images with m + n > 0."""
    k = np.stack([r.ji_k for r in results]).astype(np.float64)
    m = np.stack([r.ji_m for r in results]).astype(np.float64)
    n = np.stack([r.ji_n for r in results]).astype(np.float64)
    valid = (m + n) > 0
    ratio = np.divide(k, m + n - k, out=np.zeros_like(k), where=valid)
    count = valid.sum(axis=0)
    return np.divide(ratio.sum(axis=0), count, out=np.zeros(k.shape[1]), where=count > 0)


def _group(images: np.ndarray, count: int) -> list[np.ndarray]:
    """Detection indices per image, each in input order."""
    order = np.argsort(images, kind="stable")
    bounds = np.searchsorted(images[order], np.arange(count + 1))
    return [order[bounds[i] : bounds[i + 1]] for i in range(count)]


def crowdhuman_evaluate(
    odgt_file: str | os.PathLike[str] | Sequence[OdgtRecord],
    detections: Sequence[Mapping[str, Any]],
    *,
    image_sizes: Mapping[str, Sequence[int]] | None = None,
) -> CrowdHumanEvaluation:
    """Evaluate person detections on a CrowdHuman ``.odgt`` file (or its records).

    Args:
        odgt_file: Path of the annotation file, or records from ``read_odgt``.
        detections: ``{"image_id": <ID>, "category_id": 1, "bbox": [x, y, w, h],
            "score": float}`` dicts; images without detections count as all missed.
        image_sizes: ``{ID: (width, height)}``; boxes are clipped to the image
            as the toolkit does. Without it nothing is clipped, which differs
            from the toolkit wherever a box crosses the border.

    Raises:
        DatasetError: a bad annotation file.
        DetectionError: a malformed detection (its index is named).
        CrowdHumanEvalError: no person box to evaluate, bad ``image_sizes``.
    """
    records = _load_records(odgt_file)
    ids = {record.image_id: i for i, record in enumerate(records)}
    images, boxes, scores = _parse_detections(detections, ids)
    shapes = _image_shapes(records, image_sizes)
    num_persons = sum(r.num_boxes - r.num_ignored for r in records)
    if num_persons == 0:
        raise CrowdHumanEvalError(
            "the annotations hold no person box to evaluate "
            "(every box is an ignore region): AP and MR are undefined"
        )
    results = [
        _evaluate_image(record, None if shapes is None else shapes[i], boxes[idx], scores[idx])
        for i, (record, idx) in enumerate(zip(records, _group(images, len(records)), strict=True))
    ]
    all_scores = np.concatenate([r.scores for r in results])
    order = np.argsort(-all_scores, kind="stable")  # ties: image order, then score order
    tp = np.concatenate([r.tp for r in results])[order].astype(np.float64)
    tp_sum, fp_sum = np.cumsum(tp), np.cumsum(1.0 - tp)
    recall = tp_sum / num_persons
    precision = tp_sum / (tp_sum + fp_sum)
    fppi = fp_sum / len(records)
    miss_rate = 1.0 - recall
    reference = _reference_miss_rates(fppi, miss_rate)
    ji = _jaccard(results)
    metrics = {
        "MR": 100.0 * _log_average(reference),
        "AP": 100.0 * _average_precision(recall, precision),
        "JI": 100.0 * float(ji.max()),
    }
    return CrowdHumanEvaluation(
        metrics=metrics,
        scores=all_scores[order],
        recall=recall,
        precision=precision,
        fppi=fppi,
        miss_rate=miss_rate,
        mr_reference_fppi=MR_REFERENCE_FPPI.copy(),
        mr_reference_miss_rate=reference,
        ji_score_thresholds=JI_SCORE_THRESHOLDS.copy(),
        ji_per_threshold=100.0 * ji,
        ji_counts=np.stack([np.stack([r.ji_k, r.ji_m, r.ji_n], axis=1) for r in results]),
        num_images=len(records),
        num_persons=num_persons,
        num_ignore_regions=sum(r.num_ignored for r in records),
        num_detections=len(scores),
        num_ignored_detections=sum(r.num_ignored for r in results),
    )


def crowdhuman_metrics(
    odgt_file: str | os.PathLike[str] | Sequence[OdgtRecord],
    detections: Sequence[Mapping[str, Any]],
    *,
    image_sizes: Mapping[str, Sequence[int]] | None = None,
) -> dict[str, float]:
    """``{"MR": MR^-2, "AP": AP, "JI": JI}`` in percent; see :func:`crowdhuman_evaluate`."""
    return crowdhuman_evaluate(odgt_file, detections, image_sizes=image_sizes).metrics


# -------------------------------------------------------------------------- plotting


def plot_mr_fppi(evaluation: CrowdHumanEvaluation, path: str | os.PathLike[str]) -> Path:
    """Write a log-log PNG of miss rate vs false positives per image; return its path.

    The 9 reference points MR^-2 averages are marked and MR^-2 is in the
    legend. Points at FPPI 0 are drawn at FPPI 1e-3 and miss rate 0 at 0.01,
    since a log axis cannot show 0. Uses the Agg canvas (no
    pyplot state, no display) and writes atomically.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import FixedLocator, FormatStrFormatter, NullLocator

    fig = Figure(figsize=(6.4, 5.2), dpi=110)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    x_min, y_min = 1e-3, 0.01
    x_max = max(10.0, float(evaluation.fppi[-1]) * 1.5 if len(evaluation.fppi) else 0.0)
    mr = evaluation.metrics["MR"]
    if len(evaluation.fppi):
        miss = np.maximum(evaluation.miss_rate, y_min)
        ax.step(
            np.maximum(evaluation.fppi, x_min),
            miss,
            where="post",
            color="tab:blue",
            linewidth=1.8,
            label=f"detector (MR$^{{-2}}$ = {mr:.2f}%)",
        )
        # Past the last detection MR^-2 reads the last miss rate: show that as a dashed tail.
        ax.plot(
            [max(float(evaluation.fppi[-1]), x_min), x_max],
            [miss[-1], miss[-1]],
            color="tab:blue",
            linewidth=1.2,
            linestyle="--",
        )
    else:
        ax.text(0.5, 0.5, "no counted detections: miss rate 1", ha="center", transform=ax.transAxes)
    ax.plot(
        evaluation.mr_reference_fppi,
        np.maximum(evaluation.mr_reference_miss_rate, y_min),
        "o",
        color="tab:red",
        markersize=6,
        label="9 reference FPPIs averaged by MR$^{-2}$",
    )
    ax.axvspan(1e-2, 1.0, color="0.9", zorder=0, label="MR$^{-2}$ range 10$^{-2}$..10$^{0}$")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(x_min, x_max)
    ax.set_ylim(0.8 * y_min, 1.05)  # a little room so miss rate 0 (drawn at y_min) shows
    ticks = [0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.64, 0.8, 1.0]
    ax.yaxis.set_major_locator(FixedLocator(ticks))
    ax.yaxis.set_major_formatter(FormatStrFormatter("%.2g"))
    ax.yaxis.set_minor_locator(NullLocator())
    ax.set_xlabel("false positives per image (FPPI)")
    ax.set_ylabel("miss rate")
    ax.set_title(
        f"CrowdHuman miss rate vs FPPI ({_count(evaluation.num_images, 'image')}, "
        f"{_count(evaluation.num_persons, 'person')})",
        fontsize=10,
    )
    ax.grid(True, which="major", alpha=0.35)
    # Lower left: the curve starts high on the left and falls to the right.
    ax.legend(loc="lower left", fontsize=8, framealpha=0.95)
    fig.tight_layout()
    target = Path(path)
    save_png_atomic(fig, target)
    return target


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}{'' if number == 1 else 's'}"
