"""Key predictive regions: where the teacher's best predictions for each GT lie.

Steps 1-6 of section 1 of the PGD algorithm (docs: pgd-algorithm.md). Everything
is vectorised over priors and GTs: CrowdHuman images carry up to hundreds of
GTs, and a Python loop over them dominated the reference implementation.

Conventions: boxes are (x1, y1, x2, y2) in input-image pixels, centres (x, y).
"""

from __future__ import annotations

import torch
from torch import Tensor

#: Margin of the strict "centre inside box" test (the reference's value).
INSIDE_EPS = 1e-10
#: Ridge added to the covariance of the K selected centres so it is invertible
#: when they are collinear or coincide (replaces the reference's random jitter).
COV_RIDGE = 1e-3


def _pairwise(op, gt_col: Tensor, box_row: Tensor) -> Tensor:  # noqa: ANN001 - a torch op
    """``op`` of Tensor[B, G, 1] and Tensor[B, 1, N] into a new Tensor[B, G, N].

    Materialising the row first and applying ``op`` in place runs about twice
    as fast on the CPU as broadcasting both operands at once.
    """
    # clone, not contiguous(): with G = 1 the latter would return box_row itself.
    out = box_row.expand(gt_col.shape[0], gt_col.shape[1], box_row.shape[2]).clone()
    return op(out, gt_col, out=out)


def _iou_gt_major(boxes: Tensor, gt_boxes: Tensor) -> Tensor:
    """IoU laid out GT-major: boxes Tensor[B, N, 4], GTs Tensor[B, G, 4] -> Tensor[B, G, N].

    GT-major so that top-K over priors runs along contiguous memory; with tens of
    thousands of priors and hundreds of GTs these G x N passes are the cost,
    hence the in-place arithmetic.
    """
    bx1, by1, bx2, by2 = (c[:, None, :] for c in boxes.permute(2, 0, 1).contiguous())
    gx1, gy1, gx2, gy2 = (c[..., None] for c in gt_boxes.unbind(-1))
    iw = _pairwise(torch.minimum, gx2, bx2).sub_(_pairwise(torch.maximum, gx1, bx1)).clamp_(min=0)
    ih = _pairwise(torch.minimum, gy2, by2).sub_(_pairwise(torch.maximum, gy1, by1)).clamp_(min=0)
    inter = iw.mul_(ih)
    area_b = (bx2 - bx1).clamp_(min=0) * (by2 - by1).clamp_(min=0)
    area_g = (gx2 - gx1).clamp_(min=0) * (gy2 - gy1).clamp_(min=0)
    # An empty union has an empty intersection: 0 / tiny = 0.
    union = (area_g + area_b).sub_(inter).clamp_(min=torch.finfo(inter.dtype).tiny)
    return inter.div_(union)


def _inside_gt_major(centers: Tensor, gt_boxes: Tensor) -> Tensor:
    """Strict inside test: centres Tensor[..., N, 2] or [N, 2], GTs Tensor[B, G, 4] ->
    Tensor[B, G, N] (bool) with margin INSIDE_EPS."""
    x, y = centers[..., 0], centers[..., 1]
    box = gt_boxes[..., None]  # (B, G, 4, 1)
    return (
        (x - box[:, :, 0] > INSIDE_EPS)
        & (y - box[:, :, 1] > INSIDE_EPS)
        & (box[:, :, 2] - x > INSIDE_EPS)
        & (box[:, :, 3] - y > INSIDE_EPS)
    )


def pairwise_iou(boxes: Tensor, gt_boxes: Tensor) -> Tensor:
    """IoU of every box with every GT.

    Args:
        boxes (Tensor[N, 4]): (x1, y1, x2, y2).
        gt_boxes (Tensor[G, 4]): (x1, y1, x2, y2).

    Returns:
        Tensor[N, G]: IoU in [0, 1]; 0 where the union is empty.
    """
    return _iou_gt_major(boxes[None], gt_boxes[None])[0].t()


