"""Turn a RunSpec into an mmengine Runner config, in code (never from user Python).

Plain dicts only; no torch import. Paths come from the caller (resolved under
the configured roots), never from the spec.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pgd_core.configs.model import detector_cfg
from pgd_core.data.manifest import DatasetInfo
from pgd_core.spec import DistillSettings, RunSpec

_DATASET_TYPES = {"coco": "CocoDataset", "crowdhuman": "CrowdHumanDataset"}
PLOT_DIR = "plots"
_META_KEYS = ("img_id", "img_path", "ori_shape", "img_shape", "scale_factor")


def model_cfg(
    spec: RunSpec,
    num_classes: int,
    *,
    pretrained: str | None = None,
    teacher_checkpoint: str | None = None,
) -> dict[str, Any]:
    """The model to build: a plain detector, or the PGD distiller for distill runs."""
    student = detector_cfg(spec.detector, spec.student, num_classes, pretrained)
    if spec.kind != "distill":
        return student
    cfg = dict(student, type="PGDDistiller")
    if spec.uses_teacher:
        d = spec.resolved_distill
        assert spec.teacher is not None and d is not None  # the spec validates it
        cfg["teacher"] = detector_cfg(spec.detector, spec.teacher, num_classes)
        cfg["teacher"].pop("data_preprocessor")
        cfg["teacher_checkpoint"] = teacher_checkpoint
        # Plain values: the distiller reads them back into DistillSettings.
        cfg["distill"] = DistillSettings.for_run(spec.method, d).model_dump()
    return cfg


def _resize(spec: RunSpec, train: bool) -> dict[str, Any]:
    long_side, short_side = spec.dataset.img_scale
    shorts = spec.dataset.multiscale_short
    if train and shorts:
        return dict(
            type="RandomChoiceResize", scales=[(long_side, s) for s in shorts], keep_ratio=True
        )
    return dict(type="Resize", scale=(long_side, short_side), keep_ratio=True)


def _dataset(info: DatasetInfo, split: str, spec: RunSpec, train: bool) -> dict[str, Any]:
    s = info.split(split)
    pipeline: list[dict[str, Any]] = [dict(type="LoadImageFromFile", backend_args=None)]
    if train:
        pipeline += [
            dict(type="LoadAnnotations", with_bbox=True),
            _resize(spec, True),
            dict(type="RandomFlip", prob=0.5),
            dict(type="PackDetInputs"),
        ]
    else:
        pipeline += [
            _resize(spec, False),
            dict(type="LoadAnnotations", with_bbox=True),
            dict(type="PackDetInputs", meta_keys=_META_KEYS),
        ]
    ds: dict[str, Any] = dict(
        type=_DATASET_TYPES[info.format],
        # Absolute paths below; the root matters for CrowdHumanDataset's image-size cache.
        data_root=str(info.root),
        ann_file=str(s.ann_file),
        data_prefix=dict(img=f"{s.img_dir}/"),
        metainfo=dict(classes=tuple(info.classes)),
        pipeline=pipeline,
        test_mode=not train,
        backend_args=None,
    )
    if train:
        ds["filter_cfg"] = dict(filter_empty_gt=True, min_size=1)
    return ds


def _evaluator(info: DatasetInfo, split: str, work_dir: Path) -> dict[str, Any]:
    """pgd_core's evaluators (pgd_core.evaluation.evaluators); curves go to ``<work_dir>/plots``."""
    kind = "PGDCrowdHumanMetric" if info.format == "crowdhuman" else "PGDCocoMetric"
    return dict(
        type=kind, ann_file=str(info.split(split).ann_file), plot_dir=str(Path(work_dir) / PLOT_DIR)
    )


def _schedule(spec: RunSpec) -> dict[str, Any]:
    sch = spec.schedule
    schedulers: list[dict[str, Any]] = []
    if sch.warmup_iters:
        schedulers.append(
            dict(
                type="LinearLR",
                start_factor=0.001,
                by_epoch=False,
                begin=0,
                end=min(sch.warmup_iters, sch.max_iters),
            )
        )
    if sch.milestones:
        schedulers.append(
            dict(
                type="MultiStepLR",
                by_epoch=False,
                begin=0,
                end=sch.max_iters,
                milestones=list(sch.milestones),
                gamma=0.1,
            )
        )
    optim = dict(
        type="OptimWrapper",
        optimizer=dict(type="SGD", lr=sch.lr, momentum=sch.momentum, weight_decay=sch.weight_decay),
    )
    if sch.grad_clip:
        optim["clip_grad"] = dict(max_norm=sch.grad_clip, norm_type=2)
    return dict(
        optim_wrapper=optim,
        param_scheduler=schedulers,
        train_cfg=dict(
            type="IterBasedTrainLoop",
            max_iters=sch.max_iters,
            val_interval=sch.val_interval or sch.max_iters,
        ),
        val_cfg=dict(type="ValLoop"),
        test_cfg=dict(type="TestLoop"),
        default_hooks=dict(
            timer=dict(type="IterTimerHook"),
            logger=dict(type="LoggerHook", interval=sch.log_interval),
            param_scheduler=dict(type="ParamSchedulerHook"),
            checkpoint=dict(
                type="CheckpointHook",
                by_epoch=False,
                interval=sch.checkpoint_interval,
                max_keep_ckpts=2,
                save_last=True,
            ),
            sampler_seed=dict(type="DistSamplerSeedHook"),
        ),
        log_processor=dict(type="LogProcessor", window_size=sch.log_interval, by_epoch=False),
    )


