"""Typed specification of a run: what to train, distil or evaluate, and how.

This module imports neither torch nor mmdet: the API validates job requests
with it. The spec is turned into an mmengine config in code
(:mod:`pgd_core.configs.runner`); no user-supplied Python is ever executed.
"""

from __future__ import annotations

import hashlib
import json
from typing import Annotated, Any, Literal, get_args

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PositiveFloat,
    PositiveInt,
    field_validator,
    model_validator,
)

Detector = Literal["fcos", "atss", "gfl", "autoassign", "ddod"]
Kind = Literal["train", "distill", "evaluate"]
Device = Literal["cuda", "cpu"]
#: ``pgd``: the paper. ``pgd_no_gaussian``: uniform weights on the top-K (ablation).
#: ``pgd_cls_only``: classification branch only (ablation). ``fgd_box``: every
#: location inside a GT box weighted 1. ``inherit``: the student's neck and head
#: start from the teacher's weights (as ``init_student`` does) and no KD loss is
#: added, the control that separates PGD's initialisation from its loss.
#: ``none``: the student alone, same code path.
KDMethod = Literal["pgd", "pgd_no_gaussian", "pgd_cls_only", "fgd_box"]
TeacherMethod = Literal[KDMethod, "inherit"]
Method = Literal[TeacherMethod, "none"]

DETECTORS: tuple[str, ...] = get_args(Detector)
#: Methods that add a KD loss (each needs a teacher and distillation settings).
KD_METHODS: tuple[str, ...] = get_args(KDMethod)
#: Methods the distiller runs with a teacher: the KD losses, and ``inherit``
#: (the teacher's neck and head as the student's start, no KD loss).
TEACHER_METHODS: tuple[str, ...] = get_args(TeacherMethod)
METHODS: tuple[str, ...] = get_args(Method)
#: The FPN levels every supported head predicts on (P3..P7).
STRIDES: tuple[int, ...] = (8, 16, 32, 64, 128)
PAPER_LEVEL_WEIGHTS: tuple[float, ...] = (1.0, 1.25, 1.5, 1.75, 2.0)
_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$"
#: Most data-parallel processes (GPUs) one run may ask for: one machine's worth.
MAX_PROCESSES = 8


#: An image side in pixels (8K is past any detection benchmark's test size).
ImageSide = Annotated[int, Field(gt=0, le=8192)]


class _Frozen(BaseModel):
    # NaN and infinities are refused by name: JSON cannot carry them back out.
    # Strict: "max_iters": "20", true or 20.5 is an error naming the field, never
    # a silent conversion (an integer for a float field is fine).
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False, strict=True)

    @field_validator("*", mode="before")
    @classmethod
    def _json_lists_are_tuples(cls, value: Any) -> Any:
        # JSON has no tuples; strict validation would refuse every list.
        return tuple(value) if isinstance(value, list) else value


class ModelSpec(_Frozen):
    """One detector's architecture: a ResNet-FPN backbone and a dense head."""

    depth: Literal[18, 34, 50, 101] = 50
    base_channels: int = Field(64, ge=4, le=128, description="ResNet stem width")
    neck_channels: PositiveInt = 256
    head_channels: PositiveInt = Field(256, description="feat_channels of the head towers")
    stacked_convs: int = Field(4, ge=1, le=8)
    use_dcn: bool = Field(True, description="DDOD only: deformable first tower conv")
    pretrained: str | None = Field(
        None,
        pattern=_NAME_PATTERN,
        description="name of an ImageNet backbone checkpoint under the weights root",
    )
    num_classes: PositiveInt | None = Field(
        None, description="defaults to the dataset's class count"
    )


