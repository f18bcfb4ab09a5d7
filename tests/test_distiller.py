"""The distiller on all five detector families, on the CPU, with synthetic batches."""

from __future__ import annotations

import copy

import pytest
import torch
from helpers import build_distiller, synthetic_batch, tiny_spec
from mmdet.registry import MODELS
from mmengine.config import ConfigDict
from mmengine.optim import OptimWrapper

from pgd_core.configs.runner import model_cfg
from pgd_core.distill.distiller import PairingError
from pgd_core.distill.losses import pgd_cls_loss, pgd_reg_loss
from pgd_core.spec import RunSpec

ITERATIONS = 3


def _train(model, iterations: int = ITERATIONS, seed: int = 0) -> list[dict]:
    model.train()
    optim = OptimWrapper(
        torch.optim.SGD(model.parameters(), lr=0.001, momentum=0.9), clip_grad=dict(max_norm=35)
    )
    logs = []
    for it in range(iterations):
        logs.append(model.train_step(synthetic_batch(seed=seed + it), optim))
    return logs


def _state(module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def test_distillation_trains_every_family(detector: str) -> None:
    model = build_distiller(detector)
    teacher_before = _state(model.teacher)
    logs = _train(model)
    for log in logs:
        for name, value in log.items():
            assert torch.isfinite(torch.as_tensor(value)), (name, value)
        assert "loss_pgd_cls" in log and "loss_pgd_reg" in log
        assert float(log["loss"]) > 0
    # The teacher is frozen: bit-identical weights and BN statistics, still in eval mode.
    teacher_after = model.teacher.state_dict()
    assert teacher_before.keys() == teacher_after.keys()
    for key, before in teacher_before.items():
        assert torch.equal(before, teacher_after[key]), key
    assert not model.teacher.training


def test_kd_terms_are_active(detector: str) -> None:
    # With a random teacher the KD terms must still be non-zero and give gradients.
    model = build_distiller(detector, init_student=False)
    model.train()
    batch = model.data_preprocessor(synthetic_batch(), True)
    losses = model.loss(batch["inputs"], batch["data_samples"])
    kd = sum(v for k, v in losses.items() if k.startswith("loss_pgd_"))
    assert float(kd) > 0
    kd.backward()
    grads = [p.grad for p in model.bbox_head.cls_convs[0].parameters()]
    assert any(g is not None and g.abs().sum() > 0 for g in grads)
    assert all(p.grad is None for p in model.teacher.parameters())


def test_teacher_is_outside_optimizer_and_checkpoint(detector: str) -> None:
    model = build_distiller(detector)
    teacher_params = {id(p) for p in model.teacher.parameters()}
    assert teacher_params
    assert not teacher_params & {id(p) for p in model.parameters()}
    keys = model.state_dict().keys()
    assert not any(k.startswith("teacher") for k in keys)
    # The checkpoint is a plain detector's: it loads strictly into one.
    spec = tiny_spec(detector)
    plain_cfg = model_cfg(
        spec.model_copy(
            update={"kind": "train", "method": "none", "teacher": None, "distill": None}
        ),
        3,
    )
    plain = MODELS.build(ConfigDict(plain_cfg))
    plain.load_state_dict(model.state_dict(), strict=True)


def test_init_student_copies_neck_and_head_only(detector: str) -> None:
    model = build_distiller(detector)
    for part in ("neck", "bbox_head"):
        student, teacher = (
            getattr(model, part).state_dict(),
            getattr(model.teacher, part).state_dict(),
        )
        for key in student:
            assert torch.equal(student[key], teacher[key]), f"{part}.{key}"
    # The backbones differ in depth (R18 student, R34 teacher): nothing to copy there.
    assert model.backbone.state_dict().keys() != model.teacher.backbone.state_dict().keys()


def test_init_student_from_a_wider_teacher_copies_all_but_the_lateral_convs() -> None:
    """A teacher backbone twice as wide (base 32 vs 16): the head and the FPN's output
    convs are copied, the lateral convs (which read the backbone) keep their own init."""
    spec = tiny_spec("fcos")
    wide = spec.teacher.model_copy(update={"base_channels": 32})
    spec = RunSpec.model_validate(spec.model_copy(update={"teacher": wide}).model_dump())
    model = MODELS.build(ConfigDict(model_cfg(spec, 3)))
    model.init_weights()
    student, teacher = model.neck.state_dict(), model.teacher.neck.state_dict()
    lateral = sorted(k for k in student if k.startswith("lateral_convs."))
    assert lateral and sorted(model.neck_kept) == lateral
    for key in student:
        if key in lateral:
            # Whole convs keep the student's init: the weight differs in shape, and
            # the bias (same shape) is not copied on its own.
            if key.endswith(".weight"):
                assert student[key].shape != teacher[key].shape, key
        else:
            assert torch.equal(student[key], teacher[key]), key
    for key, value in model.bbox_head.state_dict().items():
        assert torch.equal(value, model.teacher.bbox_head.state_dict()[key]), key


def test_init_student_off_keeps_own_initialisation() -> None:
    model = build_distiller("atss", init_student=False)
    s = model.bbox_head.cls_convs[0].conv.weight
    t = model.teacher.bbox_head.cls_convs[0].conv.weight
    assert not torch.equal(s, t)


def test_predict_runs_student_only(detector: str) -> None:
    model = build_distiller(detector)
    model.eval()
    calls = []
    handle = model.teacher.backbone.register_forward_hook(lambda *a: calls.append(1))
    with torch.no_grad():
        batch = model.data_preprocessor(synthetic_batch(num_images=1), False)
        results = model.predict(batch["inputs"], batch["data_samples"])
    handle.remove()
    assert calls == []
    assert len(results) == 1 and results[0].pred_instances.bboxes.shape[-1] == 4


@pytest.mark.parametrize("method", ["pgd_no_gaussian", "pgd_cls_only", "fgd_box"])
def test_other_methods(method: str) -> None:
    model = build_distiller("fcos", method)
    log = _train(model, iterations=1)[0]
    assert "loss_pgd_cls" in log
    assert ("loss_pgd_reg" in log) == (method != "pgd_cls_only")


def test_method_none_is_student_alone() -> None:
    spec = tiny_spec("gfl").model_copy(update={"method": "none", "teacher": None, "distill": None})
    model = MODELS.build(ConfigDict(model_cfg(spec, 3)))
    model.init_weights()
    assert model.teacher is None
    log = _train(model, iterations=1)[0]
    assert not any(k.startswith("loss_pgd_") for k in log)


def test_inherit_starts_from_the_teacher_and_adds_no_kd_loss() -> None:
    """The control of the study: the teacher's neck and head, the student's own losses."""
    model = build_distiller("fcos", "inherit")
    for part in ("neck", "bbox_head"):
        teacher = getattr(model.teacher, part).state_dict()
        for key, value in getattr(model, part).state_dict().items():
            assert torch.equal(value, teacher[key]), f"{part}.{key}"
    calls = []
    handle = model.teacher.backbone.register_forward_hook(lambda *a: calls.append(1))
    log = _train(model, iterations=2)
    handle.remove()
    assert calls == []  # no teacher forward: nothing to distil
    assert all(not any(k.startswith("loss_pgd_") for k in entry) for entry in log)
    assert set(log[0]) == {"loss", "loss_cls", "loss_bbox", "loss_centerness"}


def test_inherit_needs_no_distill_settings_and_refuses_init_student_off() -> None:
    spec = tiny_spec("fcos", "inherit").model_copy(update={"distill": None})
    spec = type(spec).model_validate(spec.model_dump())
    assert spec.resolved_distill is not None and spec.resolved_distill.init_student
    assert model_cfg(spec, 3)["distill"]["method"] == "inherit"
    data = tiny_spec("fcos", "inherit").model_dump()
    data["distill"]["init_student"] = False
    with pytest.raises(ValueError, match="distill.init_student: method 'inherit'"):
        type(spec).model_validate(data)


def test_fgd_box_maps_are_inside_boxes() -> None:
    model = build_distiller("fcos", "fgd_box")
    batch = model.data_preprocessor(synthetic_batch(num_images=1), True)
    with torch.no_grad():
        cls_scores, bbox_preds = model.teacher.bbox_head(
            model.teacher.extract_feat(batch["inputs"])
        )[:2]
    from pgd_core.distill.decode import decode_dense

    preds = decode_dense(model.teacher.bbox_head, cls_scores, bbox_preds, [(160, 160)])
    maps = model.region_maps(preds, batch["data_samples"])
    assert torch.equal(maps["cls"] + maps["bg"], torch.ones_like(maps["bg"]))
    assert torch.equal(maps["reg"], maps["cls"])


def _pairing_cfg(detector: str, **teacher_changes):
    cfg = model_cfg(tiny_spec(detector), 3)
    teacher = copy.deepcopy(cfg["teacher"])
    for path, value in teacher_changes.items():
        node = teacher
        keys = path.split(".")
        for key in keys[:-1]:
            node = node[key]
        node[keys[-1]] = value
    cfg["teacher"] = teacher
    return cfg


@pytest.mark.parametrize(
    "change, expected",
    [
        ({"bbox_head.num_classes": 5}, "student num_classes is 3, teacher num_classes is 5"),
        ({"bbox_head.feat_channels": 64}, "student head channels"),
        (
            {"bbox_head.strides": [8, 16, 32, 64, 256]},
            "strides is [8, 16, 32, 64, 128], teacher strides is [8, 16, 32, 64, 256]",
        ),
    ],
)
def test_unpairable_teacher_is_refused(change: dict, expected: str) -> None:
    with pytest.raises(PairingError, match=expected.replace("[", r"\[").replace("]", r"\]")):
        MODELS.build(ConfigDict(_pairing_cfg("fcos", **change)))


def test_different_family_is_refused() -> None:
    cfg = model_cfg(tiny_spec("fcos"), 3)
    cfg["teacher"] = model_cfg(tiny_spec("atss"), 3)["teacher"]
    with pytest.raises(PairingError, match="FCOSHead.*ATSSHead"):
        MODELS.build(ConfigDict(cfg))


def test_adapter_bridges_head_widths() -> None:
    cfg = _pairing_cfg("fcos", **{"bbox_head.feat_channels": 64})
    cfg["distill"] = dict(cfg["distill"], adapter=True, init_student=False)
    model = MODELS.build(ConfigDict(cfg))
    model.init_weights()
    assert model.adapters["cls"].out_channels == 64
    log = _train(model, iterations=1)[0]
    assert torch.isfinite(torch.as_tensor(log["loss_pgd_cls"]))


def test_kd_losses_are_the_per_level_formulas(detector: str) -> None:
    """The fused multi-level KD equals the sum of the per-level paper formulas."""
    torch.manual_seed(1)  # random teachers: one whose reg maps are non-empty for all five
    model = build_distiller(detector, init_student=False)
    model.train()
    batch = model.data_preprocessor(synthetic_batch(num_images=3), True)
    losses = model.loss(batch["inputs"], batch["data_samples"])
    s = model.settings
    with torch.no_grad():
        cls_scores, bbox_preds = model.teacher.bbox_head(
            model.teacher.extract_feat(batch["inputs"])
        )[:2]
        from pgd_core.distill.decode import decode_dense

        preds = decode_dense(model.teacher.bbox_head, cls_scores, bbox_preds, [(160, 160)] * 3)
        maps = model.region_maps(preds, batch["data_samples"])
    student, teacher = model._student_towers, model._teacher_towers
    cls_ref = sum(
        pgd_cls_loss(
            st,
            te,
            fg,
            bg,
            temp_s=s.temp,
            temp_c=s.temp,
            alpha=s.alpha,
            beta=s.beta,
            delta=s.delta,
            loss_weight=lw,
        )
        for st, te, fg, bg, lw in zip(
            student.cls,
            teacher.cls,
            preds.split_locations(maps["cls"]),
            preds.split_locations(maps["bg"]),
            s.level_weights,
        )
    )
    reg_ref = sum(
        pgd_reg_loss(st, te, r, temp=s.temp, gamma=s.gamma, delta=s.delta)
        for st, te, r in zip(student.reg, teacher.reg, preds.split_locations(maps["reg"]))
    )
    assert float(cls_ref) > 0 and float(reg_ref) > 0
    torch.testing.assert_close(losses["loss_pgd_cls"], cls_ref, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(losses["loss_pgd_reg"], reg_ref, rtol=1e-5, atol=1e-7)


def test_region_maps_match_single_image_functions() -> None:
    """Batched maps (GTs padded to the batch's largest count) equal the per-image API."""
    from pgd_core.distill.decode import decode_dense
    from pgd_core.distill.regions import background_mask, prediction_guided_weights

    model = build_distiller("atss")
    batch = model.data_preprocessor(synthetic_batch(num_images=3, gts_per_image=(0, 2, 7)), True)
    with torch.no_grad():
        outs = model.teacher.bbox_head(model.teacher.extract_feat(batch["inputs"]))
    preds = decode_dense(model.teacher.bbox_head, outs[0], outs[1], [(160, 160)] * 3)
    maps = model.region_maps(preds, batch["data_samples"])
    s = model.settings
    for i, sample in enumerate(batch["data_samples"]):
        gt = sample.gt_instances
        for branch, a in (("cls", s.cls_quality_alpha), ("reg", s.reg_quality_alpha)):
            ref = prediction_guided_weights(
                preds.centers,
                preds.cls_logits[i],
                preds.boxes[i],
                gt.bboxes,
                gt.labels,
                alpha=a,
                topk=s.topk,
            )
            got = maps[branch][i]
            torch.testing.assert_close(got, ref)
        got_bg = maps["bg"][i]
        assert torch.equal(got_bg, background_mask(preds.centers, gt.bboxes))
        if len(gt.bboxes) == 0:
            assert float(maps["cls"][i].sum()) == 0.0


def test_ddod_with_deformable_conv_distils_at_384px() -> None:
    """The paper's DDOD has a deformable first tower conv; its CPU kernel needs P7 >= 3x3."""
    from mmcv.ops import DeformConv2dPack

    spec = tiny_spec("ddod")
    spec = spec.model_copy(
        update={
            "student": spec.student.model_copy(update={"use_dcn": True}),
            "teacher": spec.teacher.model_copy(update={"use_dcn": True}),
        }
    )
    model = MODELS.build(ConfigDict(model_cfg(spec, 3)))
    model.init_weights()
    assert isinstance(model.bbox_head.cls_convs[0].conv, DeformConv2dPack)
    assert isinstance(model.teacher.bbox_head.reg_convs[0].conv, DeformConv2dPack)
    model.train()
    optim = OptimWrapper(torch.optim.SGD(model.parameters(), lr=0.001))
    log = model.train_step(synthetic_batch(num_images=1, size=384), optim)
    assert all(torch.isfinite(torch.as_tensor(v)) for v in log.values())
    assert float(log["loss_pgd_cls"]) > 0
