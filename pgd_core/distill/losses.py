"""PGD feature-distillation losses for one FPN level (section 3 of the algorithm page).

Feature maps are head-tower outputs, Tensor[N, C, H, W]; weight maps are
Tensor[N, H, W] on the same grid. The teacher is detached here, so gradients
reach the student only, whatever the caller passes.
"""

from __future__ import annotations

import torch
from mmdet.utils import reduce_mean
from torch import Tensor


def spatial_attention(feat: Tensor, temp: float) -> Tensor:
    """``A_S(F) = H*W * softmax_HW(mean_c |F| / T)``.

    Args:
        feat (Tensor[N, C, H, W]).

    Returns:
        Tensor[N, H, W]; each image's map sums to H*W.
    """
    n, _, h, w = feat.shape
    logits = feat.abs().mean(dim=1).reshape(n, h * w) / temp
    return (h * w * logits.softmax(dim=1)).reshape(n, h, w)


def channel_attention(feat: Tensor, temp: float) -> Tensor:
    """``A_C(F) = C * softmax_C(|F| / T)`` at every location.

    Args:
        feat (Tensor[N, C, H, W]).

    Returns:
        Tensor[N, C, H, W]; sums to C over channels at each location.
    """
    return feat.shape[1] * (feat.abs() / temp).softmax(dim=1)


def normalise_per_image(weight: Tensor) -> Tensor:
    """Divide each image's map by its own count of non-zero entries (at least 1).

    Args:
        weight (Tensor[N, H, W]).

    Returns:
        Tensor[N, H, W].
    """
    count = (weight != 0).flatten(1).sum(dim=1).clamp(min=1)
    return weight / count.to(weight.dtype)[:, None, None]


def _check_pair(student: Tensor, teacher: Tensor, *weights: Tensor) -> None:
    if student.shape != teacher.shape or student.dim() != 4:
        raise ValueError(
            f"student and teacher features must share a (N, C, H, W) shape, "
            f"got {tuple(student.shape)} and {tuple(teacher.shape)}"
        )
    n, _, h, w = student.shape
    for wt in weights:
        if tuple(wt.shape) != (n, h, w):
            raise ValueError(f"weight map must be (N, H, W) = {(n, h, w)}, got {tuple(wt.shape)}")


def pgd_cls_loss(
    student: Tensor,
    teacher: Tensor,
    fg_weight: Tensor,
    bg_weight: Tensor,
    *,
    temp_s: float,
    temp_c: float,
    alpha: float,
    beta: float,
    delta: float,
    loss_weight: float = 1.0,
) -> Tensor:
    """Classification-branch loss of one level.

    ``loss_weight * (alpha * L_fg + beta * L_bg) + delta * L_att``, with
    ``L_fg = (1/N) sum M~ A_S(T) A_C(T) (S - T)^2`` where ``M~`` is the foreground
    map divided by its own image's non-zero count (never across the batch), and
    ``L_att = sum |A_C(S) - A_C(T)| / (N H W) + sum |A_S(S) - A_S(T)| / N``.

    Args:
        student (Tensor[N, C, H, W]): student cls-tower features.
        teacher (Tensor[N, C, H, W]): teacher cls-tower features.
        fg_weight (Tensor[N, H, W]): prediction-guided (or other) foreground map.
        bg_weight (Tensor[N, H, W]): background map.
        temp_s, temp_c: temperatures of the spatial and channel attention.
        alpha, beta, delta: weights of the foreground, background and attention terms.
        loss_weight: the level weight lambda_l (scales foreground and background only).

    Returns:
        Tensor[] (scalar).
    """
    _check_pair(student, teacher, fg_weight, bg_weight)
    teacher = teacher.detach()
    n = student.shape[0]
    att_s_t = spatial_attention(teacher, temp_s)  # (N, H, W)
    att_c_t = channel_attention(teacher, temp_c)  # (N, C, H, W)
    # alpha * L_fg + beta * L_bg in one pass: both weigh the same squared error.
    mask = alpha * normalise_per_image(fg_weight) + beta * normalise_per_image(bg_weight)
    weighted = (student - teacher).pow(2) * att_c_t * (att_s_t * mask)[:, None]
    _, _, h, w = student.shape
    att_loss = (channel_attention(student, temp_c) - att_c_t).abs().sum() / (n * h * w) + (
        spatial_attention(student, temp_s) - att_s_t
    ).abs().sum() / n
    return loss_weight * weighted.sum() / n + delta * att_loss