def inside_mask(centers: Tensor, gt_boxes: Tensor) -> Tensor:
    """Whether each centre lies strictly inside each GT box.

    Args:
        centers (Tensor[N, 2]): (x, y).
        gt_boxes (Tensor[G, 4]): (x1, y1, x2, y2).

    Returns:
        Tensor[N, G] (bool).
    """
    return _inside_gt_major(centers, gt_boxes[None])[0].t()


def _ranking_key(iou: Tensor, scores: Tensor, gt_labels: Tensor, alpha: float) -> Tensor:
    """A key with the same per-GT order as ``q = s ** (1 - a) * IoU ** a``: Tensor[B, G, N].

    ``q ** (1 / a) = IoU * s ** ((1 - a) / a)`` is increasing in ``q``, and its
    power applies to the N x C scores, not the G x N pairs: one multiply per pair
    instead of two powers (the pairs are the cost with hundreds of GTs).

    Args:
        iou (Tensor[B, G, N]), scores (Tensor[B, N, C]): sigmoid scores,
        gt_labels (Tensor[B, G]).
    """
    batch = torch.arange(scores.shape[0], device=scores.device)[:, None]
    if alpha == 0.0:
        return scores.transpose(1, 2)[batch, gt_labels]
    per_class = scores.pow((1.0 - alpha) / alpha).transpose(1, 2)  # (B, C, N)
    return per_class[batch, gt_labels].mul_(iou)


def _gaussian_of_selected(picked: Tensor) -> Tensor:
    """Step 3: unnormalised 2-D Gaussian fitted to the K selected centres of each GT.

    Args:
        picked (Tensor[..., K, 2]): the selected centres of each GT.

    Returns:
        Tensor[..., K]: ``exp(-0.5 * Mahalanobis^2)`` of each selected centre to its
        GT's fit (the weight is only ever used there), in the dtype of ``picked``.
    """
    k = picked.shape[-2]
    # float64: when the selected centres are (nearly) collinear off the axes,
    # Sigma's condition number is about var / ridge ~ 1e7, and the 2x2 closed
    # form cancels catastrophically in float32 (weights off by up to ~0.25).
    pts = picked.double()
    dev = pts - pts.mean(dim=-2, keepdim=True)
    dx, dy = dev[..., 0], dev[..., 1]  # (..., K)
    # Population covariance (1/K), plus the ridge, written out for 2x2.
    sxx = (dx * dx).sum(-1, keepdim=True) / k + COV_RIDGE
    syy = (dy * dy).sum(-1, keepdim=True) / k + COV_RIDGE
    sxy = (dx * dy).sum(-1, keepdim=True) / k
    det = sxx * syy - sxy * sxy
    maha = (syy * dx * dx - 2.0 * sxy * dx * dy + sxx * dy * dy) / det
    return torch.exp(-0.5 * maha).to(picked.dtype)


