"""The ``/results`` leaderboard: evaluation results with their teacher and no-KD baseline.

Every page costs two queries, whatever its size:

1. the results themselves (``eval_results`` joined to their job, and outer-joined
   to the teacher job's ``eval_results`` row through ``jobs.teacher_job_id``);
2. the candidate baselines for the distilled rows of the page: succeeded ``train``
   jobs that have an evaluation result, restricted to the page's
   (detector, dataset) pairs.

Baseline rule: for a ``distill`` job with a ``teacher_job_id``, the no-KD student
baseline is the most recent (latest ``finished_at``, then latest ``created_at``,
then highest ``seq``) succeeded ``train`` job with an evaluation result, the same
detector and dataset, and a ``spec["student"]`` equal to the distilled job's
``spec["student"]``. The architecture comparison is done in Python on the decoded
JSON because the ``spec`` column is plain JSON (no portable equality operator on
PostgreSQL's ``json`` type, key order not canonical on SQLite); the candidates are
narrowed in SQL first.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Select, and_, or_, select
from sqlalchemy.orm import Session, aliased

from api.db.models import EvalResult, Job

METRICS: tuple[str, ...] = ("ap", "ap50", "ap75", "aps", "apm", "apl", "mr", "ji")
SORT_KEYS: tuple[str, ...] = (*METRICS, "created_at")
DELTA_METRICS: tuple[str, ...] = ("ap", "mr", "ji")
DEFAULT_SORT = "-ap"
CSV_CAP = 100_000
_CHUNK = 1000


class InvalidSort(ValueError):
    """``sort`` names no sortable column."""


@dataclass(frozen=True)
class ResultFilters:
    dataset: str | None = None
    detector: str | None = None
    method: str | None = None
    kind: str | None = None


def parse_sort(sort: str) -> tuple[str, bool]:
    """``"-ap"`` -> ``("ap", True)``; raises InvalidSort for an unknown key."""
    descending = sort.startswith("-")
    key = sort[1:] if descending else sort
    if key not in SORT_KEYS:
        raise InvalidSort(f"sort: must be one of {', '.join(SORT_KEYS)}, optionally prefixed by -")
    return key, descending


_teacher_result = aliased(EvalResult, name="teacher_result")


def _page_query(filters: ResultFilters, sort: str) -> Select[Any]:
    key, descending = parse_sort(sort)
    query = (
        select(
            EvalResult,
            Job.kind,
            Job.spec,
            Job.teacher_job_id,
            *(getattr(_teacher_result, m).label(f"teacher_{m}") for m in METRICS),
        )
        .join(Job, Job.id == EvalResult.job_id)
        .outerjoin(_teacher_result, _teacher_result.job_id == Job.teacher_job_id)
    )
    for name in ("dataset", "detector", "method"):
        value = getattr(filters, name)
        if value is not None:
            query = query.where(getattr(EvalResult, name) == value)
    if filters.kind is not None:
        query = query.where(Job.kind == filters.kind)
    column = getattr(EvalResult, key)
    ordered = column.desc() if descending else column.asc()
    # NULLs last either way (PostgreSQL and SQLite disagree by default); id keeps
    # the order total, so offset pages never overlap.
    tie = EvalResult.id.desc() if descending else EvalResult.id.asc()
    return query.order_by(ordered.nulls_last(), tie)


def _is_distilled(kind: str, teacher_job_id: str | None) -> bool:
    return kind == "distill" and teacher_job_id is not None


def _baselines(
    db_session: Session, pairs: set[tuple[str, str]]
) -> dict[tuple[str, str], list[tuple[dict[str, Any], str, EvalResult]]]:
    """Candidate baselines per (detector, dataset), most recent first (one query)."""
    if not pairs:
        return {}
    query = (
        select(Job.detector, Job.dataset, Job.spec, Job.id, EvalResult)
        .join(EvalResult, EvalResult.job_id == Job.id)
        .where(
            Job.kind == "train",
            Job.state == "succeeded",
            or_(*(and_(Job.detector == d, Job.dataset == s) for d, s in sorted(pairs))),
        )
        .order_by(
            Job.finished_at.desc().nulls_last(),
            Job.created_at.desc(),
            Job.seq.desc(),
        )
    )
    found: dict[tuple[str, str], list[tuple[dict[str, Any], str, EvalResult]]] = {}
    for detector, dataset, spec, job_id, result in db_session.execute(query):
        student = (spec or {}).get("student")
        found.setdefault((detector, dataset), []).append((student, job_id, result))
    return found


def _delta(value: float | None, other: float | None) -> float | None:
    return None if value is None or other is None else value - other


def _row(
    result: EvalResult,
    kind: str,
    teacher_job_id: str | None,
    teacher: dict[str, float | None],
    baseline: tuple[str, EvalResult] | None,
) -> dict[str, Any]:
    row: dict[str, Any] = {
        "id": result.id,
        "job_id": result.job_id,
        "kind": kind,
        "dataset": result.dataset,
        "detector": result.detector,
        "method": result.method,
        **{m: getattr(result, m) for m in METRICS},
        "metrics": result.metrics,
        "created_at": result.created_at,
    }
    distilled = _is_distilled(kind, teacher_job_id)
    row["teacher_job_id"] = teacher_job_id if distilled else None
    row["baseline_job_id"] = baseline[0] if baseline is not None else None
    for m in METRICS:
        row[f"teacher_{m}"] = teacher[m] if distilled else None
        row[f"baseline_{m}"] = getattr(baseline[1], m) if baseline is not None else None
    for m in DELTA_METRICS:
        row[f"delta_{m}_vs_baseline"] = _delta(row[m], row[f"baseline_{m}"])
        row[f"delta_{m}_vs_teacher"] = _delta(row[m], row[f"teacher_{m}"])
    return row


def _rows(db_session: Session, fetched: Sequence[Any]) -> list[dict[str, Any]]:
    pairs = {
        (r.EvalResult.detector, r.EvalResult.dataset)
        for r in fetched
        if _is_distilled(r.kind, r.teacher_job_id)
    }
    candidates = _baselines(db_session, pairs)
    out = []
    for r in fetched:
        result: EvalResult = r.EvalResult
        baseline = None
        if _is_distilled(r.kind, r.teacher_job_id):
            student = (r.spec or {}).get("student")
            for cand_student, job_id, cand_result in candidates.get(
                (result.detector, result.dataset), []
            ):
                if cand_student == student:
                    baseline = (job_id, cand_result)
                    break
        teacher = {m: getattr(r, f"teacher_{m}") for m in METRICS}
        out.append(_row(result, r.kind, r.teacher_job_id, teacher, baseline))
    return out


def list_page(
    *,
    db_session: Session,
    filters: ResultFilters,
    sort: str = DEFAULT_SORT,
    limit: int,
    offset: int = 0,
) -> tuple[list[dict[str, Any]], int | None]:
    """One page of rows and the offset of the next page (None on the last one)."""
    query = _page_query(filters, sort).offset(offset).limit(limit + 1)
    fetched = list(db_session.execute(query))
    more = len(fetched) > limit
    rows = _rows(db_session, fetched[:limit])
    return rows, (offset + limit if more else None)


def iter_rows(
    *, db_session: Session, filters: ResultFilters, sort: str = DEFAULT_SORT, cap: int = CSV_CAP
) -> Iterator[dict[str, Any]]:
    """Every row in order, up to ``cap``, fetched in chunks (two queries per chunk)."""
    parse_sort(sort)
    offset = 0
    while offset < cap:
        size = min(_CHUNK, cap - offset)
        rows, next_offset = list_page(
            db_session=db_session, filters=filters, sort=sort, limit=size, offset=offset
        )
        yield from rows
        if next_offset is None:
            return
        offset = next_offset


def csv_value(value: Any) -> Any:
    """A cell: ISO timestamps, empty for missing values."""
    if value is None:
        return ""
    if isinstance(value, datetime):
        return value.isoformat()
    return value
