"""Why a run failed, as one word a job row can carry, and the failures of a
multi-process run (one of its ranks raised, or was killed).

The reasons are the service's (docs/architecture.md): ``diverged``,
``out_of_memory``, ``missing_file``, ``bad_dataset``, ``invalid_spec``, ``error``.
"""

from __future__ import annotations


class RankFailed(RuntimeError):
    """A rank of a multi-process run raised; the whole group was stopped.

    Attributes:
        rank: the global rank that failed first (None when torchrun gave none).
        reason: :func:`failure_reason` of the rank's exception.
        detail: the rank's exception, ``Type: message``.
        trace: the end of the rank's traceback.
    """

    def __init__(self, rank: int | None, reason: str, detail: str, trace: str = "") -> None:
        where = f"rank {rank}" if rank is not None else "a rank"
        super().__init__(f"{where} failed: {detail}")
        self.rank, self.reason, self.detail, self.trace = rank, reason, detail, trace


class RankLost(RuntimeError):
    """A rank of a multi-process run died without an exception (killed by a signal,
    the kernel's OOM killer, a crashed interpreter); the group was stopped. The run
    can resume from its last checkpoint."""

    def __init__(self, rank: int | None, exitcode: int | None, how: str) -> None:
        where = f"rank {rank}" if rank is not None else "a rank"
        super().__init__(f"{where} died: {how}")
        self.rank, self.exitcode, self.how = rank, exitcode, how


def failure_reason(exc: BaseException) -> str:
    """The reason word of a run that raised ``exc``."""
    import torch

    from pgd_core.data.manifest import DatasetError
    from pgd_core.distill.distiller import PairingError
    from pgd_core.runner import TrainingDiverged

    if isinstance(exc, RankFailed):
        return exc.reason
    # The service's own errors name their reason (an attribute no library uses:
    # UnicodeDecodeError or URLError carry a ``reason`` of their own).
    given = getattr(type(exc), "pgd_reason", None)
    if isinstance(given, str):
        return given
    if isinstance(exc, TrainingDiverged):
        return "diverged"
    if isinstance(exc, torch.OutOfMemoryError | MemoryError):
        return "out_of_memory"
    if isinstance(exc, FileNotFoundError):
        return "missing_file"
    if isinstance(exc, DatasetError):
        return "bad_dataset"
    if isinstance(exc, PairingError | ValueError):
        return "invalid_spec"
    return "error"
