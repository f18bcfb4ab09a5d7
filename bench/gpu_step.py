"""Paper-sized training steps on one device: FCOS R-50 trained alone and distilled
with PGD from an FCOS R-101 teacher, at the COCO training size, timed by mmengine.

Synthetic shapes images of --size (1333 x 800 by default, the paper's scale),
random weights (time does not depend on them), --batch images per iteration,
--iters iterations, no evaluation (it needs mmcv's compiled NMS on the device).
Prints mmengine's time per iteration (median of its log windows after the
first), the PGD / student-alone ratio, and the latency of the deployed student
(pgd_core.cost, batch 1, tensor mode) on the same device.

    python bench/gpu_step.py [--device cuda] [--iters 30] [--batch 2] [--size 1333 800]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch


def _spec(preset: str, args: argparse.Namespace):
    from pgd_core.presets import get_preset
    from pgd_core.spec import RunSpec

    data = get_preset(preset).model_dump(mode="json")
    data["dataset"].update(name="shapes", img_scale=list(args.size), multiscale_short=None)
    # COCO's 80 classes in the heads (the synthetic set draws labels from 8 of them).
    data["student"].update(pretrained=None, num_classes=80)
    if data.get("teacher"):
        data["teacher"].update(pretrained=None, num_classes=80)
    data["schedule"].update(
        max_iters=args.iters,
        batch_size=args.batch,
        milestones=[],
        warmup_iters=0,
        checkpoint_interval=10**6,
        log_interval=5,
        num_workers=2,
    )
    data["device"] = args.device
    return RunSpec.model_validate(data)


def _train(spec, root: Path, teacher_checkpoint: str | None) -> float:  # noqa: ANN001
    from mmengine.config import Config
    from mmengine.runner import Runner

    import pgd_core.runner  # noqa: F401  (registers the distiller and the metrics)
    from pgd_core.configs.runner import runner_cfg
    from pgd_core.data.manifest import load_dataset_info

    work = root / f"{spec.kind}-{time.time_ns()}"
    cfg = runner_cfg(
        spec,
        load_dataset_info(root / "data", "shapes"),
        work,
        teacher_checkpoint=teacher_checkpoint,
    )
    cfg["train_cfg"]["val_interval"] = 10**9  # no evaluation
    for key in (
        "val_dataloader",
        "val_evaluator",
        "val_cfg",
        "test_dataloader",
        "test_evaluator",
        "test_cfg",
    ):
        cfg.pop(key, None)
    cfg["default_hooks"].pop("checkpoint")
    cfg["experiment_name"] = work.name
    runner = Runner.from_cfg(Config(cfg))
    runner.train()
    [scalars] = sorted(work.glob("*/vis_data/scalars.json"))[-1:]
    times = [
        json.loads(line)["time"] for line in scalars.read_text().splitlines() if '"time"' in line
    ]
    return statistics.median(times[1:] or times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--iters", type=int, default=30)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--size", type=int, nargs=2, default=(1333, 800))
    args = parser.parse_args()
    from mmdet.registry import MODELS
    from mmengine.config import ConfigDict

    import pgd_core.distill.distiller  # noqa: F401
    from pgd_core.configs.model import detector_cfg
    from pgd_core.cost import measure, network_input_shape
    from pgd_core.data.synthetic_shapes import make_coco_shapes

    device_name = torch.cuda.get_device_name() if args.device == "cuda" else "cpu"
    print(f"torch {torch.__version__}, {device_name}, batch {args.batch}, {tuple(args.size)}")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        make_coco_shapes(
            root / "data",
            "shapes",
            num_train=4 * args.batch,
            num_val=2,
            image_size=tuple(args.size),
            num_classes=8,
            max_objects=12,
            min_size=24,
        )
        student = _spec("coco-fcos-student", args)
        pgd = _spec("coco-fcos-pgd", args)
        teacher = MODELS.build(ConfigDict(detector_cfg("fcos", pgd.teacher, 80)))
        teacher.init_weights()
        torch.save({"state_dict": teacher.state_dict()}, root / "teacher.pth")
        alone = _train(student, root, None)
        distilled = _train(pgd, root, str(root / "teacher.pth"))
        for name, seconds in (("FCOS R-50 alone", alone), ("FCOS R-50 + PGD (R-101)", distilled)):
            print(f"{name}: {seconds:.4f} s / iteration ({args.batch / seconds:.1f} images/s)")
        print(f"PGD / alone: {distilled / alone:.2f}x")
        model = MODELS.build(ConfigDict(detector_cfg("fcos", student.student, 80)))
        model.init_weights()
        cost = measure(
            model,
            network_input_shape(student.dataset.img_scale),
            device=args.device,
            runs=30,
            budget_s=20,
        )
        shape = network_input_shape(student.dataset.img_scale)
        print(
            f"deployed FCOS R-50 latency (batch 1, {shape}): "
            f"median {cost.latency.median_ms:.2f} ms, p90 {cost.latency.p90_ms:.2f} ms, "
            f"{cost.flops / 1e9:.1f} GFLOPs, {cost.params / 1e6:.2f} M params"
        )


if __name__ == "__main__":
    main()
