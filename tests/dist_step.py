"""One training step of a distill run, as one process or as a rank under torchrun.

tests/test_distributed.py runs it in-process (``step`` with the whole batch) and
as ``torchrun --nproc-per-node 2 tests/dist_step.py <inputs.json> <out.json>``:
each rank takes its half of the same fixed batch through mmengine's real DDP
wrapper (built by the Runner from the spec, as a job builds it). Rank 0 writes
the losses (averaged over the ranks, as a job reports them), the parameters
after the optimiser step, and what it saw of the teacher.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

BATCH = 4


def step(inputs: dict[str, Any], images: slice | None = None) -> dict[str, Any]:
    """Build the runner of ``inputs['spec']`` and take one step on ``images`` of the
    fixed batch (the whole batch by default)."""
    from helpers import synthetic_batch
    from mmengine.model import is_model_wrapper

    from pgd_core.distributed import mean_across_ranks, world_size
    from pgd_core.runner import build_runner
    from pgd_core.spec import RunSpec

    spec = RunSpec.model_validate(inputs["spec"])
    runner = build_runner(
        spec,
        inputs["work_dir"],
        data_root=inputs["data_root"],
        weights_root=inputs["weights_root"],
        teacher_checkpoint=inputs["teacher_checkpoint"],
        resume=False,
    )
    runner._init_model_weights()  # what runner.train() does first (and broadcasts)
    model = runner.model
    distiller = model.module if is_model_wrapper(model) else model
    teacher = distiller.teacher
    teacher_before = [p.detach().clone() for p in teacher.parameters()]
    optim = runner.build_optim_wrapper(runner.cfg.optim_wrapper)
    model.train()

    batch = synthetic_batch(num_images=BATCH, seed=11, gts_per_image=(3, 1, 5, 2))
    if images is not None:
        batch = {k: v[images] for k, v in batch.items()}
    log_vars = model.train_step(batch, optim)
    losses = mean_across_ranks({k: float(v) for k, v in log_vars.items()})

    student_names = [n for n, p in distiller.named_parameters() if p.requires_grad]
    synced = []
    if is_model_wrapper(model):
        synced = [n.removeprefix("module.") for n, p in model.named_parameters() if p.requires_grad]
    return {
        "world_size": world_size(),
        "wrapper": type(model).__name__,
        "losses": losses,
        "params": {n: p.detach().flatten().tolist() for n, p in distiller.named_parameters()},
        "student_trainable": sorted(student_names),
        "ddp_synced": sorted(synced),
        "teacher_in_module_tree": any(
            p is q for p in teacher.parameters() for q in model.parameters()
        ),
        "teacher_trainable": any(p.requires_grad for p in teacher.parameters()),
        "teacher_training": teacher.training,
        "teacher_unchanged": all(
            torch.equal(a, b) for a, b in zip(teacher_before, teacher.parameters(), strict=True)
        ),
    }


def main() -> int:
    inputs_path, out_path = sys.argv[1], sys.argv[2]
    inputs = json.loads(Path(inputs_path).read_text())
    from pgd_core.distributed import init_process_group, rank, world_size

    init_process_group("cpu", timeout_s=120)
    share = BATCH // world_size()
    result = step(inputs, slice(rank() * share, (rank() + 1) * share))
    if rank() == 0:
        Path(out_path).write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
