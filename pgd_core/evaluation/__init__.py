"""Detection evaluation protocols (COCO, CrowdHuman). Light: no torch, mmdet or mmengine."""

from pgd_core.evaluation.coco import (
    CocoEvaluation,
    EvaluationError,
    coco_bbox_metrics,
    coco_evaluate,
    plot_coco_pr,
)
from pgd_core.evaluation.crowdhuman import (
    CrowdHumanEvaluation,
    crowdhuman_evaluate,
    crowdhuman_metrics,
    plot_mr_fppi,
)

__all__ = [
    "CocoEvaluation",
    "CrowdHumanEvaluation",
    "EvaluationError",
    "coco_bbox_metrics",
    "coco_evaluate",
    "crowdhuman_evaluate",
    "crowdhuman_metrics",
    "plot_coco_pr",
    "plot_mr_fppi",
]
