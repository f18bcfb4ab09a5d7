"""The run entry point on a tiny synthetic COCO-format dataset written to a temp folder."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from mmdet.registry import MODELS

from pgd_core.configs.runner import model_cfg
from pgd_core.data.synthetic_shapes import make_coco_shapes
from pgd_core.presets import get_preset
from pgd_core.runner import RunCallbacks, TrainingDiverged, last_checkpoint, run_spec

ITERS = 6
COCO_KEYS = {"AP", "AP50", "AP75", "APs", "APm", "APl"}


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("data")
    make_coco_shapes(root, "shapes", num_train=8, num_val=4, seed=1)
    return root


def _tiny(name: str, **schedule):
    spec = get_preset(name)
    sch = spec.schedule.model_copy(
        update=dict(
            dict(
                max_iters=ITERS,
                milestones=(),
                warmup_iters=2,
                checkpoint_interval=ITERS,
                batch_size=2,
            ),
            **schedule,
        )
    )
    return spec.model_copy(update={"schedule": sch})


@pytest.fixture(scope="module")
def teacher_ckpt(data_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("teacher")
    result = run_spec(_tiny("tiny-fcos-teacher"), work, data_root=data_root)
    assert result.status == "completed" and result.checkpoint is not None
    return result.checkpoint


class Recorder(RunCallbacks):
    def __init__(self, stop_at: int | None = None) -> None:
        self.progress: list[tuple[int, int]] = []
        self.metrics: list[tuple[int, dict]] = []
        super().__init__(
            on_progress=lambda i, n: self.progress.append((i, n)),
            on_metrics=lambda i, m: self.metrics.append((i, m)),
            should_stop=(lambda: bool(self.progress) and self.progress[-1][0] >= stop_at)
            if stop_at
            else None,
        )


def test_distill_run_reports_and_evaluates(
    data_root: Path, teacher_ckpt: Path, tmp_path: Path
) -> None:
    rec = Recorder()
    result = run_spec(
        _tiny("tiny-fcos-pgd"),
        tmp_path,
        data_root=data_root,
        teacher_checkpoint=teacher_ckpt,
        callbacks=rec,
    )
    assert result.status == "completed" and result.iteration == ITERS
    assert rec.progress == [(i, ITERS) for i in range(1, ITERS + 1)]
    train_steps = [m for _, m in rec.metrics if "loss" in m]
    assert len(train_steps) == ITERS
    assert all("loss_pgd_cls" in m and "loss_pgd_reg" in m and "lr" in m for m in train_steps)
    assert COCO_KEYS <= set(result.metrics)
    assert all(0.0 <= result.metrics[k] <= 100.0 for k in ("AP", "AP50", "AP75"))
    assert any("val/AP" in m for _, m in rec.metrics)
    assert [p.name for p in result.plots] == ["pr_curves.png"]
    assert result.plots[0].stat().st_size > 10_000
    # The checkpoint holds the student only and loads strictly into a plain detector.
    state = torch.load(result.checkpoint, map_location="cpu", weights_only=False)["state_dict"]
    assert not any(k.startswith("teacher") for k in state)
    plain = MODELS.build(model_cfg(get_preset("tiny-fcos-student"), 3))
    plain.load_state_dict(state, strict=True)


def test_stop_saves_checkpoint_and_resume_continues(
    data_root: Path, teacher_ckpt: Path, tmp_path: Path
) -> None:
    spec = _tiny("tiny-fcos-pgd")
    rec = Recorder(stop_at=2)
    first = run_spec(
        spec, tmp_path, data_root=data_root, teacher_checkpoint=teacher_ckpt, callbacks=rec
    )
    assert first.status == "stopped" and first.iteration == 2
    assert last_checkpoint(tmp_path) == tmp_path / "iter_2.pth"
    assert first.metrics == {}
    rec2 = Recorder()
    second = run_spec(
        spec, tmp_path, data_root=data_root, teacher_checkpoint=teacher_ckpt, callbacks=rec2
    )
    assert second.status == "completed"
    # Resumed from iteration 2: the remaining steps only, no step reported twice.
    assert [i for i, _ in rec2.progress] == list(range(3, ITERS + 1))


def test_evaluate_kind_matches_final_validation(
    data_root: Path, teacher_ckpt: Path, tmp_path: Path
) -> None:
    spec = get_preset("tiny-fcos-teacher").model_copy(
        update={"kind": "evaluate", "checkpoint_ref": "teacher"}
    )
    result = run_spec(spec, tmp_path, data_root=data_root, checkpoint=teacher_ckpt)
    assert result.status == "completed"
    assert COCO_KEYS <= set(result.metrics)
    assert [p.name for p in result.plots] == ["pr_curves.png"]


def test_divergence_names_the_iteration(data_root: Path, tmp_path: Path) -> None:
    spec = _tiny("tiny-atss-student", lr=1e6, grad_clip=None, warmup_iters=0)
    with pytest.raises(TrainingDiverged, match="iteration") as info:
        run_spec(spec, tmp_path, data_root=data_root)
    assert 1 <= info.value.iteration <= ITERS


def test_missing_inputs_are_named(data_root: Path, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        run_spec(
            _tiny("tiny-fcos-pgd"),
            tmp_path,
            data_root=data_root,
            teacher_checkpoint=tmp_path / "nope.pth",
        )
    with pytest.raises(ValueError, match="teacher's checkpoint"):
        run_spec(_tiny("tiny-fcos-pgd"), tmp_path, data_root=data_root)
    spec = _tiny("tiny-fcos-student").model_copy(
        update={
            "dataset": get_preset("tiny-fcos-student").dataset.model_copy(
                update={"name": "missing"}
            )
        }
    )
    with pytest.raises(ValueError, match="missing"):
        run_spec(spec, tmp_path, data_root=data_root)


def test_crowdhuman_run_reports_mr_ap_ji(tmp_path: Path) -> None:
    from pgd_core.data.synthetic_crowd import make_crowdhuman_like

    make_crowdhuman_like(tmp_path / "data", "crowd", num_train=4, num_val=2, seed=3)
    spec = _tiny("tiny-atss-student", max_iters=2, checkpoint_interval=2)
    spec = spec.model_copy(update={"dataset": spec.dataset.model_copy(update={"name": "crowd"})})
    result = run_spec(spec, tmp_path / "work", data_root=tmp_path / "data")
    assert set(result.metrics) == {"MR", "AP", "JI"}
    assert all(0.0 <= v <= 100.0 for v in result.metrics.values())
    assert [p.name for p in result.plots] == ["mr_fppi.png"]
    assert len(result.data_reports) == 2 and "ignored" in result.data_reports[0]


def test_bad_annotation_is_refused_before_training(data_root: Path, tmp_path: Path) -> None:
    import json
    import shutil

    from pgd_core.data.manifest import DatasetError

    root = tmp_path / "data"
    shutil.copytree(data_root / "shapes", root / "shapes")
    ann = root / "shapes" / "annotations" / "train.json"
    data = json.loads(ann.read_text())
    data["annotations"][0]["bbox"][2] = -5.0
    ann.write_text(json.dumps(data))
    bad_id = data["annotations"][0]["id"]
    with pytest.raises(DatasetError, match=f"annotation id {bad_id}.*negative box size"):
        run_spec(_tiny("tiny-fcos-student"), tmp_path / "work", data_root=root)
    assert not (tmp_path / "work").exists()  # nothing half-written
