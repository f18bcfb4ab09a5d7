"""Key predictive regions: where the teacher's best predictions for each GT lie.

Steps 1-6 of section 1 of the PGD algorithm (docs: pgd-algorithm.md). Everything
is vectorised over priors and GTs: CrowdHuman images carry up to hundreds of
GTs, and a Python loop over them dominated the reference implementation.

Conventions: boxes are (x1, y1, x2, y2) in input-image pixels, centres (x, y).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

#: Margin of the strict "centre inside box" test (the reference's value).
INSIDE_EPS = 1e-10
#: Ridge added to the covariance of the K selected centres so it is invertible
#: when they are collinear or coincide (replaces the reference's random jitter).
COV_RIDGE = 1e-3


def pairwise_iou(boxes: Tensor, gt_boxes: Tensor) -> Tensor:
    """IoU of every box with every GT.

    Args:
        boxes (Tensor[N, 4]): (x1, y1, x2, y2).
        gt_boxes (Tensor[G, 4]): (x1, y1, x2, y2).

    Returns:
        Tensor[N, G]: IoU in [0, 1]; 0 where the union is empty.
    """
    lt = torch.maximum(boxes[:, None, :2], gt_boxes[None, :, :2])
    rb = torch.minimum(boxes[:, None, 2:], gt_boxes[None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    area_b = (boxes[:, 2:] - boxes[:, :2]).clamp(min=0).prod(-1)
    area_g = (gt_boxes[:, 2:] - gt_boxes[:, :2]).clamp(min=0).prod(-1)
    union = area_b[:, None] + area_g[None, :] - inter
    return torch.where(union > 0, inter / union.clamp(min=torch.finfo(union.dtype).tiny),
                       torch.zeros_like(inter))


def inside_mask(centers: Tensor, gt_boxes: Tensor) -> Tensor:
    """Whether each centre lies strictly inside each GT box.

    Args:
        centers (Tensor[N, 2]): (x, y).
        gt_boxes (Tensor[G, 4]): (x1, y1, x2, y2).

    Returns:
        Tensor[N, G] (bool).
    """
    x = centers[:, 0:1]
    y = centers[:, 1:2]
    return ((x - gt_boxes[None, :, 0] > INSIDE_EPS)
            & (y - gt_boxes[None, :, 1] > INSIDE_EPS)
            & (gt_boxes[None, :, 2] - x > INSIDE_EPS)
            & (gt_boxes[None, :, 3] - y > INSIDE_EPS))


def prediction_quality(cls_logits: Tensor, boxes: Tensor, gt_boxes: Tensor,
                       gt_labels: Tensor, alpha: float) -> Tensor:
    """Step 1: ``q_ij = sigmoid(s_i[c_j]) ** (1 - alpha) * IoU(b_i, g_j) ** alpha``.

    Args:
        cls_logits (Tensor[N, C]), boxes (Tensor[N, 4]), gt_boxes (Tensor[G, 4]),
        gt_labels (Tensor[G], int64): as in :func:`prediction_guided_weights`.

    Returns:
        Tensor[N, G].
    """
    scores = cls_logits.sigmoid()[:, gt_labels]
    return scores.pow(1.0 - alpha) * pairwise_iou(boxes, gt_boxes).pow(alpha)


def _log_quality(cls_logits: Tensor, boxes: Tensor, gt_boxes: Tensor, gt_labels: Tensor,
                 alpha: float) -> Tensor:
    """``log q`` laid out GT-major, Tensor[G, N]: the same ranking as ``q`` for top-K.

    Log space turns two powers per (GT, prior) pair into one log, and the
    GT-major layout makes top-K run along contiguous memory; with tens of
    thousands of priors and hundreds of GTs these N x G passes are the cost.
    """
    bx1, by1, bx2, by2 = boxes.t().contiguous()
    gx1, gy1, gx2, gy2 = (c[:, None] for c in gt_boxes.t())
    iw = torch.minimum(gx2, bx2).sub_(torch.maximum(gx1, bx1)).clamp_(min=0)
    ih = torch.minimum(gy2, by2).sub_(torch.maximum(gy1, by1)).clamp_(min=0)
    inter = iw.mul_(ih)
    area_b = (bx2 - bx1).clamp_(min=0) * (by2 - by1).clamp_(min=0)
    area_g = (gx2 - gx1).clamp_(min=0) * (gy2 - gy1).clamp_(min=0)
    union = (area_g + area_b).sub_(inter).clamp_(min=torch.finfo(inter.dtype).tiny)
    log_iou = inter.div_(union).log_()                      # -inf where boxes miss
    if alpha == 1.0:
        return log_iou
    log_scores = F.logsigmoid(cls_logits).t()[gt_labels]    # (G, N)
    if alpha == 0.0:
        return log_scores
    return log_scores.mul_(1.0 - alpha).add_(log_iou, alpha=alpha)


def _gaussian_of_selected(centers: Tensor, topk_idx: Tensor) -> Tensor:
    """Step 3: unnormalised 2-D Gaussian fitted to the selected centres of each GT.

    Args:
        centers (Tensor[N, 2]): all prior centres.
        topk_idx (Tensor[K, G]): indices of the K selected priors of each GT.

    Returns:
        Tensor[K, G]: ``exp(-0.5 * Mahalanobis^2)`` of each selected prior to its
        GT's fit (the weight is only ever used there), in the dtype of ``centers``.
    """
    k = topk_idx.shape[0]
    # float64: when the selected centres are (nearly) collinear off the axes,
    # Sigma's condition number is about var / ridge ~ 1e7, and the 2x2 closed
    # form cancels catastrophically in float32 (weights off by up to ~0.25).
    picked = centers[topk_idx].double()                     # (K, G, 2)
    dev = picked - picked.mean(dim=0)
    dx, dy = dev[..., 0], dev[..., 1]                       # (K, G)
    # Population covariance (1/K), plus the ridge, written out for 2x2.
    sxx = (dx * dx).sum(0) / k + COV_RIDGE
    syy = (dy * dy).sum(0) / k + COV_RIDGE
    sxy = (dx * dy).sum(0) / k
    det = sxx * syy - sxy * sxy
    maha = (syy * dx * dx - 2.0 * sxy * dx * dy + sxx * dy * dy) / det
    return torch.exp(-0.5 * maha).to(centers.dtype)


def prediction_guided_weights(centers: Tensor, cls_logits: Tensor, boxes: Tensor,
                              gt_boxes: Tensor, gt_labels: Tensor, *, alpha: float,
                              topk: int, low_bound: float = 0.0,
                              gaussian: bool = True) -> Tensor:
    """Per-prior distillation weight from the teacher's predictions (steps 1-5).

    Args:
        centers (Tensor[N, 2]): prior centres (x, y), input-image pixels.
        cls_logits (Tensor[N, C]): teacher classification logits (sigmoid heads).
        boxes (Tensor[N, 4]): teacher boxes decoded to (x1, y1, x2, y2) pixels.
        gt_boxes (Tensor[G, 4]): ground-truth boxes (x1, y1, x2, y2).
        gt_labels (Tensor[G], int64): ground-truth class indices in [0, C).
        alpha: quality exponent ``a`` (0.8 for the cls map, 0.6 for the reg map).
        topk: K, the priors kept per GT (clipped to N).
        low_bound: weights below it are set to 0.
        gaussian: False gives weight 1 to every selected prior (the ablation).

    Returns:
        Tensor[N]: weights in [0, 1], on the device and dtype of ``centers``.
    """
    if topk < 1:
        raise ValueError(f"topk must be >= 1, got {topk}")
    n, g = centers.shape[0], gt_boxes.shape[0]
    if g == 0 or n == 0:
        return centers.new_zeros(n)
    out_dtype = centers.dtype
    # Half precision underflows in the Mahalanobis term; work in float32 at least.
    work = torch.promote_types(out_dtype, torch.float32)
    centers, cls_logits = centers.to(work), cls_logits.to(work)
    boxes, gt_boxes = boxes.to(work), gt_boxes.to(work)

    k = min(topk, n)
    log_q = _log_quality(cls_logits, boxes, gt_boxes, gt_labels, alpha)
    topk_idx = log_q.topk(k, dim=1).indices.t()             # (K, G)
    # Only the K selected priors of each GT can carry weight: work on (K, G).
    if gaussian and k > 1:
        selected = _gaussian_of_selected(centers, topk_idx)
    else:
        selected = centers.new_ones(topk_idx.shape)
    picked = centers[topk_idx]                              # (K, G, 2)
    inside = ((picked[..., 0] - gt_boxes[:, 0] > INSIDE_EPS)
              & (picked[..., 1] - gt_boxes[:, 1] > INSIDE_EPS)
              & (gt_boxes[:, 2] - picked[..., 0] > INSIDE_EPS)
              & (gt_boxes[:, 3] - picked[..., 1] > INSIDE_EPS))
    weights = centers.new_zeros(n).scatter_reduce_(
        0, topk_idx.reshape(-1), (selected * inside).reshape(-1), reduce="amax")
    weights = torch.where(weights < low_bound, torch.zeros_like(weights), weights)
    return weights.to(out_dtype)


def background_mask(centers: Tensor, gt_boxes: Tensor) -> Tensor:
    """Step 6: 1 where a prior's centre lies strictly inside no GT box, else 0.

    Args:
        centers (Tensor[N, 2]): prior centres (x, y).
        gt_boxes (Tensor[G, 4]): (x1, y1, x2, y2).

    Returns:
        Tensor[N]: 0/1 in the dtype of ``centers``; all ones when G = 0.
    """
    if gt_boxes.shape[0] == 0:
        return centers.new_ones(centers.shape[0])
    return (~inside_mask(centers, gt_boxes.to(centers.dtype)).any(dim=1)).to(centers.dtype)


def box_foreground_mask(centers: Tensor, gt_boxes: Tensor) -> Tensor:
    """1 where a prior's centre lies strictly inside any GT box (the ``fgd_box`` baseline).

    Args:
        centers (Tensor[N, 2]), gt_boxes (Tensor[G, 4]).

    Returns:
        Tensor[N]: 0/1 in the dtype of ``centers``.
    """
    return 1.0 - background_mask(centers, gt_boxes)
