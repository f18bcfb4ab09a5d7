"""mmdet 3.3 model configs of the five detector families, built from a ModelSpec.

Plain dicts (no torch import); the values follow mmdet 3.3's own r50 1x
configs of each family, with the backbone, widths and class count from the spec.
"""

from __future__ import annotations

from typing import Any

from pgd_core.spec import STRIDES, ModelSpec, backbone_out_channels

#: mmdet model type and head type of each family.
FAMILIES: dict[str, tuple[str, str]] = {
    "fcos": ("FCOS", "FCOSHead"),
    "atss": ("ATSS", "ATSSHead"),
    "gfl": ("GFL", "GFLHead"),
    "autoassign": ("AutoAssign", "AutoAssignHead"),
    "ddod": ("DDOD", "DDODHead"),
}
#: ImageNet statistics, RGB order (torchvision-style backbones).
PIXEL_MEAN = (123.675, 116.28, 103.53)
PIXEL_STD = (58.395, 57.12, 57.375)
_TEST_CFG = dict(
    nms_pre=1000,
    min_bbox_size=0,
    score_thr=0.05,
    nms=dict(type="nms", iou_threshold=0.6),
    max_per_img=100,
)
_ANCHORS = dict(
    type="AnchorGenerator",
    ratios=[1.0],
    octave_base_scale=8,
    scales_per_octave=1,
    strides=list(STRIDES),
)
_DELTA_CODER = dict(
    type="DeltaXYWHBBoxCoder", target_means=[0.0] * 4, target_stds=[0.1, 0.1, 0.2, 0.2]
)
_FOCAL = dict(type="FocalLoss", use_sigmoid=True, gamma=2.0, alpha=0.25, loss_weight=1.0)


def data_preprocessor() -> dict[str, Any]:
    """Normalisation shared by teacher and student (the teacher reads the student's input)."""
    return dict(
        type="DetDataPreprocessor",
        mean=list(PIXEL_MEAN),
        std=list(PIXEL_STD),
        bgr_to_rgb=True,
        pad_size_divisor=32,
    )


def backbone_cfg(model: ModelSpec, pretrained: str | None) -> dict[str, Any]:
    cfg: dict[str, Any] = dict(
        type="ResNet",
        depth=model.depth,
        base_channels=model.base_channels,
        num_stages=4,
        out_indices=(0, 1, 2, 3),
        frozen_stages=1 if pretrained else -1,
        norm_cfg=dict(type="BN", requires_grad=True),
        norm_eval=bool(pretrained),
        style="pytorch",
    )
    if pretrained:
        cfg["init_cfg"] = dict(type="Pretrained", checkpoint=pretrained)
    return cfg


def neck_cfg(model: ModelSpec) -> dict[str, Any]:
    return dict(
        type="FPN",
        in_channels=list(backbone_out_channels(model)),
        out_channels=model.neck_channels,
        start_level=1,
        add_extra_convs="on_output",
        relu_before_extra_convs=True,
        num_outs=len(STRIDES),
    )


def head_cfg(detector: str, model: ModelSpec, num_classes: int) -> dict[str, Any]:
    """The family's head, as mmdet 3.3's r50 configs set it."""
    common = dict(
        type=FAMILIES[detector][1],
        num_classes=num_classes,
        in_channels=model.neck_channels,
        feat_channels=model.head_channels,
        stacked_convs=model.stacked_convs,
    )
    if detector == "fcos":
        # The "improved" FCOS: normalised boxes, centre sampling, GIoU, GN head.
        return dict(
            common,
            strides=list(STRIDES),
            norm_on_bbox=True,
            centerness_on_reg=True,
            center_sampling=True,
            conv_bias=True,
            dcn_on_last_conv=False,
            norm_cfg=dict(type="GN", num_groups=_groups(model.head_channels), requires_grad=True),
            loss_cls=_FOCAL,
            loss_bbox=dict(type="GIoULoss", loss_weight=1.0),
            loss_centerness=dict(type="CrossEntropyLoss", use_sigmoid=True, loss_weight=1.0),
        )
    if detector == "autoassign":
        return dict(
            common,
            strides=list(STRIDES),
            norm_cfg=dict(type="GN", num_groups=_groups(model.head_channels), requires_grad=True),
            loss_bbox=dict(type="GIoULoss", loss_weight=5.0),
        )
    if detector == "gfl":
        return dict(
            common,
            anchor_generator=_ANCHORS,
            reg_max=16,
            norm_cfg=dict(type="GN", num_groups=_groups(model.head_channels), requires_grad=True),
            loss_cls=dict(type="QualityFocalLoss", use_sigmoid=True, beta=2.0, loss_weight=1.0),
            loss_dfl=dict(type="DistributionFocalLoss", loss_weight=0.25),
            loss_bbox=dict(type="GIoULoss", loss_weight=2.0),
        )
    head = dict(
        common,
        anchor_generator=_ANCHORS,
        bbox_coder=_DELTA_CODER,
        loss_cls=_FOCAL,
        norm_cfg=dict(type="GN", num_groups=_groups(model.head_channels), requires_grad=True),
        loss_bbox=dict(type="GIoULoss", loss_weight=2.0),
    )
    if detector == "atss":
        return dict(
            head, loss_centerness=dict(type="CrossEntropyLoss", use_sigmoid=True, loss_weight=1.0)
        )
    return dict(
        head,
        use_dcn=model.use_dcn,
        loss_iou=dict(type="CrossEntropyLoss", use_sigmoid=True, loss_weight=1.0),
    )


def train_cfg(detector: str) -> dict[str, Any] | None:
    if detector in ("atss", "gfl"):
        return dict(
            assigner=dict(type="ATSSAssigner", topk=9),
            allowed_border=-1,
            pos_weight=-1,
            debug=False,
        )
    if detector == "ddod":
        return dict(
            assigner=dict(type="ATSSAssigner", topk=9, alpha=0.8),
            reg_assigner=dict(type="ATSSAssigner", topk=9, alpha=0.5),
            allowed_border=-1,
            pos_weight=-1,
            debug=False,
        )
    return None


def detector_cfg(
    detector: str, model: ModelSpec, num_classes: int, pretrained: str | None = None
) -> dict[str, Any]:
    """A complete mmdet detector config (a plain detector: what evaluation loads).

    Args:
        detector: one of the five families.
        model: architecture; ``model.num_classes`` overrides ``num_classes``.
        num_classes: the dataset's class count.
        pretrained: resolved path of the backbone's ImageNet checkpoint, if any.
    """
    classes = model.num_classes or num_classes
    return dict(
        type=FAMILIES[detector][0],
        data_preprocessor=data_preprocessor(),
        backbone=backbone_cfg(model, pretrained),
        neck=neck_cfg(model),
        bbox_head=head_cfg(detector, model, classes),
        train_cfg=train_cfg(detector),
        test_cfg=dict(_TEST_CFG),
    )


def _groups(channels: int) -> int:
    """GroupNorm groups: 32 as mmdet uses, fewer for narrow (tiny) heads."""
    for groups in (32, 16, 8, 4, 2, 1):
        if channels % groups == 0 and channels // groups >= 2:
            return groups
    return 1
