"""The PGD distiller: a one-stage student trained beside a frozen teacher.

The distiller *is* the student (a SingleStageDetector subclass), so its state
dict, checkpoints and ``predict`` are exactly a plain detector's. The teacher is
held outside the module tree: it never appears in ``parameters()`` (so never in
the optimizer) nor in ``state_dict()`` (so never in the student's checkpoint).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any

import torch
from mmdet.models.detectors import SingleStageDetector
from mmdet.registry import MODELS
from mmengine.runner.checkpoint import load_checkpoint
from torch import Tensor, nn

import pgd_core.compat  # noqa: F401  (checkpoint loading on torch >= 2.6)
from pgd_core.distill.decode import DensePredictions, MMDetModule, decode_dense
from pgd_core.distill.losses import pgd_multilevel_losses
from pgd_core.distill.regions import batched_background_mask, batched_prediction_guided_weights
from pgd_core.spec import DistillSettings

log = logging.getLogger("pgd.distiller")


class PairingError(ValueError):
    """Teacher and student cannot be distilled into one another."""


class TowerRecorder:
    """Forward hooks that keep one tower layer's output per FPN level while recording.

    The head is shared across levels, so each hook fires once per level, P3 first.
    """

    def __init__(self, head: MMDetModule, layer: int) -> None:
        self.cls: list[Tensor] = []
        self.reg: list[Tensor] = []
        self._active = False
        head.cls_convs[layer].register_forward_hook(self._keep(self.cls))
        head.reg_convs[layer].register_forward_hook(self._keep(self.reg))

    def _keep(self, store: list[Tensor]):
        def hook(_module: nn.Module, _inputs: Any, output: Tensor) -> None:
            if self._active:
                store.append(output)

        return hook

    @contextlib.contextmanager
    def recording(self) -> Iterator[TowerRecorder]:
        self.cls.clear()
        self.reg.clear()
        self._active = True
        try:
            yield self
        finally:
            self._active = False


@MODELS.register_module()
class PGDDistiller(SingleStageDetector):
    """A one-stage student distilled from a frozen teacher of the same family.

    Args:
        backbone, neck, bbox_head, train_cfg, test_cfg, data_preprocessor, init_cfg:
            the student, as for any mmdet SingleStageDetector.
        teacher: the teacher's detector config, or None to train the student alone.
        teacher_checkpoint: file loaded into the teacher by ``init_weights``.
        distill: keyword arguments of :class:`pgd_core.spec.DistillSettings`.
    """

    def __init__(
        self,
        *,
        backbone: dict,
        neck: dict,
        bbox_head: dict,
        train_cfg: dict | None = None,
        test_cfg: dict | None = None,
        data_preprocessor: dict | None = None,
        init_cfg: dict | None = None,
        teacher: dict | None = None,
        teacher_checkpoint: str | None = None,
        distill: dict | None = None,
    ) -> None:
        super().__init__(
            backbone=backbone,
            neck=neck,
            bbox_head=bbox_head,
            train_cfg=train_cfg,
            test_cfg=test_cfg,
            data_preprocessor=data_preprocessor,
            init_cfg=init_cfg,
        )
        self.settings = DistillSettings(**(distill or {}))
        self.teacher_checkpoint = teacher_checkpoint
        # Outside the module tree on purpose (see the module docstring).
        object.__setattr__(self, "teacher", None)
        self.adapters: nn.ModuleDict | None = None
        #: init_student: neck tensors that kept the student's init (shapes differ).
        self.neck_kept: list[str] = []
        if teacher is None:
            return
        if teacher.get("data_preprocessor") not in (None, data_preprocessor):
            raise PairingError(
                "teacher.data_preprocessor must equal the student's: the "
                "teacher reads the student's normalised input"
            )
        built = MODELS.build({k: v for k, v in teacher.items() if k != "data_preprocessor"})
        built.requires_grad_(False)
        built.eval()
        object.__setattr__(self, "teacher", built)
        self._check_pairing(built)
        self.adapters = self._build_adapters(built)
        layer = self.settings.tower_layer
        self._student_towers = TowerRecorder(self.bbox_head, layer)
        self._teacher_towers = TowerRecorder(built.bbox_head, layer)

    # -- construction -----------------------------------------------------------------
    def _check_pairing(self, teacher: MMDetModule) -> None:
        s_head, t_head = self.bbox_head, teacher.bbox_head
        checks = [
            ("detector family", type(s_head).__name__, type(t_head).__name__),
            ("num_classes", s_head.num_classes, t_head.num_classes),
            ("strides", _strides(s_head), _strides(t_head)),
            (
                "priors per location",
                s_head.prior_generator.num_base_priors,
                t_head.prior_generator.num_base_priors,
            ),
        ]
        if not self.settings.adapter:
            checks.append(
                (
                    "head channels (set adapter=True to bridge them)",
                    s_head.feat_channels,
                    t_head.feat_channels,
                )
            )
        for what, student, teacher_value in checks:
            if student != teacher_value:
                raise PairingError(
                    f"cannot distil: student {what} is {student}, teacher {what} is {teacher_value}"
                )
        layer = self.settings.tower_layer
        for who, head in (("student", s_head), ("teacher", t_head)):
            if layer >= len(head.cls_convs):
                raise PairingError(
                    f"tower_layer {layer} is outside the {who}'s {len(head.cls_convs)}-layer towers"
                )
        if self.settings.init_student:
            _check_same_shapes("bbox_head", self.bbox_head, teacher.bbox_head)
            _check_same_shapes("neck", self.neck, teacher.neck, allow_other_shapes=True)

    def _build_adapters(self, teacher: MMDetModule) -> nn.ModuleDict | None:
        s_ch, t_ch = self.bbox_head.feat_channels, teacher.bbox_head.feat_channels
        if not self.settings.adapter:
            return None
        return nn.ModuleDict({b: nn.Conv2d(s_ch, t_ch, kernel_size=1) for b in ("cls", "reg")})

    def init_weights(self) -> None:
        """Initialise the student, load the teacher, then copy neck and head (in that order:
        the runner's init would otherwise overwrite the copy)."""
        super().init_weights()
        if self.teacher is None:
            return
        self.teacher.init_weights()
        if self.teacher_checkpoint:
            load_checkpoint(
                self.teacher,
                self.teacher_checkpoint,
                map_location="cpu",
                strict=False,
                revise_keys=[(r"^module\.", "")],
            )
        self.teacher.eval()
        if self.settings.init_student:
            self.bbox_head.load_state_dict(self.teacher.bbox_head.state_dict())
            self.neck_kept = _copy_same_shapes(self.neck, self.teacher.neck)

    def _apply(self, fn, *args, **kwargs):  # noqa: ANN001 - torch's signature
        # .to()/.cuda()/.half() must move the unregistered teacher too.
        super()._apply(fn, *args, **kwargs)
        if self.teacher is not None:
            self.teacher._apply(fn, *args, **kwargs)
        return self

    # -- training ---------------------------------------------------------------------
    def loss(self, batch_inputs: Tensor, batch_data_samples: list) -> dict[str, Any]:
        """The student's own losses plus the KD terms of every level."""
        if self.teacher is None or not self.settings.with_kd_loss:
            return super().loss(batch_inputs, batch_data_samples)
        # Teacher first: its activations are freed before the student's forward,
        # and the student's forward and backward stay back to back.
        with torch.no_grad(), self._teacher_towers.recording():
            cls_scores, bbox_preds = self.teacher.bbox_head(
                self.teacher.extract_feat(batch_inputs)
            )[:2]
            preds = decode_dense(
                self.teacher.bbox_head,
                cls_scores,
                bbox_preds,
                [s.metainfo["img_shape"][:2] for s in batch_data_samples],
            )
            maps = self.region_maps(preds, batch_data_samples)
        with self._student_towers.recording():
            losses = super().loss(batch_inputs, batch_data_samples)
        losses.update(self._kd_losses(maps, len(preds.level_shapes)))
        return losses

    def region_maps(self, preds: DensePredictions, batch_data_samples: list) -> dict[str, Tensor]:
        """Cls, reg and background maps {'cls'|'reg'|'bg': Tensor[B, M]} over the levels'
        locations concatenated (``preds.split_locations`` gives them per level).

        The whole batch at once: GTs are padded to the largest count in the batch.
        """
        s = self.settings
        gt_boxes, gt_labels, gt_valid = _padded_gts(batch_data_samples, preds.centers.device)
        bg = batched_background_mask(preds.centers, gt_boxes, gt_valid)
        if s.method == "fgd_box":
            cls_map = reg_map = 1.0 - bg
        else:
            cls_map, reg_map = batched_prediction_guided_weights(
                preds.centers,
                preds.cls_logits,
                preds.boxes,
                gt_boxes,
                gt_labels,
                gt_valid,
                alphas=(s.cls_quality_alpha, s.reg_quality_alpha),
                topk=s.topk,
                low_bound=s.low_bound,
                gaussian=s.method != "pgd_no_gaussian",
            )
        return {
            k: preds.per_location(v) for k, v in (("cls", cls_map), ("reg", reg_map), ("bg", bg))
        }

    def _kd_losses(self, maps: dict[str, Tensor], levels: int) -> dict[str, Tensor]:
        s = self.settings
        student, teacher = self._student_towers, self._teacher_towers
        for who, rec in (("student", student), ("teacher", teacher)):
            if len(rec.cls) != levels or len(rec.reg) != levels:
                raise RuntimeError(
                    f"expected {levels} {who} tower outputs per branch, "
                    f"recorded {len(rec.cls)} cls and {len(rec.reg)} reg"
                )
        s_cls, s_reg = student.cls, student.reg
        if self.adapters is not None:
            s_cls = [self.adapters["cls"](f) for f in s_cls]
            s_reg = [self.adapters["reg"](f) for f in s_reg]
        dtype = s_cls[0].dtype
        cls_loss, reg_loss = pgd_multilevel_losses(
            s_cls,
            teacher.cls,
            s_reg,
            teacher.reg,
            maps["cls"].to(dtype),
            maps["bg"].to(dtype),
            maps["reg"].to(dtype),
            temp=s.temp,
            alpha=s.alpha,
            beta=s.resolved_beta,
            gamma=s.resolved_gamma,
            delta=s.delta,
            level_weights=s.level_weights,
            with_reg=s.method != "pgd_cls_only",
        )
        losses = {"loss_pgd_cls": cls_loss}
        if reg_loss is not None:
            losses["loss_pgd_reg"] = reg_loss
        return losses


def _padded_gts(samples: list, device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
    """GT boxes Tensor[B, G, 4], labels Tensor[B, G] and validity Tensor[B, G] padded
    to the batch's largest GT count."""
    boxes = []
    for sample in samples:
        b = sample.gt_instances.bboxes
        boxes.append((b.tensor if hasattr(b, "tensor") else b).float())  # mmdet box types
    g = max((len(b) for b in boxes), default=0)
    out_boxes = torch.zeros(len(samples), g, 4, device=device)
    labels = torch.zeros(len(samples), g, dtype=torch.long, device=device)
    valid = torch.zeros(len(samples), g, dtype=torch.bool, device=device)
    for i, (b, sample) in enumerate(zip(boxes, samples)):
        out_boxes[i, : len(b)] = b
        labels[i, : len(b)] = sample.gt_instances.labels
        valid[i, : len(b)] = True
    return out_boxes, labels, valid


def _strides(head: MMDetModule) -> list[int]:
    return [
        int(s[0]) if isinstance(s, (tuple, list)) else int(s) for s in head.prior_generator.strides
    ]


def _copy_same_shapes(student: nn.Module, teacher: nn.Module) -> list[str]:
    """Copy every module of ``teacher`` into ``student`` whose tensors all have the same
    shapes; return the keys left as the student had them (a wider teacher backbone
    changes only the FPN's lateral convs, which read it; the rest of the neck is copied)."""
    s_state, t_state = student.state_dict(), teacher.state_dict()
    # Whole modules: a lateral conv's bias has the same shape in both, its weight not.
    other = {k.rsplit(".", 1)[0] for k in s_state if s_state[k].shape != t_state[k].shape}
    kept = [k for k in s_state if k.rsplit(".", 1)[0] in other]
    copied = {k: v for k, v in t_state.items() if k not in kept}
    missing, unexpected = student.load_state_dict(copied, strict=False)
    assert sorted(missing) == sorted(kept) and not unexpected, (missing, unexpected)
    if kept:
        log.info("init_student: neck tensors of another shape kept their own init: %s", kept)
    return kept


def _check_same_shapes(
    part: str, student: nn.Module, teacher: nn.Module, *, allow_other_shapes: bool = False
) -> None:
    """The same tensors; with ``allow_other_shapes``, shapes may differ where the
    tensor exists in both."""
    s_state, t_state = student.state_dict(), teacher.state_dict()
    for key in sorted(set(s_state) | set(t_state)):
        s_shape = tuple(s_state[key].shape) if key in s_state else None
        t_shape = tuple(t_state[key].shape) if key in t_state else None
        if allow_other_shapes and s_shape is not None and t_shape is not None:
            continue
        if s_shape != t_shape:
            raise PairingError(
                f"init_student needs the teacher's {part} shape: {part}.{key} "
                f"is {s_shape} in the student and {t_shape} in the teacher "
                "(set init_student=False)"
            )