class DataSpec(_Frozen):
    """A named dataset (registered under the data root) and its image sizes."""

    name: str = Field(..., pattern=_NAME_PATTERN)
    train_split: str = Field("train", pattern=_NAME_PATTERN)
    val_split: str = Field("val", pattern=_NAME_PATTERN)
    img_scale: tuple[ImageSide, ImageSide] = Field((1333, 800), description="(long, short)")
    multiscale_short: tuple[ImageSide, ...] | None = Field(
        None,
        max_length=32,
        description="short sides sampled at training time (multi-scale training)",
    )


class ScheduleSpec(_Frozen):
    """SGD schedule counted in iterations (a COCO 1x is 90k at 16 images/iter)."""

    max_iters: PositiveInt = 90_000
    batch_size: PositiveInt = 16
    lr: PositiveFloat = 0.02
    momentum: float = Field(0.9, ge=0.0, lt=1.0)
    weight_decay: float = Field(1e-4, ge=0.0)
    warmup_iters: int = Field(500, ge=0)
    milestones: tuple[PositiveInt, ...] = Field((60_000, 80_000), max_length=32)
    grad_clip: PositiveFloat | None = 35.0
    val_interval: PositiveInt | None = Field(None, description="None: evaluate at the end only")
    checkpoint_interval: PositiveInt = 5_000
    log_interval: PositiveInt = 50
    num_workers: int = Field(2, ge=0, le=32)

    @model_validator(mode="after")
    def _milestones_inside(self) -> ScheduleSpec:
        if list(self.milestones) != sorted(set(self.milestones)):
            raise ValueError("schedule.milestones must be strictly increasing")
        if self.milestones and self.milestones[-1] > self.max_iters:
            raise ValueError(
                f"schedule.milestones end at {self.milestones[-1]}, "
                f"after schedule.max_iters = {self.max_iters}"
            )
        return self


class DistillSpec(_Frozen):
    """PGD hyper-parameters (section 4 of the algorithm page)."""

    temp: PositiveFloat = 0.8
    alpha: PositiveFloat = 0.04
    beta: PositiveFloat | None = Field(None, description="None: alpha / 2")
    gamma: PositiveFloat | None = Field(None, description="None: 1.6 * alpha")
    delta: PositiveFloat = 8e-4
    level_weights: tuple[PositiveFloat, ...] = Field(PAPER_LEVEL_WEIGHTS, max_length=8)
    topk: PositiveInt = 30
    cls_quality_alpha: float = Field(0.8, ge=0.0, le=1.0)
    reg_quality_alpha: float = Field(0.6, ge=0.0, le=1.0)
    low_bound: float = Field(0.0, ge=0.0, lt=1.0)
    tower_layer: int = Field(0, ge=0)
    init_student: bool = True
    adapter: bool = Field(False, description="1x1 conv on the student when head widths differ")

    @property
    def resolved_beta(self) -> float:
        return self.alpha / 2 if self.beta is None else self.beta

    @property
    def resolved_gamma(self) -> float:
        return 1.6 * self.alpha if self.gamma is None else self.gamma

    @model_validator(mode="after")
    def _one_weight_per_level(self) -> DistillSpec:
        if len(self.level_weights) != len(STRIDES):
            raise ValueError(
                f"distill.level_weights needs {len(STRIDES)} values (P3..P7), "
                f"got {len(self.level_weights)}"
            )
        return self


class DistillSettings(DistillSpec):
    """What the distiller runs: a method with a teacher and the DistillSpec's
    hyper-parameters (the same fields and defaults), beta and gamma filled in.

    ``model_cfg`` writes one into the model config with :meth:`for_run`; the
    distiller reads it back from there (:class:`pgd_core.distill.distiller.PGDDistiller`).
    """

    method: TeacherMethod = "pgd"

    @classmethod
    def for_run(cls, method: str, distill: DistillSpec) -> DistillSettings:
        """``distill`` for ``method``, with its resolved beta and gamma."""
        return cls.model_validate(
            {
                "method": method,
                **distill.model_dump(),
                "beta": distill.resolved_beta,
                "gamma": distill.resolved_gamma,
            }
        )

    @property
    def with_kd_loss(self) -> bool:
        return self.method in KD_METHODS

    @model_validator(mode="after")
    def _inherit_starts_from_the_teacher(self) -> DistillSettings:
        if self.method == "inherit" and not self.init_student:
            raise ValueError("distill method 'inherit' needs init_student=True")
        return self


