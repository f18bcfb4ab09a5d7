"""PGD feature-distillation losses for one FPN level (section 3 of the algorithm page).

Feature maps are head-tower outputs, Tensor[N, C, H, W]; weight maps are
Tensor[N, H, W] on the same grid. The teacher is detached here, so gradients
reach the student only, whatever the caller passes.
"""

from __future__ import annotations

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
