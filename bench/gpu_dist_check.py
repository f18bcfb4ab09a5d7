"""The CUDA branch of pgd_core.distributed on a real GPU, under torchrun with NCCL.

CI has no GPU, so the NCCL half of the rank-side code never runs there: joining
the group with this rank's GPU, the collectives on CUDA tensors, and
PGDDistributedDataParallel keeping ``device_ids`` for a CUDA module. This runs
them on whatever GPUs the machine has (one rank per GPU) and prints what it saw
and how long each collective takes (median of 200, after 20 warm-up ones):

    python -m torch.distributed.run --standalone --nproc-per-node <GPUs> bench/gpu_dist_check.py

It needs torch with CUDA and mmengine only (no mmcv, no mmdet).
"""

from __future__ import annotations

import json
import statistics
import time

import torch
from torch import nn


def _timed(fn, runs: int = 200, warmup: int = 20) -> float:  # noqa: ANN001
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(runs):
        begin = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - begin)
    return statistics.median(times) * 1e6


def main() -> None:
    from pgd_core.distributed import (
        PGDDistributedDataParallel,
        any_rank,
        init_process_group,
        mean_across_ranks,
        rank,
        world_size,
    )

    backend = init_process_group("cuda", timeout_s=120)
    device = torch.device("cuda", torch.cuda.current_device())
    report: dict[str, object] = {
        "backend": backend,
        "world_size": world_size(),
        "rank": rank(),
        "device": torch.cuda.get_device_name(device),
        "torch": torch.__version__,
        "nccl": ".".join(map(str, torch.cuda.nccl.version())),
    }
    # Every rank agrees on a stop that one rank asked for.
    report["any_rank(rank == last)"] = any_rank(rank() == world_size() - 1)
    report["any_rank(False)"] = any_rank(False)
    values = {"loss": float(rank() + 1), "loss_cls": 2.0 * (rank() + 1)}
    mean = mean_across_ranks(values)
    n = world_size()
    expected = {"loss": (n + 1) / 2, "loss_cls": float(n + 1)}
    report["mean_across_ranks_ok"] = all(abs(mean[k] - expected[k]) < 1e-12 for k in values)

    # DDP over a CUDA module keeps device_ids; its gradients are those of the same
    # module without DDP when every rank sees the same data (the mean of equal grads).
    torch.manual_seed(0)
    plain = nn.Sequential(nn.Conv2d(3, 64, 3, padding=1), nn.ReLU(), nn.Conv2d(64, 8, 3)).to(device)
    copy = nn.Sequential(nn.Conv2d(3, 64, 3, padding=1), nn.ReLU(), nn.Conv2d(64, 8, 3)).to(device)
    copy.load_state_dict(plain.state_dict())
    wrapped = PGDDistributedDataParallel(
        module=copy, device_ids=[device.index], broadcast_buffers=False
    )
    report["ddp_device_ids"] = wrapped.device_ids
    x = torch.randn(
        4, 3, 64, 64, device=device, generator=torch.Generator(device=device).manual_seed(1)
    )
    plain(x).square().mean().backward()
    wrapped(x).square().mean().backward()
    report["ddp_grads_equal"] = all(
        torch.allclose(a.grad, b.grad, rtol=1e-5, atol=1e-7)
        for a, b in zip(plain.parameters(), copy.parameters(), strict=True)
    )
    # What a multi-process job adds per iteration: one any_rank, and every
    # metrics interval one mean of about ten losses.
    report["any_rank_us"] = round(_timed(lambda: any_rank(False)), 1)
    ten = {f"loss_{i}": float(i) for i in range(10)}
    report["mean_across_ranks_10_us"] = round(_timed(lambda: mean_across_ranks(ten)), 1)
    if rank() == 0:
        print(json.dumps(report, indent=2), flush=True)
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
