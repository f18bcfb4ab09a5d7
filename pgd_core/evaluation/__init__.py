"""Detection evaluation protocols (COCO). Light: no torch, mmdet or mmengine imports."""

from pgd_core.evaluation.coco import (
    CocoEvaluation,
    EvaluationError,
    coco_bbox_metrics,
    coco_evaluate,
    plot_coco_pr,
)

__all__ = [
    "CocoEvaluation",
    "EvaluationError",
    "coco_bbox_metrics",
    "coco_evaluate",
    "plot_coco_pr",
]
