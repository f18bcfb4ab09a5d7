"""Bodies of ``/results``: leaderboard rows and pages, and rows grouped over seeds."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field, create_model

from pgd_service.db.models import METRICS


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


def _group_fields() -> dict[str, Any]:
    """The per-metric fields of :class:`GroupRow` (api.services.groups computes them)."""
    gap_metrics = ("ap", "mr", "ji")
    fields: dict[str, Any] = {}
    for m in METRICS:
        fields[f"{m}_n"] = (int, Field(description=f"rows of the group with a {m}"))
        fields[f"{m}_mean"] = (float | None, None)
        fields[f"{m}_sd"] = (float | None, Field(None, description="sample sd (n - 1)"))
        fields[f"{m}_ci95_low"] = (float | None, Field(None, description="95 % t interval"))
        fields[f"{m}_ci95_high"] = (float | None, None)
    for m in gap_metrics:
        fields[f"teacher_{m}"] = (float | None, None)
        fields[f"baseline_{m}_mean"] = (
            float | None,
            Field(None, description="mean of the paired same-seed no-KD controls"),
        )
        fields[f"delta_{m}_n"] = (int, Field(description="seeds paired with their control"))
        fields[f"delta_{m}_mean"] = (float | None, None)
        fields[f"delta_{m}_sd"] = (float | None, None)
        fields[f"gap_recovered_{m}"] = (
            float | None,
            Field(None, description="delta mean / (teacher - baseline mean)"),
        )
    return fields


class _GroupBase(BaseModel):
    config_hash: str = Field(description="SHA-256 of the spec without its seed")
    kind: str
    detector: str
    dataset: str
    method: str
    study_id: str | None
    n: int = Field(description="results in the group (one per job)")
    seeds: list[int]
    job_ids: list[str]
    teacher_job_ids: list[str]
    latest_created_at: datetime


GroupRow = create_model(
    "GroupRow",
    __base__=_GroupBase,
    __doc__=(
        "Results that differ only by seed, summarised (GET /results?group_by=config): "
        "mean, sd, 95 % interval per metric; for distilled groups the paired delta "
        "against the same-seed no-KD control and the share of the teacher-student gap "
        "recovered."
    ),
    **_group_fields(),
)


class GroupPage(BaseModel):
    """One offset page of grouped results; ``next_offset`` is null on the last page."""

    items: list[GroupRow]
    limit: int
    offset: int
    next_offset: int | None
