"""Request and response bodies of the REST API."""

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


class PresetRead(BaseModel):
    name: str
    spec: dict[str, Any]


class DatasetRead(BaseModel):
    name: str
    format: str
    classes: list[str]
    splits: list[str]


class ResultRow(BaseModel):
    """One evaluation result on the leaderboard.

    Distilled rows (``distill`` jobs with a teacher job) also carry the teacher's
    and the no-KD student baseline's numbers and the deltas (this row minus the
    other); every other row has those fields null. For ``mr`` (miss rate) lower is
    better, so a negative delta is an improvement.
    """

    id: int
    job_id: str
    kind: str
    dataset: str
    detector: str
    method: str
    ap: float | None
    ap50: float | None
    ap75: float | None
    aps: float | None
    apm: float | None
    apl: float | None
    mr: float | None
    ji: float | None
    metrics: dict[str, Any]
    created_at: datetime
    teacher_job_id: str | None
    teacher_ap: float | None
    teacher_ap50: float | None
    teacher_ap75: float | None
    teacher_aps: float | None
    teacher_apm: float | None
    teacher_apl: float | None
    teacher_mr: float | None
    teacher_ji: float | None
    baseline_job_id: str | None
    baseline_ap: float | None
    baseline_ap50: float | None
    baseline_ap75: float | None
    baseline_aps: float | None
    baseline_apm: float | None
    baseline_apl: float | None
    baseline_mr: float | None
    baseline_ji: float | None
    delta_ap_vs_baseline: float | None
    delta_ap_vs_teacher: float | None
    delta_mr_vs_baseline: float | None
    delta_mr_vs_teacher: float | None
    delta_ji_vs_baseline: float | None
    delta_ji_vs_teacher: float | None


class ResultPage(BaseModel):
    """One offset page of the leaderboard; ``next_offset`` is null on the last page."""

    items: list[ResultRow]
    limit: int
    offset: int
    next_offset: int | None