class RunSpec(_Frozen):
    """Everything that defines a run; its hash identifies it."""

    kind: Kind
    detector: Detector
    dataset: DataSpec
    student: ModelSpec = ModelSpec()
    teacher: ModelSpec | None = None
    teacher_ref: str | None = Field(
        None,
        pattern=_NAME_PATTERN,
        description="the teacher's job id (a job that has not finished yet makes this "
        "one wait for it) or a registered checkpoint name",
    )
    checkpoint_ref: str | None = Field(
        None, pattern=_NAME_PATTERN, description="evaluate: the checkpoint to evaluate"
    )
    method: Method = "none"
    distill: DistillSpec | None = None
    schedule: ScheduleSpec = ScheduleSpec()
    seed: int = Field(0, ge=0, lt=2**31)
    device: Device = Field(
        "cuda",
        description="where it runs: 'cuda' jobs go to GPU workers, 'cpu' jobs to CPU workers",
    )
    processes: int = Field(
        1,
        ge=1,
        le=MAX_PROCESSES,
        description="data-parallel processes on one machine: one per GPU for 'cuda' runs "
        "(NCCL), gloo processes for 'cpu' runs; schedule.batch_size is the global batch, "
        "split evenly over them",
    )

    @model_validator(mode="after")
    def _consistent(self) -> RunSpec:
        for problem in _problems(self):
            raise ValueError(problem)
        return self

    def spec_hash(self) -> str:
        """SHA-256 of the canonical JSON form (defaults filled in; ``processes`` only
        when above 1, so that a spec's hash is the one it had before the field existed)."""
        data = self.model_dump(mode="json")
        if data["processes"] == 1:
            del data["processes"]
        return _sha256(data)

    def config_hash(self) -> str:
        """SHA-256 of everything but the seed and the process count: runs that differ
        only by seed share it (the leaderboard groups them), and so do runs of one
        global batch on 1 or 8 GPUs."""
        data = self.model_dump(mode="json")
        data.pop("seed")
        data.pop("processes")
        return _sha256(data)

    @property
    def batch_per_process(self) -> int:
        """Images per iteration on each process (the spec checks it divides evenly)."""
        return self.schedule.batch_size // self.processes

    def baseline_spec(self) -> RunSpec | None:
        """The no-KD control of a distill run: the same student, data, schedule, seed
        and device, trained alone (``kind`` train). None for other kinds."""
        if self.kind != "distill":
            return None
        return self.model_copy(
            update={
                "kind": "train",
                "method": "none",
                "teacher": None,
                "teacher_ref": None,
                "distill": None,
            }
        )

    @property
    def uses_teacher(self) -> bool:
        """The run reads a teacher checkpoint (a KD loss, or ``inherit``'s weights)."""
        return self.kind == "distill" and self.method != "none"

    @property
    def resolved_distill(self) -> DistillSpec | None:
        """The distillation settings the run uses: ``inherit`` needs none but
        ``init_student``, so it gets the defaults."""
        if self.method == "inherit":
            return self.distill or DistillSpec()
        return self.distill


