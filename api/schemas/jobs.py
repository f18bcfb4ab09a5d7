"""Bodies of ``/jobs``: the run spec a job is created from, and a job as shown."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict

from pgd_core.spec import RunSpec


class JobCreate(RunSpec):
    """The body of ``POST /jobs``: a complete run spec, validated before anything is stored."""


class JobRead(BaseModel):
    """A job as the API shows it."""

    model_config = ConfigDict(from_attributes=True)

    id: str
    kind: str
    detector: str
    dataset: str
    method: str
    state: str
    reason: str | None
    message: str | None
    attempt: int
    max_attempts: int
    progress: float
    owner: str
    spec: dict[str, Any]
    spec_hash: str
    cancel_requested: bool
    teacher_job_id: str | None
    sweep_id: str | None
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


class JobPage(BaseModel):
    """One page of jobs, newest first; pass ``next_cursor`` back to get the next page."""

    items: list[JobRead]
    next_cursor: str | None