def pgd_reg_loss(
    student: Tensor, teacher: Tensor, fg_weight: Tensor, *, temp: float, gamma: float, delta: float
) -> Tensor:
    """Regression-branch loss of one level, at the P locations where the map is > 0.

    ``gamma * mean_P(R * mean_c(A(T) (S - T)^2)) + delta * sum |A(S) - A(T)| / P``
    with ``A = C * softmax_C(|F| / T)``. Zero (keeping the graph) when P = 0.

    Args:
        student (Tensor[N, C, H, W]): student reg-tower features.
        teacher (Tensor[N, C, H, W]): teacher reg-tower features.
        fg_weight (Tensor[N, H, W]): regression map R.
        temp: channel-attention temperature.
        gamma, delta: weights of the feature and attention terms.

    Returns:
        Tensor[] (scalar).
    """
    _check_pair(student, teacher, fg_weight)
    keep = fg_weight > 0  # (N, H, W)
    p = int(keep.sum())
    if p == 0:
        return student.sum() * 0.0
    s = student.permute(0, 2, 3, 1)[keep]  # (P, C)
    t = teacher.detach().permute(0, 2, 3, 1)[keep]
    r = fg_weight[keep]  # (P,)
    c = s.shape[1]
    att_t = c * (t.abs() / temp).softmax(dim=1)
    att_s = c * (s.abs() / temp).softmax(dim=1)
    feat = (r * (att_t * (s - t).pow(2)).mean(dim=1)).mean()
    return gamma * feat + delta * (att_s - att_t).abs().sum() / p


def _flatten_levels(feats: list[Tensor]) -> Tensor:
    """[Tensor[N, C, H_l, W_l]] to Tensor[N, C, M], M = sum H_l W_l, P3 first."""
    return torch.cat([f.flatten(2) for f in feats], dim=2)


def _spatial_attention_flat(flat_mean: Tensor, sizes: list[int], temp: float) -> Tensor:
    """Per-level ``A_S`` on level-concatenated channel means Tensor[N, M] -> Tensor[N, M]."""
    parts = [hw * (p / temp).softmax(dim=1) for p, hw in zip(flat_mean.split(sizes, 1), sizes)]
    return torch.cat(parts, dim=1)


def _per_image_level_norm(maps: Tensor, level_id: Tensor, levels: int) -> Tensor:
    """Divide Tensor[N, M] by each (image, level)'s count of non-zero entries (at least 1)."""
    counts = maps.new_zeros(maps.shape[0], levels).index_add_(1, level_id, (maps != 0).to(maps))
    return maps / counts.clamp(min=1)[:, level_id]


