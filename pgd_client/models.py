"""The API's bodies as typed objects (pydantic; unknown fields are kept, so a newer
server does not break an older client)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict

#: Job states a job never leaves (a retry starts a new attempt of the same job).
TERMINAL_STATES = ("succeeded", "failed", "cancelled")


class _Body(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)


class Job(_Body):
    id: str
    kind: str
    detector: str
    dataset: str
    method: str
    state: str
    reason: str | None = None
    message: str | None = None
    attempt: int
    max_attempts: int
    progress: float
    owner: str
    spec: dict[str, Any]
    spec_hash: str
    cancel_requested: bool = False
    teacher_job_id: str | None = None
    sweep_id: str | None = None
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None

    @property
    def finished(self) -> bool:
        return self.state in TERMINAL_STATES


class JobPage(_Body):
    items: list[Job]
    next_cursor: str | None = None


class ResultRow(_Body):
    """One leaderboard row: metrics in percent (AP) or as a fraction (MR, JI), with the
    teacher's and the no-KD baseline's where the row is a distilled student."""

    id: int
    job_id: str
    kind: str
    dataset: str
    detector: str
    method: str
    ap: float | None = None
    ap50: float | None = None
    ap75: float | None = None
    aps: float | None = None
    apm: float | None = None
    apl: float | None = None
    mr: float | None = None
    ji: float | None = None
    teacher_job_id: str | None = None
    teacher_ap: float | None = None
    baseline_job_id: str | None = None
    baseline_ap: float | None = None
    delta_ap_vs_baseline: float | None = None
    delta_ap_vs_teacher: float | None = None
    # What the model costs to run (None when it was not measured).
    params: int | None = None
    flops: int | None = None
    latency_ms: float | None = None
    latency_p90_ms: float | None = None
    peak_memory_mb: float | None = None
    device: str | None = None
    threads: int | None = None
    onnx_max_abs_diff: float | None = None
    teacher_params: int | None = None
    teacher_flops: int | None = None
    teacher_latency_ms: float | None = None
    params_ratio_vs_teacher: float | None = None
    flops_ratio_vs_teacher: float | None = None
    #: Only when the teacher was timed on the same device with the same threads.
    speedup_vs_teacher: float | None = None
    created_at: datetime


class ResultPage(_Body):
    items: list[ResultRow]
    limit: int
    offset: int
    next_offset: int | None = None


class GroupPage(_Body):
    """Results grouped over seeds (``group_by=config``); each row a dict of the
    API's GroupRow fields (``ap_mean``, ``ap_sd``, ``n``, ``gap_recovered_ap``...)."""

    items: list[dict[str, Any]]
    limit: int
    offset: int
    next_offset: int | None = None


class MetricPoint(_Body):
    step: int
    value: float


class Artifact(_Body):
    name: str
    kind: str
    size: int


class Event(_Body):
    """One server-sent event of ``GET /jobs/{id}/events``: ``event`` is ``state``
    (``data``: state, progress, attempt) or ``metric`` (step, name, value)."""

    id: str | None = None
    event: str
    data: dict[str, Any]


class Token(_Body):
    """An API token as listed (its secret is never listed)."""

    id: int
    owner: str
    name: str | None = None
    is_admin: bool = False
    created_at: datetime
    last_used_at: datetime | None = None
    expires_at: datetime | None = None
    revoked_at: datetime | None = None
    #: The token the client calls with.
    current: bool = False
    #: active, expired or revoked.
    state: str = "active"


class CreatedToken(Token):
    """A new token: ``token`` is its only plain-text copy."""

    token: str
