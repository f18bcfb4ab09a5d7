"""How strong the KD term is against the detection loss: gradient norms at a point.

PGD's weights (alpha, beta = alpha/2, gamma = 1.6 alpha) were tuned for 256-channel
heads on COCO. On other heads and data the same alpha can make the KD gradient
dominate the update (docs/study.md measured ~10x at the paper's alpha on 32-channel
heads at 160 px, and the students lost AP). :func:`gradient_balance` measures the
ratio ``|grad KD| / |grad detection|`` over every trainable parameter, and since
every KD term scales with alpha, the ratio at any other alpha follows.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch


@dataclass(frozen=True)
class GradientBalance:
    """Squared norms and dot product of the two gradients, summed over batches."""

    det_sq: float
    kd_sq: float
    dot: float
    alpha: float

    @property
    def ratio(self) -> float:
        """|grad KD| / |grad detection| at the measured alpha."""
        return (self.kd_sq / self.det_sq) ** 0.5 if self.det_sq > 0 else float("inf")

    def ratio_at(self, alpha: float) -> float:
        return self.ratio * alpha / self.alpha

    def alpha_for(self, ratio: float = 1.0) -> float:
        """The alpha at which the KD gradient is ``ratio`` times the detection one."""
        return self.alpha * ratio / self.ratio

    def cosine_at(self, alpha: float) -> float:
        """Cosine between the detection gradient and the total one at ``alpha``."""
        s = alpha / self.alpha
        total = (self.det_sq + 2 * s * self.dot + s * s * self.kd_sq) ** 0.5
        return (self.det_sq + s * self.dot) / (self.det_sq**0.5 * total)


def _total(value: Any) -> Any:
    """A loss entry as mmengine's parse_losses reduces it: the mean of a tensor, the
    sum of the means of a list of them."""
    if isinstance(value, (list, tuple)):
        return sum(item.mean() for item in value)
    return value.mean()


def gradient_balance(model: Any, batches: Iterable[Any], alpha: float) -> GradientBalance:
    """Detection vs KD gradients of a PGD distiller (``model``, in train mode, with its
    teacher loaded) on mmengine data batches; ``alpha`` is the model's own alpha.

    ``model`` is Any: mmdet's detectors are untyped (their ``data_preprocessor`` and
    ``loss`` are not ``nn.Module``'s)."""
    params = [p for p in model.parameters() if p.requires_grad]
    det_sq = kd_sq = dot = 0.0
    for batch in batches:
        data = model.data_preprocessor(batch, True)
        losses = model.loss(data["inputs"], data["data_samples"])
        det = sum(_total(v) for k, v in losses.items() if k.startswith("loss_") and "pgd" not in k)
        kd = sum(_total(v) for k, v in losses.items() if k.startswith("loss_pgd"))
        if not isinstance(kd, torch.Tensor):
            raise ValueError("the model adds no KD loss (method none or inherit?)")
        g_det = torch.autograd.grad(det, params, retain_graph=True, allow_unused=True)
        g_kd = torch.autograd.grad(kd, params, allow_unused=True)
        for a, b in zip(g_det, g_kd, strict=True):
            if a is not None:
                det_sq += float(a.pow(2).sum())
            if b is not None:
                kd_sq += float(b.pow(2).sum())
            if a is not None and b is not None:
                dot += float((a * b).sum())
    return GradientBalance(det_sq, kd_sq, dot, alpha)
