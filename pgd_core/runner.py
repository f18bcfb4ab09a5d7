"""Run a spec in a work directory on mmengine's Runner, reporting through callbacks.

This is the entry point the worker plugs into; it is equally usable from a
script or a notebook::

    result = run_spec(get_preset("tiny-fcos-student"), "work/fcos", data_root="data")
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from mmengine.config import Config
from mmengine.hooks import Hook
from mmengine.runner import Runner

import pgd_core.compat  # noqa: F401  (checkpoint loading on torch >= 2.6)
import pgd_core.distill.distiller  # noqa: F401  (registers PGDDistiller)
import pgd_core.evaluation.evaluators  # noqa: F401  (registers the evaluators)
from pgd_core.configs.runner import PLOT_DIR, runner_cfg
from pgd_core.cost import ModelCost
from pgd_core.data.manifest import load_dataset_info
from pgd_core.data.validation import validate_split
from pgd_core.distributed import (
    any_rank,
    mean_across_ranks,
    rank,
    sync_buffers,
    under_torchrun,
    world_size,
)
from pgd_core.spec import RunSpec


class TrainingDiverged(RuntimeError):
    """A loss became NaN or infinite."""

    def __init__(self, iteration: int, name: str, value: float) -> None:
        super().__init__(f"training diverged at iteration {iteration}: {name} = {value}")
        self.iteration, self.name, self.value = iteration, name, value


@dataclass
class RunCallbacks:
    """Hooks for whoever drives a run (all optional, called in the training process).

    Attributes:
        on_progress: ``(iteration, max_iters)`` after each training iteration.
        on_metrics: ``(iteration, {name: value})`` training losses and lr every
            ``metrics_interval`` iterations, and ``val/...`` metrics after each evaluation.
        should_stop: polled after each iteration; True saves a checkpoint and stops.
        metrics_interval: iterations between two training-metric reports.
    """

    on_progress: Callable[[int, int], None] | None = None
    on_metrics: Callable[[int, dict[str, float]], None] | None = None
    should_stop: Callable[[], bool] | None = None
    metrics_interval: int = 1


@dataclass
class RunResult:
    status: Literal["completed", "stopped"]
    iteration: int
    metrics: dict[str, float] = field(default_factory=dict)
    checkpoint: Path | None = None
    work_dir: Path | None = None
    plots: list[Path] = field(default_factory=list)
    data_reports: list[str] = field(default_factory=list)


class CallbackHook(Hook):
    """Bridges mmengine's hook points to :class:`RunCallbacks`.

    Runs before the checkpoint hook (NORMAL < VERY_LOW) so a diverged iteration
    raises before its weights can be saved.
    """

    priority = "NORMAL"

    def __init__(self, callbacks: RunCallbacks) -> None:
        self.callbacks = callbacks
        self.stopped = False
        self.val_metrics: dict[str, float] = {}

    def after_train_iter(
        self, runner: Runner, batch_idx: int, data_batch: Any = None, outputs: dict | None = None
    ) -> None:
        it = runner.iter + 1
        # .item() reads the value without the autograd warning of float() on a
        # tensor that requires grad.
        values = {
            k: float(v.item()) if hasattr(v, "item") else float(v)
            for k, v in (outputs or {}).items()
        }
        for name, value in values.items():
            if not math.isfinite(value):
                raise TrainingDiverged(it, name, value)
        cb = self.callbacks
        ranks = world_size()
        # Under DDP every rank reaches the same iterations: the collectives below
        # are called by all of them, whatever each one's callbacks are.
        if (cb.on_metrics or ranks > 1) and (
            it % cb.metrics_interval == 0 or it == runner.max_iters
        ):
            # A rank's losses cover its share of the batch; the reported value is
            # the mean over the ranks, i.e. over the global batch.
            values = mean_across_ranks(values)
            if cb.on_metrics:
                values["lr"] = float(runner.optim_wrapper.get_lr()["lr"][0])
                cb.on_metrics(it, values)
        if cb.on_progress:
            cb.on_progress(it, runner.max_iters)
        if it >= runner.max_iters:
            return
        stop = bool(cb.should_stop and cb.should_stop())
        if ranks > 1:
            stop = any_rank(stop)  # every rank stops at the same iteration
        if stop:
            save_and_mark_last(runner)
            runner.train_loop.stop_training = True
            self.stopped = True

    def before_val_epoch(self, runner: Runner) -> None:
        sync_buffers(runner.model)

    def before_test_epoch(self, runner: Runner) -> None:
        sync_buffers(runner.model)

    def after_val_epoch(self, runner: Runner, metrics: dict[str, float] | None = None) -> None:
        self.val_metrics = normalise_metrics(metrics or {})
        if self.callbacks.on_metrics and self.val_metrics:
            self.callbacks.on_metrics(
                runner.iter, {f"val/{k}": v for k, v in self.val_metrics.items()}
            )


def save_and_mark_last(runner: Runner) -> Path:
    """Save the current iteration's checkpoint and point ``last_checkpoint`` at it."""
    name = f"iter_{runner.iter + 1}.pth"
    runner.save_checkpoint(
        runner.work_dir, name, save_optimizer=True, save_param_scheduler=True, by_epoch=False
    )
    path = Path(runner.work_dir) / name
    if rank() == 0:  # save_checkpoint itself writes on rank 0 only
        (Path(runner.work_dir) / "last_checkpoint").write_text(str(path))
    return path


