"""Results grouped over seeds: ``GET /results?group_by=config`` and a study's table.

A group is every evaluation result whose job has the same ``config_hash`` (the
spec without its seed, :meth:`pgd_core.spec.RunSpec.config_hash`). For each
metric it gives the mean over the
group's rows that have the metric, the sample standard deviation (n - 1), and a
95 % confidence interval of the mean (Student's t with n - 1 degrees of
freedom); with one row the sd and the interval are empty, not zero. A seed
run more than once counts once, by its newest result. Its
metrics are those of the leaderboard (``ap``, ``ap50`` ... ``mr``, ``ji``).

Distilled groups also carry, for ``ap``, ``mr`` and ``ji``:

- ``delta_<m>_mean`` / ``_sd`` / ``_n``: the paired difference against the no-KD
  control of the *same seed*: the succeeded ``train`` job of the same owner with a
  result whose ``config_hash`` is the distill job's ``baseline_hash`` (the same
  student, data, schedule and device trained alone; the newest if there are
  several; never another owner's run, whoever reads the groups). A seed
  without its control is left out of the pairs, so ``delta_<m>_n`` may be
  smaller than ``n``.
- ``baseline_<m>_mean``: the mean of those paired controls.
- ``teacher_<m>``: the teacher job's result (the mean if the group's rows name
  several teachers).
- ``gap_recovered_<m>``: ``delta_<m>_mean / (teacher_<m> - baseline_<m>_mean)``,
  the share of the teacher-student gap the method closes (1.0: all of it).

The statistics are computed in Python from three queries (the group rows, their
controls, their teachers), so SQLite and PostgreSQL give the same numbers.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from api.services.results import DELTA_METRICS, METRICS, ResultFilters, parse_sort
from pgd_service.db.models import EvalResult, Job

#: Metrics summarised per group (every result metric); the paired deltas and the
#: gap are given for GAP_METRICS.
GROUP_METRICS: tuple[str, ...] = METRICS
GAP_METRICS: tuple[str, ...] = DELTA_METRICS
GROUP_CAP = 100_000
_IN_CHUNK = 500

# Two-sided 95 % quantiles of Student's t, t(0.975; df), for df = 1..30.
_T975: tuple[float, ...] = (
    12.706205, 4.302653, 3.182446, 2.776445, 2.570582, 2.446912, 2.364624, 2.306004,
    2.262157, 2.228139, 2.200985, 2.178813, 2.160369, 2.144787, 2.131450, 2.119905,
    2.109816, 2.100922, 2.093024, 2.085963, 2.079614, 2.073873, 2.068658, 2.063899,
    2.059539, 2.055529, 2.051831, 2.048407, 2.045230, 2.042272,
)  # fmt: skip
_Z975 = 1.959963984540054


def t975(df: int) -> float:
    """t(0.975; df): the table up to 30 degrees of freedom, then the Cornish-Fisher
    expansion around the normal quantile (error below 1e-4 from df = 31)."""
    if df < 1:
        raise ValueError(f"degrees of freedom must be at least 1, got {df}")
    if df <= len(_T975):
        return _T975[df - 1]
    z = _Z975
    g1 = (z**3 + z) / 4
    g2 = (5 * z**5 + 16 * z**3 + 3 * z) / 96
    g3 = (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / 384
    return z + g1 / df + g2 / df**2 + g3 / df**3


@dataclass(frozen=True)
class Summary:
    n: int
    mean: float | None
    sd: float | None
    ci95_low: float | None
    ci95_high: float | None


def summarise(values: Sequence[float | None]) -> Summary:
    """Mean, sample sd and the 95 % t interval of the mean of finite ``values``."""
    finite = [float(v) for v in values if v is not None and math.isfinite(v)]
    n = len(finite)
    if n == 0:
        return Summary(0, None, None, None, None)
    mean = statistics.fmean(finite)
    if n == 1:
        return Summary(1, mean, None, None, None)
    sd = statistics.stdev(finite)
    half = t975(n - 1) * sd / math.sqrt(n)
    return Summary(n, mean, sd, mean - half, mean + half)


@dataclass(frozen=True)
class _Member:
    """One result row of a group, with what its job says about seeds and controls."""

    job_id: str
    owner: str
    kind: str
    detector: str
    dataset: str
    method: str
    config_hash: str
    seed: int | None
    baseline_hash: str | None
    teacher_job_id: str | None
    study_id: str | None
    created_at: datetime
    values: dict[str, float | None]


def _member(r: Any) -> _Member:
    return _Member(
        job_id=r.job_id,
        owner=r.owner,
        kind=r.kind,
        detector=r.detector,
        dataset=r.dataset,
        method=r.method,
        # A job stored before migration 0005 without a spec hash: a group of its own.
        config_hash=r.config_hash or f"job:{r.job_id}",
        seed=r.seed,
        baseline_hash=r.baseline_hash,
        teacher_job_id=r.teacher_job_id,
        study_id=r.study_id,
        created_at=r.created_at,
        values={m: getattr(r, m) for m in GROUP_METRICS},
    )


_MEMBER_COLUMNS = (
    EvalResult.job_id,
    Job.owner,
    Job.kind,
    EvalResult.detector,
    EvalResult.dataset,
    EvalResult.method,
    Job.config_hash,
    Job.seed,
    Job.baseline_hash,
    Job.teacher_job_id,
    Job.study_id,
    EvalResult.created_at,
    *(getattr(EvalResult, m) for m in GROUP_METRICS),
)


def _members(db_session: Session, filters: ResultFilters) -> list[_Member]:
    query = select(*_MEMBER_COLUMNS).join(Job, Job.id == EvalResult.job_id)
    for name in ("dataset", "detector", "method"):
        value = getattr(filters, name)
        if value is not None:
            query = query.where(getattr(EvalResult, name) == value)
    if filters.kind is not None:
        query = query.where(Job.kind == filters.kind)
    if filters.study is not None:
        query = query.where(Job.study_id == filters.study)
    if filters.sweep is not None:
        query = query.where(Job.sweep_id == filters.sweep)
    if filters.job is not None:
        query = query.where(Job.id == filters.job)
    if filters.owner is not None:
        query = query.where(Job.owner == filters.owner)
    # Newest first: past the cap, the oldest results are the ones left out.
    query = query.order_by(EvalResult.id.desc()).limit(GROUP_CAP)
    return [_member(r) for r in db_session.execute(query)]


def _one_per_seed(members: list[_Member]) -> list[_Member]:
    """The newest result of each (configuration, seed): a seed run twice is one sample,
    not two (the paired controls are chosen the same way)."""
    kept: dict[tuple[str, object], _Member] = {}
    for m in sorted(members, key=lambda m: m.created_at):
        kept[(m.config_hash, m.seed if m.seed is not None else m.job_id)] = m
    return sorted(kept.values(), key=lambda m: m.created_at)


def _chunks(values: Iterable[str]) -> Iterable[list[str]]:
    items = sorted(set(values))
    for start in range(0, len(items), _IN_CHUNK):
        yield items[start : start + _IN_CHUNK]


_ControlKey = tuple[str, str, int | None]


def _controls(
    db_session: Session, members: Iterable[_Member]
) -> dict[_ControlKey, dict[str, float | None]]:
    """(owner, config hash, seed) -> the newest succeeded train job's metrics, for the
    members' baseline hashes: a member's control is always a job of its own owner,
    whoever reads the groups (an admin, a shared leaderboard, a study's table)."""
    owners_of: dict[str, set[str]] = {}
    for m in members:
        if m.baseline_hash is not None:
            owners_of.setdefault(m.baseline_hash, set()).add(m.owner)
    found: dict[_ControlKey, dict[str, float | None]] = {}
    for chunk in _chunks(owners_of):
        owners = sorted(set().union(*(owners_of[h] for h in chunk)))
        query = (
            select(
                Job.owner,
                Job.config_hash,
                Job.seed,
                *(getattr(EvalResult, m) for m in GROUP_METRICS),
            )
            .join(EvalResult, EvalResult.job_id == Job.id)
            .where(Job.config_hash.in_(chunk), Job.kind == "train", Job.state == "succeeded")
            .where(Job.owner.in_(owners))
            # Oldest first: a newer control of the same seed replaces an older one.
            .order_by(Job.finished_at.asc().nulls_first(), Job.created_at.asc(), Job.seq.asc())
        )
        for r in db_session.execute(query):
            found[(r.owner, r.config_hash, r.seed)] = {m: getattr(r, m) for m in GROUP_METRICS}
    return found


def _teachers(db_session: Session, job_ids: Iterable[str]) -> dict[str, dict[str, float | None]]:
    # A row's teacher is the one its own job names (a reference its owner may use).
    found: dict[str, dict[str, float | None]] = {}
    for chunk in _chunks(job_ids):
        query = select(EvalResult.job_id, *(getattr(EvalResult, m) for m in GROUP_METRICS)).where(
            EvalResult.job_id.in_(chunk)
        )
        for r in db_session.execute(query):
            found[r.job_id] = {m: getattr(r, m) for m in GROUP_METRICS}
    return found


def _mean(values: Iterable[float | None]) -> float | None:
    finite = [v for v in values if v is not None and math.isfinite(v)]
    return statistics.fmean(finite) if finite else None


def _group_row(
    members: list[_Member],
    controls: dict[_ControlKey, dict[str, float | None]],
    teachers: dict[str, dict[str, float | None]],
) -> dict[str, Any]:
    first = members[0]
    studies = {m.study_id for m in members}
    teacher_ids = sorted({m.teacher_job_id for m in members if m.teacher_job_id})
    # Paired deltas for every distill group (its teacher may be a checkpoint); the
    # teacher's value and the gap only where the teacher is a job with a result.
    distilled = first.kind == "distill"
    row: dict[str, Any] = {
        "config_hash": first.config_hash,
        "kind": first.kind,
        "detector": first.detector,
        "dataset": first.dataset,
        "method": first.method,
        "study_id": studies.pop() if len(studies) == 1 else None,
        "n": len(members),
        "seeds": sorted({m.seed for m in members if m.seed is not None}),
        "job_ids": [m.job_id for m in members],
        "teacher_job_ids": teacher_ids if distilled else [],
        "latest_created_at": max(m.created_at for m in members),
    }
    for metric in GROUP_METRICS:
        summary = summarise([m.values[metric] for m in members])
        row[f"{metric}_n"] = summary.n
        row[f"{metric}_mean"] = summary.mean
        row[f"{metric}_sd"] = summary.sd
        row[f"{metric}_ci95_low"] = summary.ci95_low
        row[f"{metric}_ci95_high"] = summary.ci95_high
    for metric in GAP_METRICS:
        deltas: list[float] = []
        paired_controls: list[float] = []
        if distilled:
            for m in members:
                value = m.values[metric]
                control = controls.get((m.owner, m.baseline_hash or "", m.seed), {}).get(metric)
                if value is None or control is None:
                    continue
                if not (math.isfinite(value) and math.isfinite(control)):
                    continue
                deltas.append(value - control)
                paired_controls.append(control)
        delta = summarise(deltas)
        teacher = _mean(teachers.get(t, {}).get(metric) for t in teacher_ids) if distilled else None
        baseline = _mean(paired_controls)
        row[f"teacher_{metric}"] = teacher
        row[f"baseline_{metric}_mean"] = baseline
        row[f"delta_{metric}_n"] = delta.n
        row[f"delta_{metric}_mean"] = delta.mean
        row[f"delta_{metric}_sd"] = delta.sd
        gap = None
        if delta.mean is not None and teacher is not None and baseline is not None:
            if teacher != baseline:
                gap = delta.mean / (teacher - baseline)
        row[f"gap_recovered_{metric}"] = gap
    return row


def grouped_rows(
    *,
    db_session: Session,
    filters: ResultFilters,
    sort: str = "-ap",
) -> list[dict[str, Any]]:
    """Every group of the matching results, ordered by ``sort`` applied to the groups'
    means (``created_at``: the newest row of each group), empty values last."""
    key, descending = parse_sort(sort)
    members = _one_per_seed(_members(db_session, filters))
    groups: dict[str, list[_Member]] = {}
    for m in members:
        groups.setdefault(m.config_hash, []).append(m)
    controls = _controls(db_session, members)
    teachers = _teachers(db_session, (m.teacher_job_id for m in members if m.teacher_job_id))
    rows = [_group_row(g, controls, teachers) for g in groups.values()]
    column = "latest_created_at" if key == "created_at" else f"{key}_mean"

    def order(row: dict[str, Any]) -> tuple[bool, Any, str]:
        value = row.get(column)
        if value is None:
            return (True, 0, row["config_hash"])
        if isinstance(value, datetime):
            value = value.timestamp()
        return (False, -value if descending else value, row["config_hash"])

    return sorted(rows, key=order)
