"""Data-parallel runs on mmengine's own engine: what a rank needs beyond it.

A run of ``spec.processes`` > 1 is launched by :mod:`pgd_core.launch` under
``torchrun --standalone`` and each rank builds an mmengine Runner with
``launcher="pytorch"``: mmengine wraps the model in DDP, shards the samplers and
gathers the evaluator's results across ranks. Three things it does not do on a
CPU build of torch, done here:

* mmengine's ``init_dist`` calls ``torch.cuda.set_device`` unconditionally: the
  process group is initialised here first (gloo on CPU, NCCL on GPUs), and
  mmengine then finds it initialised and keeps it;
* mmengine's ``wrap_model`` passes ``device_ids=[LOCAL_RANK]``, which DDP refuses
  for a CPU module: :class:`PGDDistributedDataParallel` drops them there;
* a decision every rank must take together (stop now, the value of a logged
  loss) is one collective: :func:`any_rank` and :func:`mean_across_ranks`.

The teacher is never under DDP: :class:`pgd_core.distill.distiller.PGDDistiller`
keeps it outside its module tree, so DDP neither broadcasts its weights nor
synchronises anything of it; it stays frozen and in eval mode on every rank.
"""

from __future__ import annotations

import os
from datetime import timedelta

import torch
import torch.distributed as dist
from mmengine.model import MMDistributedDataParallel
from mmengine.registry import MODEL_WRAPPERS


def world_size() -> int:
    """Ranks of the initialised process group (1 when there is none)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def under_torchrun() -> bool:
    """This process is a rank that torchrun started (its environment says so)."""
    return "LOCAL_RANK" in os.environ and "WORLD_SIZE" in os.environ


def init_process_group(device: str, *, timeout_s: float) -> str:
    """Join the group torchrun set up (``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR/PORT`` in
    the environment): NCCL with this rank's GPU for ``cuda`` runs, gloo for ``cpu``.

    A collective that waits longer than ``timeout_s`` (a rank hung or gone) raises,
    and torchrun then stops the whole group. Returns the backend.
    """
    if dist.is_initialized():
        return dist.get_backend()
    if device == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError("a cuda run was launched on a machine without a visible GPU")
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
        backend = "nccl"
    else:
        backend = "gloo"
    dist.init_process_group(backend=backend, timeout=timedelta(seconds=timeout_s))
    return backend


def _collective_device() -> torch.device:
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def any_rank(flag: bool) -> bool:
    """True on every rank when it is True on at least one (every rank must call it)."""
    if world_size() == 1:
        return flag
    value = torch.tensor([1 if flag else 0], dtype=torch.int32, device=_collective_device())
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def mean_across_ranks(values: dict[str, float]) -> dict[str, float]:
    """The mean of each value over the ranks (every rank must call it with the same
    keys): a rank's logged loss covers its own share of the batch only."""
    if world_size() == 1 or not values:
        return dict(values)
    names = sorted(values)
    tensor = torch.tensor(
        [float(values[n]) for n in names], dtype=torch.float64, device=_collective_device()
    )
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    tensor /= world_size()
    return {name: float(v) for name, v in zip(names, tensor.tolist(), strict=True)}


def sync_buffers(module: torch.nn.Module) -> None:
    """Every rank takes rank 0's buffers (BatchNorm's running statistics).

    DDP runs with ``broadcast_buffers=False`` (mmengine's default), so a BatchNorm
    that trains keeps per-rank statistics. Before an evaluation they are made rank
    0's, the ones its checkpoint holds: each rank then scores its share of the
    images with the same model, the one an ``evaluate`` job of that checkpoint
    rebuilds."""
    if world_size() == 1:
        return
    for buffer in module.buffers():
        dist.broadcast(buffer, src=0)


@MODEL_WRAPPERS.register_module()
class PGDDistributedDataParallel(MMDistributedDataParallel):
    """mmengine's DDP wrapper, usable for CPU modules (gloo): DDP takes no
    ``device_ids`` for a module that is not on a GPU. On GPUs it is the plain
    wrapper with ``device_ids=[LOCAL_RANK]``."""

    def __init__(
        self, module: torch.nn.Module, device_ids: list[int] | None = None, **kwargs: object
    ) -> None:
        first = next(module.parameters(), None)
        if first is None or first.device.type == "cpu":
            device_ids = None
        super().__init__(module=module, device_ids=device_ids, **kwargs)
