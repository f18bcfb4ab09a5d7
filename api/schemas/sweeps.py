"""Bodies of ``/sweeps``: a base spec and a grid over dotted paths into it."""

from __future__ import annotations

import math
import re
from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field, field_validator

from pgd_core.spec import RunSpec

MAX_SWEEP_JOBS = 256
_PATH = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")


#: A grid value is a field's value: a number, a string, or a short list or object of
#: them (img_scale, level_weights), never deeply nested.
MAX_VALUE_DEPTH = 4


def _depth(value: Any, limit: int = MAX_VALUE_DEPTH + 1) -> int:
    """Nesting depth of ``value`` (a scalar is 0), counted no further than ``limit``."""
    if limit <= 0 or not isinstance(value, list | dict):
        return 0
    items = value.values() if isinstance(value, dict) else value
    return 1 + max((_depth(v, limit - 1) for v in items), default=0)


class SweepCreate(BaseModel):
    """``base`` is a complete run spec; each grid key is a dotted path into it
    (``distill.alpha``, ``seed``, ``method``) with the values to try. One job is
    queued per combination (the cartesian product)."""

    base: RunSpec
    grid: dict[str, list[Any]] = Field(
        ..., examples=[{"distill.alpha": [0.02, 0.04], "seed": [0, 1]}]
    )

    @field_validator("grid")
    @classmethod
    def _bounded_grid(cls, grid: dict[str, list[Any]]) -> dict[str, list[Any]]:
        if not grid:
            raise ValueError("needs at least one path")
        for path, values in grid.items():
            if not _PATH.match(path):
                raise ValueError(f"'{path}' is not a dotted field path")
            if not values:
                raise ValueError(f"'{path}' has no values")
            if any(_depth(v) > MAX_VALUE_DEPTH for v in values):
                raise ValueError(
                    f"'{path}' has a value nested deeper than {MAX_VALUE_DEPTH} levels"
                )
        size = math.prod(len(values) for values in grid.values())
        if size > MAX_SWEEP_JOBS:
            raise ValueError(f"{size} combinations, at most {MAX_SWEEP_JOBS} allowed")
        return grid


class SweepCreated(BaseModel):
    id: str
    jobs: list[str]


class SweepRead(BaseModel):
    id: str
    owner: str
    grid: dict[str, list[Any]]
    created_at: datetime
    total: int
    states: dict[str, int] = Field(description="job count per state (every state listed)")
    progress: float = Field(description="mean progress of the sweep's jobs, 0..1")


class SweepPage(BaseModel):
    """Sweeps newest first; ``next_offset`` is null on the last page."""

    items: list[SweepRead]
    limit: int
    offset: int
    next_offset: int | None