def normalise_metrics(metrics: dict[str, float]) -> dict[str, float]:
    """``{'pgd/AP': 41.2, ...}`` from the evaluator to ``{'AP': 41.2, ...}`` (percent)."""
    return {key.split("/", 1)[-1]: float(value) for key, value in metrics.items()}


def plots(work_dir: Path) -> list[Path]:
    """The PNG curves written by the last evaluation in ``work_dir``."""
    return sorted((Path(work_dir) / PLOT_DIR).glob("*.png"))


def last_checkpoint(work_dir: Path) -> Path | None:
    marker = Path(work_dir) / "last_checkpoint"
    if not marker.is_file():
        return None
    path = Path(marker.read_text().strip())
    return path if path.is_file() else None


def _resolve_weights(weights_root: str | os.PathLike | None, name: str | None) -> str | None:
    if name is None:
        return None
    if weights_root is None:
        raise FileNotFoundError(
            f"backbone weights '{name}' were asked for but no weights root is configured"
        )
    path = Path(weights_root) / f"{name}.pth"
    if not path.is_file():
        raise FileNotFoundError(f"backbone weights '{name}' not found: {path} does not exist")
    return str(path)


def check_data(spec: RunSpec, data_root: str | os.PathLike) -> list[str]:
    """Validate the splits ``spec`` reads (strictly, before any training) and report them.

    Raises:
        DatasetError: naming the file, line or annotation at fault.
    """
    info = load_dataset_info(data_root, spec.dataset.name)
    splits = [spec.dataset.val_split]
    if spec.kind != "evaluate":
        splits.insert(0, spec.dataset.train_split)
    return [validate_split(info, split) for split in splits]