def batched_prediction_guided_weights(
    centers: Tensor,
    cls_logits: Tensor,
    boxes: Tensor,
    gt_boxes: Tensor,
    gt_labels: Tensor,
    gt_valid: Tensor,
    *,
    alphas: tuple[float, ...],
    topk: int,
    low_bound: float = 0.0,
    gaussian: bool = True,
) -> Tensor:
    """Steps 1-5 for a batch of images and several quality exponents at once.

    Images carry different numbers of GTs, so GTs are padded to the batch's
    largest count and ``gt_valid`` marks the real ones. The IoU and the
    log-scores are shared by all exponents (the cls and reg maps differ only there).

    Args:
        centers (Tensor[N, 2]): prior centres (x, y), shared by the batch.
        cls_logits (Tensor[B, N, C]): teacher classification logits.
        boxes (Tensor[B, N, 4]): teacher boxes (x1, y1, x2, y2).
        gt_boxes (Tensor[B, G, 4]), gt_labels (Tensor[B, G], int64): padded GTs.
        gt_valid (Tensor[B, G], bool): False on padding.
        alphas: one quality exponent per output map.
        topk, low_bound, gaussian: as in :func:`prediction_guided_weights`.

    Returns:
        Tensor[len(alphas), B, N] in float32 or wider.
    """
    if topk < 1:
        raise ValueError(f"topk must be >= 1, got {topk}")
    n = centers.shape[0]
    b, g = gt_labels.shape
    # Half precision underflows in the Mahalanobis term; work in float32 at least.
    work = torch.promote_types(centers.dtype, torch.float32)
    out = centers.new_zeros((len(alphas), b, n), dtype=work)
    if g == 0 or n == 0:
        return out
    centers, gt_boxes = centers.to(work), gt_boxes.to(work)
    iou = _iou_gt_major(boxes.to(work), gt_boxes)
    scores = cls_logits.to(work).sigmoid()
    labels = gt_labels.clamp(min=0)  # padding rows carry label 0; masked out below
    k = min(topk, n)
    for index, alpha in enumerate(alphas):
        topk_idx = _ranking_key(iou, scores, labels, alpha).topk(k, dim=-1).indices
        picked = centers[topk_idx]  # (B, G, K, 2)
        # Only the K selected priors of each GT can carry weight: work on (B, G, K).
        weight = (
            _gaussian_of_selected(picked) if gaussian and k > 1 else picked.new_ones(topk_idx.shape)
        )
        inside = _inside_gt_major(picked, gt_boxes) & gt_valid[..., None]
        out[index].scatter_reduce_(
            1, topk_idx.reshape(b, -1), (weight * inside).reshape(b, -1), reduce="amax"
        )
    return torch.where(out < low_bound, torch.zeros_like(out), out)


def prediction_guided_weights(
    centers: Tensor,
    cls_logits: Tensor,
    boxes: Tensor,
    gt_boxes: Tensor,
    gt_labels: Tensor,
    *,
    alpha: float,
    topk: int,
    low_bound: float = 0.0,
    gaussian: bool = True,
) -> Tensor:
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
    weights = batched_prediction_guided_weights(
        centers,
        cls_logits[None],
        boxes[None],
        gt_boxes[None],
        gt_labels[None],
        torch.ones_like(gt_labels, dtype=torch.bool)[None],
        alphas=(alpha,),
        topk=topk,
        low_bound=low_bound,
        gaussian=gaussian,
    )
    return weights[0, 0].to(centers.dtype)


def batched_background_mask(centers: Tensor, gt_boxes: Tensor, gt_valid: Tensor) -> Tensor:
    """Step 6 for a batch with padded GTs: 1 where a centre is strictly inside no real GT.

    Args:
        centers (Tensor[N, 2]): prior centres (x, y), shared by the batch.
        gt_boxes (Tensor[B, G, 4]): padded GT boxes (x1, y1, x2, y2).
        gt_valid (Tensor[B, G], bool): False on padding.

    Returns:
        Tensor[B, N]: 0/1 in the dtype of ``centers``.
    """
    inside = _inside_gt_major(centers, gt_boxes.to(centers.dtype)) & gt_valid[..., None]
    return (~inside.any(dim=1)).to(centers.dtype)


def background_mask(centers: Tensor, gt_boxes: Tensor) -> Tensor:
    """Step 6: 1 where a prior's centre lies strictly inside no GT box, else 0.

    Args:
        centers (Tensor[N, 2]): prior centres (x, y).
        gt_boxes (Tensor[G, 4]): (x1, y1, x2, y2).

    Returns:
        Tensor[N]: 0/1 in the dtype of ``centers``; all ones when G = 0.
    """
    valid = gt_boxes.new_ones(gt_boxes.shape[0], dtype=torch.bool)
    return batched_background_mask(centers, gt_boxes[None], valid[None])[0]