def pgd_multilevel_losses(
    s_cls: list[Tensor],
    t_cls: list[Tensor],
    s_reg: list[Tensor],
    t_reg: list[Tensor],
    cls_map: Tensor,
    bg_map: Tensor,
    reg_map: Tensor,
    *,
    temp: float,
    alpha: float,
    beta: float,
    gamma: float,
    delta: float,
    level_weights: tuple[float, ...],
    with_reg: bool = True,
) -> tuple[Tensor, Tensor | None]:
    """Sum over levels of :func:`pgd_cls_loss` and :func:`pgd_reg_loss`, in one pass.

    The same maths as calling the per-level functions (with ``temp_s = temp_c = temp``
    and ``loss_weight = level_weights[l]``) and adding the results, but on the
    levels' locations concatenated: a handful of kernels instead of ~40 per
    level, which is most of PGD's cost on small feature maps.

    Args:
        s_cls, t_cls, s_reg, t_reg ([Tensor[N, C, H_l, W_l]]): tower features per level.
        cls_map, bg_map, reg_map (Tensor[N, M]): weight maps over the levels' locations
            concatenated (level, row, column; M = sum H_l W_l), as the features flatten.
        level_weights: lambda_l per level (classification branch only).
        with_reg: False skips the regression branch (returns None for it).

    Returns:
        (classification loss, regression loss or None), scalars.
    """
    sizes = [f.shape[2] * f.shape[3] for f in s_cls]
    levels = len(sizes)
    for name, m in (("cls_map", cls_map), ("bg_map", bg_map), ("reg_map", reg_map)):
        if tuple(m.shape) != (s_cls[0].shape[0], sum(sizes)):
            raise ValueError(
                f"{name} must be (N, M) = {(s_cls[0].shape[0], sum(sizes))}, got {tuple(m.shape)}"
            )
    device = s_cls[0].device
    level_id = torch.repeat_interleave(
        torch.arange(levels, device=device), torch.tensor(sizes, device=device)
    )
    s, t = _flatten_levels(s_cls), _flatten_levels(t_cls).detach()
    n, c, _ = s.shape
    with torch.no_grad():
        lam = torch.tensor(level_weights[:levels], dtype=s.dtype, device=device)[level_id]
        fg = _per_image_level_norm(cls_map, level_id, levels)
        bg = _per_image_level_norm(bg_map, level_id, levels)
        att_c_t = c * (t.abs() / temp).softmax(dim=1)
        att_s_t = _spatial_attention_flat(t.abs().mean(dim=1), sizes, temp)
        inv_hw = 1.0 / torch.tensor(sizes, dtype=s.dtype, device=device)[level_id]
        weight = (alpha * fg + beta * bg) * lam * att_s_t  # (N, M)
    feat = ((s - t).pow(2) * att_c_t * weight[:, None]).sum() / n
    att_c = ((c * (s.abs() / temp).softmax(dim=1) - att_c_t).abs().sum(dim=1) * inv_hw).sum()
    att_s = (_spatial_attention_flat(s.abs().mean(dim=1), sizes, temp) - att_s_t).abs().sum()
    cls_loss = feat + delta * (att_c + att_s) / n
    if not with_reg:
        return cls_loss, None
    return cls_loss, _multilevel_reg(
        s_reg, t_reg, reg_map, level_id, levels, temp=temp, gamma=gamma, delta=delta
    )


def _multilevel_reg(
    s_reg: list[Tensor],
    t_reg: list[Tensor],
    r: Tensor,
    level_id: Tensor,
    levels: int,
    *,
    temp: float,
    gamma: float,
    delta: float,
) -> Tensor:
    """Sum over levels of :func:`pgd_reg_loss` on level-concatenated locations.

    Under data parallelism the P of each level is the mean over the ranks (mmdet's
    ``reduce_mean``, as its heads do for their positive counts): each rank's loss is
    then its share of the global batch's, and the gradient DDP averages is the one
    of a single process holding the whole batch. Every rank must call this.
    """
    keep = r > 0
    dtype = s_reg[0].dtype
    with torch.no_grad():
        lvl = level_id.expand_as(keep)[keep]  # level of each kept location
        per_level = torch.zeros(levels, dtype=dtype, device=r.device).index_add_(
            0, lvl, torch.ones_like(lvl, dtype=dtype)
        )
        per_level = reduce_mean(per_level)  # identity in a single process
    s = _flatten_levels(s_reg).transpose(1, 2)[keep]  # (P, C)
    if s.shape[0] == 0:
        return s_reg[0].sum() * 0.0
    t = _flatten_levels(t_reg).detach().transpose(1, 2)[keep]
    c = s.shape[1]
    with torch.no_grad():
        inv_p = 1.0 / per_level[lvl]  # (P,)
        att_t = c * (t.abs() / temp).softmax(dim=1)
        feat_w = gamma * r[keep] * inv_p / c
    feat = ((att_t * (s - t).pow(2)).sum(dim=1) * feat_w).sum()
    att = ((c * (s.abs() / temp).softmax(dim=1) - att_t).abs().sum(dim=1) * inv_p).sum()
    return feat + delta * att
