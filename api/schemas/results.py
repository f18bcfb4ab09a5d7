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
    # What the model costs to run (pgd_core.cost), null when it was not measured.
    params: int | None = Field(description="parameters of the detector as deployed")
    flops: int | None = Field(
        description="FLOPs of one forward at the dataset's test size (mmengine's "
        "FlopAnalyzer: a multiply-add is one FLOP)"
    )
    latency_ms: float | None = Field(description="median batch-1 forward time")
    latency_p90_ms: float | None
    peak_memory_mb: float | None = Field(description="peak memory of one forward (MiB)")
    device: str | None = Field(description="where the latency was measured")
    threads: int | None = Field(description="CPU threads of that measurement")
    onnx_max_abs_diff: float | None = Field(
        description="largest |onnxruntime - PyTorch| over the raw head outputs"
    )
    cost: dict[str, Any] | None = Field(
        description="the whole measurement: input size, runs, warm-up, ONNX export"
    )
    teacher_params: int | None
    teacher_flops: int | None
    teacher_latency_ms: float | None
    params_ratio_vs_teacher: float | None = Field(description="this row's params / the teacher's")
    flops_ratio_vs_teacher: float | None = Field(description="this row's FLOPs / the teacher's")
    speedup_vs_teacher: float | None = Field(
        description="teacher latency / this row's, only when both were measured on the "
        "same device with the same thread count"
    )


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


class ParetoPoint(BaseModel):
    result_id: int
    job_id: str
    kind: str
    method: str
    cost: float = Field(description="the value of the cost column asked for")
    metric: float = Field(description="the value of the metric asked for")
    device: str | None = Field(description="where the latency was measured")
    on_front: bool = Field(description="no other result is at least as cheap and as accurate")


class Pareto(BaseModel):
    """The results of one detector on one dataset as (cost, metric) points, and the
    accuracy/cost Pareto front among them: the results no other result beats on both
    (costs no more and scores no worse, better in one). Latencies measured on
    different devices compare machines, not models: ``devices`` says which there
    are, and ``device`` keeps one."""

    detector: str
    dataset: str
    cost: str
    metric: str
    lower_is_better: bool = Field(description="true for mr: a lower miss rate is better")
    points: list[ParetoPoint] = Field(description="oldest first")
    front: list[str] = Field(description="job ids of the front, cheapest first")
    truncated: bool = Field(description="only the most recent 10000 results were used")
    device: str | None = Field(description="the device the points were kept for, if one")
    devices: dict[str, int] = Field(
        description="every device among the results (before the device filter), with "
        "its number of results, most first"
    )