def _sha256(data: dict) -> str:
    text = json.dumps(data, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def _problems(spec: RunSpec) -> list[str]:
    """Impossible combinations, each message naming the field at fault."""
    problems: list[str] = []
    if spec.kind != "distill":
        if spec.method != "none":
            problems.append(f"method: '{spec.method}' needs kind 'distill', not '{spec.kind}'")
        if spec.teacher is not None or spec.teacher_ref is not None:
            problems.append(f"teacher: a '{spec.kind}' run has no teacher")
    if spec.kind != "evaluate" and spec.dataset.train_split == spec.dataset.val_split:
        problems.append(
            f"dataset.val_split: '{spec.dataset.val_split}' is also the training split; "
            "a model evaluated on its own training images scores what it memorised"
        )
    if spec.kind != "evaluate" and spec.schedule.batch_size % spec.processes:
        problems.append(
            f"schedule.batch_size: {spec.schedule.batch_size} images per iteration cannot be "
            f"split evenly over {spec.processes} processes; use a multiple of {spec.processes}"
        )
    if spec.kind == "evaluate" and spec.checkpoint_ref is None:
        problems.append("checkpoint_ref: an 'evaluate' run needs the checkpoint to evaluate")
    if spec.kind != "evaluate" and spec.checkpoint_ref is not None:
        problems.append(f"checkpoint_ref: only 'evaluate' runs take one, not '{spec.kind}'")
    if spec.uses_teacher:
        if spec.teacher is None:
            problems.append(f"teacher: method '{spec.method}' needs a teacher architecture")
        if spec.method in KD_METHODS and spec.distill is None:
            problems.append(f"distill: method '{spec.method}' needs distillation settings")
    if spec.method == "inherit" and spec.distill is not None and not spec.distill.init_student:
        problems.append(
            "distill.init_student: method 'inherit' is the teacher's initialisation "
            "without KD loss; it cannot be false"
        )
    distill = spec.resolved_distill
    if spec.uses_teacher and spec.teacher is not None and distill is not None:
        problems.extend(_pairing_problems(spec.detector, spec.student, spec.teacher, distill))
    return problems


def _pairing_problems(
    detector: str, student: ModelSpec, teacher: ModelSpec, distill: DistillSpec
) -> list[str]:
    problems = []
    if student.head_channels != teacher.head_channels and not distill.adapter:
        problems.append(
            f"student.head_channels: {student.head_channels} differs from teacher.head_channels "
            f"{teacher.head_channels}; set distill.adapter to true to distil through a 1x1 conv"
        )
    if (
        student.num_classes is not None
        and teacher.num_classes is not None
        and student.num_classes != teacher.num_classes
    ):
        problems.append(
            f"student.num_classes: {student.num_classes} differs from "
            f"teacher.num_classes {teacher.num_classes}"
        )
    layers = min(student.stacked_convs, teacher.stacked_convs)
    if distill.tower_layer >= layers:
        problems.append(
            f"distill.tower_layer: {distill.tower_layer} is outside the towers "
            f"(student {student.stacked_convs}, teacher {teacher.stacked_convs} convs)"
        )
    # A wider teacher backbone is fine: only the FPN's lateral convs read it, and
    # those keep the student's own initialisation (the reference code's non-strict
    # load does the same); everything else of the neck and the head is copied.
    if distill.init_student and (
        student.neck_channels != teacher.neck_channels
        or student.head_channels != teacher.head_channels
        or student.stacked_convs != teacher.stacked_convs
        or student.use_dcn != teacher.use_dcn
        and detector == "ddod"
    ):
        problems.append(
            "distill.init_student: the student's neck and head must have the "
            "teacher's shape to start from its weights (neck_channels "
            f"{student.neck_channels} vs {teacher.neck_channels}, head_channels "
            f"{student.head_channels} vs {teacher.head_channels}, stacked_convs "
            f"{student.stacked_convs} vs {teacher.stacked_convs}, use_dcn); "
            "set it to false"
        )
    return problems


def backbone_out_channels(model: ModelSpec) -> tuple[int, ...]:
    """Channels of ResNet stages C2..C5 (BasicBlock for 18/34, Bottleneck x4 for 50/101)."""
    expansion = 1 if model.depth in (18, 34) else 4
    return tuple(model.base_channels * expansion * 2**i for i in range(4))