def build_runner(
    spec: RunSpec,
    work_dir: str | os.PathLike,
    *,
    data_root: str | os.PathLike,
    weights_root: str | os.PathLike | None = None,
    teacher_checkpoint: str | os.PathLike | None = None,
    checkpoint: str | os.PathLike | None = None,
    resume: bool = True,
) -> Runner:
    """An mmengine Runner for ``spec`` (files are checked before anything is built)."""
    info = load_dataset_info(data_root, spec.dataset.name)
    for what, path in (("teacher checkpoint", teacher_checkpoint), ("checkpoint", checkpoint)):
        if path is not None and not Path(path).is_file():
            raise FileNotFoundError(f"{what} not found: {path}")
    if spec.uses_teacher and teacher_checkpoint is None:
        raise ValueError("a distill run needs the teacher's checkpoint")
    if spec.kind == "evaluate" and checkpoint is None:
        raise ValueError("an evaluate run needs the checkpoint to evaluate")
    work = Path(work_dir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    cfg = runner_cfg(
        spec,
        info,
        work,
        pretrained=_resolve_weights(weights_root, spec.student.pretrained),
        teacher_checkpoint=str(teacher_checkpoint) if teacher_checkpoint else None,
        checkpoint=str(checkpoint) if checkpoint else None,
        resume=resume and last_checkpoint(work) is not None,
    )
    # A unique name: mmengine keys its logger and visualizer singletons by it.
    cfg["experiment_name"] = f"{spec.kind}-{spec.detector}-{time.time_ns()}"
    return Runner.from_cfg(Config(cfg))


def run_spec(
    spec: RunSpec,
    work_dir: str | os.PathLike,
    *,
    data_root: str | os.PathLike,
    weights_root: str | os.PathLike | None = None,
    teacher_checkpoint: str | os.PathLike | None = None,
    checkpoint: str | os.PathLike | None = None,
    resume: bool = True,
    callbacks: RunCallbacks | None = None,
    dist_timeout_s: float = 1800.0,
) -> RunResult:
    """Train, distil or evaluate ``spec`` in ``work_dir``; evaluation closes every training.

    A spec of ``processes`` > 1 runs as that many ranks under ``torchrun``
    (:mod:`pgd_core.launch`); the callbacks are then called in this process,
    with rank 0's progress and the metrics averaged over the ranks.

    Args:
        spec: the run.
        work_dir: its own directory; a second call resumes from its last checkpoint.
        data_root: folder of the named datasets.
        weights_root: folder of named backbone checkpoints (``<name>.pth``).
        teacher_checkpoint: the teacher's weights (distill runs).
        checkpoint: the weights to evaluate (evaluate runs).
        resume: continue from ``work_dir``'s last checkpoint when there is one.
        callbacks: progress, metrics and stop hooks.
        dist_timeout_s: a multi-process run whose ranks wait longer than this for
            each other (one hung or gone) is stopped.

    Raises:
        TrainingDiverged: a loss became NaN or infinite.
        FileNotFoundError, DatasetError, ValueError: missing or bad inputs.
        pgd_core.errors.RankFailed, RankLost: a rank of a multi-process run raised
            (the rank's own exception is named) or died.
    """
    callbacks = callbacks or RunCallbacks()
    reports = check_data(spec, data_root)
    if spec.processes > 1:
        from pgd_core.launch import launch

        return launch(
            spec,
            work_dir,
            reports=reports,
            data_root=data_root,
            weights_root=weights_root,
            teacher_checkpoint=teacher_checkpoint,
            checkpoint=checkpoint,
            resume=resume,
            callbacks=callbacks,
            timeout_s=dist_timeout_s,
        )
    return run_checked(
        spec,
        work_dir,
        reports=reports,
        data_root=data_root,
        weights_root=weights_root,
        teacher_checkpoint=teacher_checkpoint,
        checkpoint=checkpoint,
        resume=resume,
        callbacks=callbacks,
    )


def run_checked(
    spec: RunSpec,
    work_dir: str | os.PathLike,
    *,
    reports: list[str],
    data_root: str | os.PathLike,
    weights_root: str | os.PathLike | None = None,
    teacher_checkpoint: str | os.PathLike | None = None,
    checkpoint: str | os.PathLike | None = None,
    resume: bool = True,
    callbacks: RunCallbacks | None = None,
) -> RunResult:
    """:func:`run_spec` in this process once its data passed :func:`check_data`
    (``reports``): the whole run, or one rank of a multi-process one."""
    callbacks = callbacks or RunCallbacks()
    if spec.processes > 1 and (not under_torchrun() or world_size() != spec.processes):
        raise ValueError(
            f"processes: the spec asks for {spec.processes} processes but this process is "
            f"not one of {spec.processes} ranks; run_spec launches them with torchrun"
        )
    runner = build_runner(
        spec,
        work_dir,
        data_root=data_root,
        weights_root=weights_root,
        teacher_checkpoint=teacher_checkpoint,
        checkpoint=checkpoint,
        resume=resume,
    )
    for line in reports:
        runner.logger.info(f"dataset {line}")
    hook = CallbackHook(callbacks)
    runner.register_hook(hook)
    if spec.kind == "evaluate":
        metrics = normalise_metrics(runner.test())
        if callbacks.on_metrics and metrics:
            callbacks.on_metrics(0, {f"val/{k}": v for k, v in metrics.items()})
        return RunResult(
            "completed",
            0,
            metrics,
            Path(checkpoint) if checkpoint else None,
            Path(work_dir),
            plots(Path(work_dir)),
            reports,
        )
    runner.train()
    status: Literal["completed", "stopped"] = "stopped" if hook.stopped else "completed"
    return RunResult(
        status,
        runner.iter,
        hook.val_metrics,
        last_checkpoint(Path(work_dir)),
        Path(work_dir),
        plots(Path(work_dir)) if hook.val_metrics else [],
        reports,
    )


def measure_cost(
    spec: RunSpec,
    checkpoint: str | os.PathLike,
    *,
    data_root: str | os.PathLike,
    onnx_path: str | os.PathLike | None = None,
    runs: int = 30,
    budget_s: float = 20.0,
) -> ModelCost:
    """What the run's student costs to run, as deployed (:mod:`pgd_core.cost`): the
    plain detector of ``spec.student`` loaded from ``checkpoint``, on the dataset's
    test size, on the device the run used (the GPU when ``spec.device`` is ``cuda``
    and one is visible).

    Raises:
        CostError: the checkpoint does not hold that detector.
    """
    import torch

    from pgd_core.configs.model import detector_cfg
    from pgd_core.cost import load_detector, measure, network_input_shape

    info = load_dataset_info(data_root, spec.dataset.name)
    model = load_detector(detector_cfg(spec.detector, spec.student, info.num_classes), checkpoint)
    device = "cuda" if spec.device == "cuda" and torch.cuda.is_available() else "cpu"
    return measure(
        model,
        network_input_shape(spec.dataset.img_scale),
        device=device,
        onnx_path=Path(onnx_path) if onnx_path is not None else None,
        runs=runs,
        budget_s=budget_s,
        seed=spec.seed,
    )
