"""The typed run spec and the preset catalogue (no torch needed)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from pgd_core.presets import PAPER_HYPER, PRESETS, get_preset, list_presets
from pgd_core.spec import DETECTORS, DistillSpec, RunSpec


def _errors(data: dict) -> list[tuple[str, str]]:
    with pytest.raises(ValidationError) as info:
        RunSpec.model_validate(data)
    return [(".".join(map(str, e["loc"])), e["msg"]) for e in info.value.errors()]


def _distill_dict(**changes) -> dict:
    data = get_preset("coco-fcos-pgd").model_dump()
    data.update(changes)
    return data


def test_catalogue_has_paper_and_tiny_settings() -> None:
    names = set(list_presets())
    for det in DETECTORS:
        assert {
            f"coco-{det}-teacher",
            f"coco-{det}-student",
            f"coco-{det}-pgd",
            f"tiny-{det}-teacher",
            f"tiny-{det}-student",
            f"tiny-{det}-pgd",
        } <= names
    assert {"crowdhuman-ddod-teacher", "crowdhuman-ddod-student", "crowdhuman-ddod-pgd"} <= names


@pytest.mark.parametrize(
    "det, temp, alpha, topk",
    [
        ("atss", 0.8, 0.08, 9),
        ("ddod", 0.8, 0.08, 30),
        ("fcos", 0.8, 0.04, 30),
        ("gfl", 0.8, 0.04, 30),
        ("autoassign", 0.4, 0.08, 30),
    ],
)
def test_paper_hyper_parameters(det: str, temp: float, alpha: float, topk: int) -> None:
    spec = PRESETS[f"coco-{det}-pgd"]
    d = spec.distill
    assert (d.temp, d.alpha, d.topk) == (temp, alpha, topk)
    assert d.resolved_beta == pytest.approx(alpha / 2)
    assert d.resolved_gamma == pytest.approx(1.6 * alpha)
    assert d.delta == 8e-4
    assert d.level_weights == (1.0, 1.25, 1.5, 1.75, 2.0)
    assert (d.cls_quality_alpha, d.reg_quality_alpha) == (0.8, 0.6)
    assert spec.student.depth == 50 and spec.teacher.depth == 101
    sch = spec.schedule
    assert (
        sch.lr,
        sch.momentum,
        sch.weight_decay,
        sch.batch_size,
        sch.grad_clip,
        sch.warmup_iters,
    ) == (0.02, 0.9, 1e-4, 16, 35.0, 500)
    assert PRESETS[f"coco-{det}-teacher"].dataset.multiscale_short is not None
    assert set(PAPER_HYPER) == set(DETECTORS)


def test_crowdhuman_ddod_alpha() -> None:
    d = PRESETS["crowdhuman-ddod-pgd"].distill
    assert d.alpha == 0.001 and d.topk == 30


def test_every_preset_round_trips_and_hash_is_stable() -> None:
    for name, spec in PRESETS.items():
        again = RunSpec.model_validate(spec.model_dump(mode="json"))
        assert again == spec, name
        assert again.spec_hash() == spec.spec_hash()
    assert PRESETS["tiny-fcos-pgd"].spec_hash() != PRESETS["tiny-atss-pgd"].spec_hash()


def test_unknown_names_are_refused_naming_the_field() -> None:
    errs = _errors(_distill_dict(detector="yolo"))
    assert errs[0][0] == "detector"
    errs = _errors(_distill_dict(method="magic"))
    assert errs[0][0] == "method"
    errs = _errors(_distill_dict(extra_field=1))
    assert errs[0][0] == "extra_field"


@pytest.mark.parametrize(
    "path, value",
    [
        (("distill", "alpha"), 0.0),
        (("distill", "temp"), -1.0),
        (("schedule", "lr"), 0.0),
        (("distill", "topk"), 0),
        (("schedule", "batch_size"), -4),
    ],
)
def test_non_positive_hyper_parameters_are_refused(path: tuple[str, str], value: float) -> None:
    data = _distill_dict()
    data[path[0]] = dict(data[path[0]], **{path[1]: value})
    assert _errors(data)[0][0] == ".".join(path)


@pytest.mark.parametrize(
    "changes, message",
    [
        (dict(kind="train"), "method: 'pgd' needs kind 'distill'"),
        (dict(teacher=None), "teacher: method 'pgd' needs a teacher"),
        (dict(distill=None), "distill: method 'pgd' needs distillation settings"),
        (dict(kind="evaluate", method="none", teacher=None, distill=None), "checkpoint_ref"),
    ],
)
def test_impossible_combinations(changes: dict, message: str) -> None:
    errs = _errors(_distill_dict(**changes))
    assert message in errs[0][1]


def test_teacher_student_pairing_in_spec() -> None:
    data = _distill_dict()
    data["student"] = dict(data["student"], head_channels=128)
    msg = _errors(data)[0][1]
    assert "student.head_channels: 128 differs from teacher.head_channels 256" in msg
    data["distill"] = dict(data["distill"], adapter=True, init_student=False)
    RunSpec.model_validate(data)
    # A teacher backbone of other widths is fine (the FPN's lateral convs keep the
    # student's init); another neck width is not.
    data = _distill_dict()
    data["student"] = dict(data["student"], depth=18)
    RunSpec.model_validate(data)
    data["student"] = dict(data["student"], neck_channels=128)
    msg = _errors(data)[0][1]
    assert "distill.init_student" in msg and "neck_channels 128 vs 256" in msg


def test_level_weights_need_five_values() -> None:
    with pytest.raises(ValidationError, match="level_weights needs 5"):
        DistillSpec(level_weights=(1.0, 2.0))


def test_get_preset_overrides_and_unknown() -> None:
    assert get_preset("tiny-fcos-pgd", seed=7).seed == 7
    with pytest.raises(KeyError, match="unknown preset 'nope'"):
        get_preset("nope")
