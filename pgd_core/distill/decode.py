"""Decode a dense head's raw outputs into per-prior logits and pixel boxes.

Each family is decoded the way its head decodes at test time (algorithm page,
section 1): FCOS / AutoAssign distances (already times stride in eval mode),
ATSS / DDOD deltas on anchors, GFL the integral of the distribution times stride.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from mmdet.models.dense_heads import ATSSHead, DDODHead, FCOSHead, GFLHead
from torch import Tensor

#: An mmdet detector or dense head. mmdet carries no type information, so their
#: own attributes (``bbox_head``, ``prior_generator``, ``cls_convs``, ...) are Any
#: here, not the ``Tensor | Module`` of ``nn.Module.__getattr__``.
MMDetModule = Any


@dataclass
class DensePredictions:
    """A batch of dense predictions flattened over levels (P priors per image).

    Attributes:
        centers (Tensor[P, 2]): prior centres (x, y) in input pixels, shared by the batch.
        cls_logits (Tensor[B, P, C]): classification logits.
        boxes (Tensor[B, P, 4]): decoded boxes (x1, y1, x2, y2), clipped to each image.
        level_shapes: (H, W, A) per level; priors are ordered level, row, column, anchor.
    """

    centers: Tensor
    cls_logits: Tensor
    boxes: Tensor
    level_shapes: list[tuple[int, int, int]]

    def per_location(self, values: Tensor) -> Tensor:
        """Per-prior values Tensor[B, P] to per-location Tensor[B, M] (max over the anchors
        of a location); M = sum H_l W_l, ordered level, row, column like the features."""
        return values.reshape(values.shape[0], -1, self.level_shapes[0][2]).amax(dim=-1)

    def split_locations(self, values: Tensor) -> list[Tensor]:
        """Per-location Tensor[B, M] to per-level maps [Tensor[B, H_l, W_l]]."""
        sizes = [h * w for h, w, _ in self.level_shapes]
        return [
            v.reshape(-1, h, w) for v, (h, w, _) in zip(values.split(sizes, 1), self.level_shapes)
        ]


def _flatten(maps: list[Tensor], per_prior: int) -> Tensor:
    """[Tensor[B, A*K, H, W]] to Tensor[B, sum(H*W*A), K] in mmdet's prior order."""
    return torch.cat(
        [m.permute(0, 2, 3, 1).reshape(m.shape[0], -1, per_prior) for m in maps], dim=1
    )


def _clip(boxes: Tensor, img_shapes: list[tuple[int, int]]) -> Tensor:
    """Clip Tensor[B, P, 4] to each image's (height, width), as test-time decoding does."""
    limits = boxes.new_tensor([[w, h, w, h] for h, w in img_shapes])[:, None, :]
    return torch.minimum(boxes.clamp(min=0), limits)


def _distance_boxes(centers: Tensor, dist: Tensor) -> Tensor:
    """Centres (P, 2) and (left, top, right, bottom) distances (B, P, 4) to boxes."""
    return torch.cat([centers[None] - dist[..., :2], centers[None] + dist[..., 2:]], dim=-1)


def decode_dense(
    head: MMDetModule,
    cls_scores: list[Tensor],
    bbox_preds: list[Tensor],
    img_shapes: list[tuple[int, int]],
) -> DensePredictions:
    """Decode one batch of a dense head's outputs.

    Args:
        head: an mmdet FCOSHead, AutoAssignHead, ATSSHead, GFLHead or DDODHead in eval mode.
        cls_scores ([Tensor[B, A*C, H, W]]): per level, P3 first.
        bbox_preds ([Tensor[B, A*4 or 4*(reg_max+1), H, W]]): per level.
        img_shapes: (height, width) of each input image before padding.

    Returns:
        DensePredictions with float32 tensors.
    """
    cls_scores = [c.float() for c in cls_scores]
    bbox_preds = [b.float() for b in bbox_preds]
    sizes = [tuple(c.shape[-2:]) for c in cls_scores]
    priors = head.prior_generator.grid_priors(
        sizes, dtype=torch.float32, device=cls_scores[0].device
    )
    num_anchors = head.prior_generator.num_base_priors[0]
    shapes = [(h, w, num_anchors) for h, w in sizes]
    logits = _flatten(cls_scores, head.cls_out_channels)
    if isinstance(head, FCOSHead):  # AutoAssignHead is an FCOSHead
        centers = torch.cat(priors)[:, :2]
        boxes = _distance_boxes(centers, _flatten(bbox_preds, 4))
    elif isinstance(head, GFLHead):
        anchors = torch.cat(priors)
        centers = (anchors[:, :2] + anchors[:, 2:]) / 2
        strides = torch.cat(
            [
                p.new_full((p.shape[0], 1), float(s[0]))
                for p, s in zip(priors, head.prior_generator.strides)
            ]
        )
        dist_logits = _flatten(bbox_preds, 4 * (head.reg_max + 1))
        dist = head.integral(dist_logits).reshape(dist_logits.shape[0], -1, 4) * strides
        boxes = _distance_boxes(centers, dist)
    elif isinstance(head, (ATSSHead, DDODHead)):
        anchors = torch.cat(priors)
        centers = (anchors[:, :2] + anchors[:, 2:]) / 2
        deltas = _flatten(bbox_preds, 4)
        boxes = torch.stack([head.bbox_coder.decode(anchors, d) for d in deltas])
    else:
        raise TypeError(
            f"PGD cannot decode a {type(head).__name__}; supported heads: "
            "FCOSHead, AutoAssignHead, ATSSHead, GFLHead, DDODHead"
        )
    return DensePredictions(
        centers=centers, cls_logits=logits, boxes=_clip(boxes, img_shapes), level_shapes=shapes
    )
