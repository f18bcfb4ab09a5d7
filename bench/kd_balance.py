"""How strong is the KD term against the detection loss at the start of training?

For a distill spec and a trained teacher checkpoint, builds the run exactly as a
job would (``pgd_core.runner.build_runner``, the student initialised from the
teacher when ``init_student`` is on), then on the first ``--batches`` training
batches compares the gradient of the detection loss with that of the KD loss
(``loss_pgd_*``) over every trainable parameter: their norms, the ratio, and
the cosine between the detection gradient and the total one for each alpha
(the KD loss is linear in alpha, beta and gamma, which all scale with alpha).

    .venv/bin/python bench/kd_balance.py --data-root var/study-fcos/data \\
        --dataset shapes --detector fcos --teacher path/to/iter_1500.pth \\
        --teacher-width 32 --alphas 0.4,0.04,0.004,0.0004

A ratio far above 1 means the update is mostly KD (grad clipping at 35 then
shrinks the detection part too); the studies in docs/study.md read it next to
the measured APs.
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import tempfile

import torch

from pgd_core.distill.balance import gradient_balance
from pgd_core.presets import get_preset
from pgd_core.runner import build_runner
from pgd_core.spec import KD_METHODS, RunSpec


def _spec(args: argparse.Namespace) -> RunSpec:
    spec = get_preset(f"tiny-{args.detector}-pgd")
    data = spec.model_dump(mode="json")
    data["dataset"]["name"] = args.dataset
    data["student"].update(depth=args.student_depth, base_channels=args.student_width)
    data["teacher"].update(depth=args.teacher_depth, base_channels=args.teacher_width)
    data["method"] = args.method
    data["schedule"]["num_workers"] = 0
    data["seed"] = args.seed
    return RunSpec.model_validate(data)


def measure(args: argparse.Namespace) -> dict:
    torch.manual_seed(args.seed)
    spec = _spec(args)
    if spec.method not in KD_METHODS:
        raise SystemExit(f"--method {spec.method} adds no KD loss: nothing to balance")
    with tempfile.TemporaryDirectory() as work:
        runner = build_runner(
            spec, work, data_root=args.data_root, teacher_checkpoint=args.teacher, resume=False
        )
        model = runner.model
        model.init_weights()
        model.train()
        batches = itertools.islice(runner.train_dataloader, args.batches)
        alpha = spec.distill.alpha if spec.distill else 0.0
        balance = gradient_balance(model, batches, alpha)
    return {
        "detector": spec.detector,
        "method": spec.method,
        "batches": args.batches,
        "spec_alpha": alpha,
        "kd_over_det_at_spec_alpha": balance.ratio,
        "alpha_for_ratio_1": balance.alpha_for(1.0),
        "rows": [
            {
                "alpha": a,
                "kd_over_det": balance.ratio_at(a),
                "cos_det_total": balance.cosine_at(a),
            }
            for a in args.alphas
        ],
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-root", required=True)
    p.add_argument("--dataset", default="shapes")
    p.add_argument("--detector", default="fcos")
    p.add_argument("--method", default="pgd")
    p.add_argument("--teacher", required=True, help="the teacher's checkpoint (.pth)")
    p.add_argument("--teacher-depth", type=int, default=34)
    p.add_argument("--teacher-width", type=int, default=16)
    p.add_argument("--student-depth", type=int, default=18)
    p.add_argument("--student-width", type=int, default=16)
    p.add_argument("--alphas", type=lambda t: [float(x) for x in t.split(",")], default=[0.04])
    p.add_argument("--batches", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    logging.getLogger("mmengine").setLevel(logging.WARNING)
    result = measure(args)
    print(json.dumps(result, indent=2))
    print(f"alpha for a ratio of 1: {result['alpha_for_ratio_1']:.4g}")
    for row in result["rows"]:
        print(
            f"alpha {row['alpha']:<8g} |g_kd| / |g_det| = {row['kd_over_det']:8.2f}   "
            f"cos(g_det, g_total) = {row['cos_det_total']:.3f}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
