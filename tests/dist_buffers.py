"""Under torchrun: each rank's BatchNorm learns other statistics, then
pgd_core.runner's hook readies the model for an evaluation; rank 0 writes what
every rank holds. Run by tests/test_distributed.py."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn


def main() -> int:
    from pgd_core.distributed import init_process_group, rank, world_size
    from pgd_core.runner import CallbackHook, RunCallbacks

    init_process_group("cpu", timeout_s=60)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    model.train()
    torch.manual_seed(rank())  # each rank sees other images
    model(torch.randn(2, 3, 8, 8) * (rank() + 1))
    before = model[1].running_var.clone()

    class Runner:  # what the hook reads of mmengine's Runner
        pass

    runner = Runner()
    runner.model = model
    CallbackHook(RunCallbacks()).before_val_epoch(runner)
    gathered = [torch.zeros_like(before) for _ in range(world_size())]
    dist.all_gather(gathered, model[1].running_var)
    originals = [torch.zeros_like(before) for _ in range(world_size())]
    dist.all_gather(originals, before)
    if rank() == 0:
        Path(sys.argv[1]).write_text(
            json.dumps(
                {
                    "before": [t.tolist() for t in originals],
                    "after": [t.tolist() for t in gathered],
                }
            )
        )
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