def _loader(dataset: dict[str, Any], *, batch_size: int, workers: int, train: bool) -> dict:
    sampler = dict(type="InfiniteSampler" if train else "DefaultSampler", shuffle=train)
    loader: dict[str, Any] = dict(
        batch_size=batch_size,
        num_workers=workers,
        persistent_workers=workers > 0,
        sampler=sampler,
        dataset=dataset,
    )
    if train:
        loader["batch_sampler"] = dict(type="AspectRatioBatchSampler")
    else:
        loader["drop_last"] = False
    return loader


def _has_unused_parameters(spec: RunSpec) -> bool:
    """Whether some trainable parameter of the model gets no gradient in an iteration
    (DDP must then look for them): the regression adapter of a classification-only
    distillation (tests/test_distributed.py checks every detector and method)."""
    distill = spec.resolved_distill
    return bool(
        spec.uses_teacher
        and distill is not None
        and distill.adapter
        and spec.method == "pgd_cls_only"
    )


def runner_cfg(
    spec: RunSpec,
    info: DatasetInfo,
    work_dir: Path,
    *,
    pretrained: str | None = None,
    teacher_checkpoint: str | None = None,
    checkpoint: str | None = None,
    resume: bool = False,
) -> dict[str, Any]:
    """A complete mmengine Runner config for ``spec``.

    Args:
        spec: the run.
        info: the resolved dataset.
        work_dir: where checkpoints and logs go.
        pretrained: resolved backbone checkpoint (train / distill).
        teacher_checkpoint: resolved teacher checkpoint (distill).
        checkpoint: resolved checkpoint to evaluate (evaluate).
        resume: continue from the work directory's last checkpoint, if any.
    """
    workers = spec.schedule.num_workers
    cfg: dict[str, Any] = dict(
        default_scope="mmdet",
        work_dir=str(work_dir),
        model=model_cfg(
            spec, info.num_classes, pretrained=pretrained, teacher_checkpoint=teacher_checkpoint
        ),
        env_cfg=dict(
            cudnn_benchmark=False,
            dist_cfg=dict(backend="nccl" if spec.device == "cuda" else "gloo"),
            mp_cfg=dict(mp_start_method="fork", opencv_num_threads=0),
        ),
        randomness=dict(seed=spec.seed, deterministic=False),
        log_level="INFO",
        load_from=checkpoint,
        resume=resume and spec.kind != "evaluate",
    )
    if spec.processes > 1:
        # Each rank is a torchrun process; pgd_core.distributed initialises the group.
        cfg["launcher"] = "pytorch"
        cfg["model_wrapper_cfg"] = dict(
            type="PGDDistributedDataParallel",
            broadcast_buffers=False,
            find_unused_parameters=_has_unused_parameters(spec),
        )
    val_ds = _dataset(info, spec.dataset.val_split, spec, train=False)
    val_loader = _loader(val_ds, batch_size=1, workers=workers, train=False)
    if spec.kind == "evaluate":
        cfg.update(
            test_dataloader=val_loader,
            test_evaluator=_evaluator(info, spec.dataset.val_split, work_dir),
            test_cfg=dict(type="TestLoop"),
            default_hooks=dict(
                timer=dict(type="IterTimerHook"), logger=dict(type="LoggerHook", interval=50)
            ),
        )
        cfg["model"] = detector_cfg(spec.detector, spec.student, info.num_classes)
        return cfg
    cfg.update(_schedule(spec))
    cfg.update(
        train_dataloader=_loader(
            _dataset(info, spec.dataset.train_split, spec, train=True),
            # The spec's batch is the global one: each rank loads its share.
            batch_size=spec.batch_per_process,
            workers=workers,
            train=True,
        ),
        val_dataloader=val_loader,
        val_evaluator=_evaluator(info, spec.dataset.val_split, work_dir),
        test_dataloader=val_loader,
        test_evaluator=_evaluator(info, spec.dataset.val_split, work_dir),
    )
    return cfg


__all__ = ["PLOT_DIR", "model_cfg", "runner_cfg"]
