"""Bodies of ``/studies``: a teacher, a student template, the methods and the seeds."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field, model_validator

from api.schemas.results import GroupRow
from pgd_core.spec import Method, RunSpec

MAX_STUDY_JOBS = 256


class StudyCreate(BaseModel):
    """One teacher and every (method, seed) student.

    ``teacher`` is the teacher's run (``kind`` train), queued with the study; or
    ``teacher_ref`` names a finished or unfinished teacher job, or a registered
    checkpoint. ``student`` is a ``distill`` spec whose ``method`` and ``seed``
    each student replaces (method ``none`` with no teacher is a valid template);
    its ``teacher`` architecture is replaced by the teacher run's model, and
    missing ``distill`` settings default to the paper's for the detector.
    Method ``none`` is the same student trained alone (the control every other
    method's delta is paired with, seed by seed)."""

    name: str | None = Field(None, max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9 _.:=+-]*$")
    teacher: RunSpec | None = None
    teacher_ref: str | None = Field(None, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
    student: RunSpec
    methods: list[Method] = Field(..., min_length=1, examples=[["none", "inherit", "pgd"]])
    seeds: list[int] = Field(..., min_length=1, examples=[[0, 1, 2]])

    @model_validator(mode="after")
    def _well_formed(self) -> StudyCreate:
        if (self.teacher is None) == (self.teacher_ref is None):
            raise ValueError("teacher_ref: give exactly one of teacher (a run) and teacher_ref")
        if len(set(self.methods)) != len(self.methods):
            raise ValueError("methods: each method once")
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError("seeds: each seed once")
        if any(not 0 <= seed < 2**31 for seed in self.seeds):
            raise ValueError("seeds: each seed is in [0, 2**31)")
        size = len(self.methods) * len(self.seeds) + (self.teacher is not None)
        if size > MAX_STUDY_JOBS:
            raise ValueError(
                f"seeds: {size} jobs (methods x seeds, and the teacher), "
                f"at most {MAX_STUDY_JOBS} allowed"
            )
        return self


class StudyCreated(BaseModel):
    id: str
    teacher_job_id: str | None
    jobs: list[str]


class StudyJob(BaseModel):
    id: str
    role: str = Field(description="teacher or student")
    kind: str
    method: str
    seed: int | None
    state: str
    progress: float
    reason: str | None
    message: str | None


class StudyGroup(GroupRow):
    role: str = Field(description="teacher or student")


class StudyRead(BaseModel):
    id: str
    name: str | None
    owner: str
    created_at: datetime
    teacher_job_id: str | None
    methods: list[str]
    seeds: list[int]
    request: dict[str, Any]
    total: int
    states: dict[str, int] = Field(description="job count per state (every state listed)")
    progress: float = Field(description="mean progress of the study's jobs, 0..1")
    done: bool = Field(description="every job has finished")
    jobs: list[StudyJob]
    table: list[StudyGroup] = Field(
        description="results grouped over seeds: the teacher, then each method in order"
    )


class StudySummary(BaseModel):
    """A study as listed: its request and progress (its jobs and table: GET /studies/{id})."""

    id: str
    name: str | None
    owner: str
    created_at: datetime
    teacher_job_id: str | None
    methods: list[str]
    seeds: list[int]
    total: int
    states: dict[str, int] = Field(description="job count per state (every state listed)")
    progress: float = Field(description="mean progress of the study's jobs, 0..1")


class StudyPage(BaseModel):
    """Studies newest first; ``next_offset`` is null on the last page."""

    items: list[StudySummary]
    limit: int
    offset: int
    next_offset: int | None
