"""The ``/results`` leaderboard: evaluation results with their teacher and no-KD baseline.

A page is one query on PostgreSQL and two on SQLite, whatever its size:

1. the page itself: ``eval_results`` joined to their job, then (on the page's
   rows only) outer-joined to the teacher job's ``eval_results`` row through
   ``jobs.teacher_job_id`` and, on PostgreSQL, to the baseline found by a
   ``LATERAL`` subquery per distilled row;
2. on SQLite only, the candidate baselines for the distilled rows of the page:
   succeeded ``train`` jobs that have an evaluation result, restricted to the
   page's (detector, dataset, owner) triples, compared in Python.

Baseline rule: for a ``distill`` job with a ``teacher_job_id``, the no-KD student
baseline is the most recent (latest ``finished_at``, then latest ``created_at``,
then highest ``seq``) succeeded ``train`` job with an evaluation result, the same
owner, detector and dataset, and a ``spec["student"]`` equal to the distilled job's
``spec["student"]``. PostgreSQL compares the two as ``jsonb`` (key order does not
matter) walking ``ix_jobs_baseline_lookup`` newest first, so it stops at the first
match. SQLite has no such equality (key order is not canonical in its JSON
text), so there the candidates are narrowed in SQL and compared on the decoded
JSON.

Why the page is a UNION of two ordered branches: rows are sorted with NULLs last
in both directions (PostgreSQL and SQLite disagree by default), and a btree
index only yields ``x DESC NULLS LAST`` if it was declared so, which SQLite
cannot do. So the rows with a value (``WHERE x IS NOT NULL ORDER BY x, id``,
an index range scanned either way) and the rows without one (``WHERE x IS NULL
ORDER BY id``) are each limited to ``offset + limit`` rows by an index scan, and
only those few rows are sorted together.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import astuple, dataclass
from datetime import datetime
from functools import lru_cache
from typing import Any, TypeAlias

from sqlalchemy import (
    ColumnElement,
    Integer,
    Select,
    Subquery,
    and_,
    bindparam,
    cast,
    func,
    or_,
    select,
    true,
    union_all,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Session, aliased

from api.schemas.results import ResultPage
from pgd_service.db.models import COSTS, METRICS, EvalResult, Job, LeaderboardVersion

# A fetched row by column name (SQLAlchemy's RowMapping is keyed by more than str).
Row: TypeAlias = Mapping[Any, Any]

SORT_KEYS: tuple[str, ...] = (*METRICS, *COSTS, "created_at")
DELTA_METRICS: tuple[str, ...] = ("ap", "mr", "ji")
DEFAULT_SORT = "-ap"
CSV_CAP = 100_000
_CHUNK = 1000
# Columns of a result row, in the page subqueries.
_RESULT_COLUMNS: tuple[str, ...] = (
    "id",
    "job_id",
    "dataset",
    "detector",
    "method",
    *METRICS,
    "metrics",
    *COSTS,
    "latency_p90_ms",
    "cost",
    "created_at",
)
#: The teacher's cost columns a distilled row carries (``cost`` for its device).
_TEACHER_COSTS: tuple[str, ...] = ("params", "flops", "latency_ms", "cost")


#: The ``jobs`` columns whose UPDATE changes what a page shows, for a job that has a
#: result: the page reads them (the job's kind, its teacher, the baseline lookup
#: by detector, dataset, student spec, state and recency). Migration 0004's
#: triggers raise the leaderboard version on an UPDATE of exactly these, so a
#: cached page is never served after they change; a query that reads another
#: column must add it here and to a new migration's triggers
#: (tests/test_leaderboard_triggers.py compares the three).
TRIGGER_JOB_COLUMNS: tuple[str, ...] = (
    "kind",
    "detector",
    "dataset",
    "spec",
    "state",
    "teacher_job_id",
    "created_at",
    "finished_at",
)
#: ``jobs`` columns the page reads that no UPDATE ever changes (set at creation).
IMMUTABLE_JOB_COLUMNS: tuple[str, ...] = ("id", "seq", "owner", "study_id", "sweep_id")


class InvalidSort(ValueError):
    """``sort`` names no sortable column."""


@dataclass(frozen=True)
class ResultFilters:
    dataset: str | None = None
    detector: str | None = None
    method: str | None = None
    kind: str | None = None
    study: str | None = None
    sweep: str | None = None
    job: str | None = None
    #: Only the results of this owner's jobs (a caller who may not see every result).
    owner: str | None = None


_FILTERS: tuple[str, ...] = (
    "dataset",
    "detector",
    "method",
    "kind",
    "study",
    "sweep",
    "job",
    "owner",
)
#: Filters on the job's columns rather than the result's.
_JOB_FILTERS: dict[str, str] = {"kind": "kind", "study": "study_id", "sweep": "sweep_id"}
#: Filters on a result column of another name.
_RESULT_FILTERS: dict[str, str] = {"job": "job_id"}


def parse_sort(sort: str) -> tuple[str, bool]:
    """``"-ap"`` -> ``("ap", True)``; raises InvalidSort for an unknown key."""
    descending = sort.startswith("-")
    key = sort[1:] if descending else sort
    if key not in SORT_KEYS:
        raise InvalidSort(f"sort: must be one of {', '.join(SORT_KEYS)}, optionally prefixed by -")
    return key, descending


def _branch(filtered: tuple[str, ...], key: str, descending: bool, only_if: Any = None) -> Subquery:
    """The first ``:size`` matching rows whose ``key`` is not NULL, in page order; with
    ``only_if`` (a condition on the other branch), those whose ``key`` is NULL."""
    column = getattr(EvalResult, key)
    query = select(*(getattr(EvalResult, name) for name in _RESULT_COLUMNS))
    if any(name in _JOB_FILTERS for name in filtered):
        query = query.join(Job, Job.id == EvalResult.job_id)
    for name in filtered:
        if name in _JOB_FILTERS:
            matched = getattr(Job, _JOB_FILTERS[name])
        else:
            matched = getattr(EvalResult, _RESULT_FILTERS.get(name, name))
        query = query.where(matched == bindparam(name))
    # id keeps the order total, so offset pages never overlap.
    tie = EvalResult.id.desc() if descending else EvalResult.id.asc()
    if only_if is not None:
        query = query.where(only_if, column.is_(None)).order_by(tie)
    else:
        query = query.where(column.is_not(None))
        query = query.order_by(column.desc() if descending else column.asc(), tie)
    return query.limit(bindparam("size", type_=Integer)).subquery()


def _ordered(page: Subquery, key: str, descending: bool) -> tuple[ColumnElement[Any], ...]:
    column, tie = page.c[key], page.c.id
    if descending:
        return column.desc().nulls_last(), tie.desc()
    return column.asc().nulls_last(), tie.asc()


def _baseline_lateral(page: Subquery, prefix: str, after: Any | None) -> Any:
    """PostgreSQL: the baseline of each distilled page row (at most one row) among its
    owner's candidates with a ``finished_at`` or, ``after`` another lateral found none,
    without.

    Two laterals instead of ORDER BY finished_at DESC NULLS LAST: each walks
    ix_jobs_baseline_lookup backwards and stops at its first match."""
    candidate = aliased(Job, name=f"{prefix}candidate")
    candidate_result = aliased(EvalResult, name=f"{prefix}candidate_result")
    query = (
        select(
            candidate.id.label(f"{prefix}baseline_job_id"),
            *(getattr(candidate_result, m).label(f"{prefix}baseline_{m}") for m in METRICS),
        )
        .join(candidate_result, candidate_result.job_id == candidate.id)
        .where(
            page.c.kind == "distill",
            page.c.teacher_job_id.is_not(None),
            candidate.detector == page.c.detector,
            candidate.dataset == page.c.dataset,
            # Another owner's run is never the baseline, whoever reads the page.
            candidate.owner == page.c.job_owner,
            candidate.kind == "train",
            candidate.state == "succeeded",
            # json -> 'student' then jsonb: only the small student object is
            # converted, not the whole spec.
            cast(candidate.spec["student"], JSONB) == page.c.student,
        )
    )
    if after is None:
        query = query.where(candidate.finished_at.is_not(None)).order_by(
            candidate.finished_at.desc(), candidate.created_at.desc(), candidate.seq.desc()
        )
        query = query.correlate(page)
    else:
        query = query.where(
            after.c.baseline_job_id.is_(None), candidate.finished_at.is_(None)
        ).order_by(candidate.created_at.desc(), candidate.seq.desc())
        query = query.correlate(page, after)
    return query.limit(1).lateral(f"{prefix}baseline")


def _filter_values(filters: ResultFilters) -> dict[str, str]:
    return {name: getattr(filters, name) for name in _FILTERS if getattr(filters, name) is not None}


def page_statement(dialect: str, filters: ResultFilters, sort: str) -> Select[Any]:
    """The query of one page, with the bound parameters of ``page_parameters``: ``:limit``
    rows from ``:offset`` with their teacher's metrics and, on PostgreSQL (``dialect ==
    "postgresql"``), their baseline's. Built once per shape (which filters, which sort):
    building it costs more than running it."""
    key, descending = parse_sort(sort)
    return _page_statement(dialect, tuple(_filter_values(filters)), key, descending)


def page_parameters(filters: ResultFilters, *, limit: int, offset: int = 0) -> dict[str, Any]:
    """The values of ``page_statement``'s parameters."""
    return {**_filter_values(filters), "limit": limit, "offset": offset, "size": offset + limit}


@lru_cache(maxsize=512)
def _page_statement(
    dialect: str, filtered: tuple[str, ...], key: str, descending: bool
) -> Select[Any]:
    query, order = _page_query(dialect, filtered, key, descending)
    return query.order_by(*order)


def _page_query(
    dialect: str, filtered: tuple[str, ...], key: str, descending: bool
) -> tuple[Select[Any], tuple[ColumnElement[Any], ...]]:
    """The page's rows (unordered) and the ORDER BY that puts them in page order."""
    first = _branch(filtered, key, descending)
    branches = [first]
    if EvalResult.__table__.c[key].nullable:
        # Rows without a value come last, so they are read only when the rows with
        # one do not fill the page: a one-time filter (no index fits every filter
        # combination with "IS NULL ORDER BY id", and most pages never get there).
        short = select(func.count()).select_from(first).scalar_subquery() < bindparam("size")
        branches.append(_branch(filtered, key, descending, only_if=short))
    merged = union_all(*(select(b) for b in branches)).subquery("merged")
    page = (
        select(merged)
        .order_by(*_ordered(merged, key, descending))
        .limit(bindparam("limit", type_=Integer))
        .offset(bindparam("offset", type_=Integer))
        .subquery("page")
    )
    # Jobs and teachers are joined to the page's rows only (primary key lookups).
    postgresql = dialect == "postgresql"
    student = cast(Job.spec["student"], JSONB).label("student") if postgresql else Job.spec
    rows = (
        select(
            *(page.c[name] for name in _RESULT_COLUMNS),
            Job.kind,
            Job.teacher_job_id,
            Job.owner.label("job_owner"),
            student,
        )
        .join(Job, Job.id == page.c.job_id)
        # Never reached (the page has no more rows), this LIMIT keeps PostgreSQL
        # from pulling the subquery up into the outer query: measured 2x faster
        # with 50 distilled rows.
        .limit(bindparam("limit", type_=Integer))
        .subquery("page_rows")
    )
    teacher = aliased(EvalResult, name="teacher_result")
    columns: list[Any] = [
        *(rows.c[name] for name in _RESULT_COLUMNS),
        rows.c.kind,
        rows.c.teacher_job_id,
        rows.c.job_owner,
        *(getattr(teacher, m).label(f"teacher_{m}") for m in METRICS),
        *(getattr(teacher, c).label(f"teacher_{c}") for c in _TEACHER_COSTS),
    ]
    query = select(*columns).outerjoin(teacher, teacher.job_id == rows.c.teacher_job_id)
    if postgresql:
        finished = _baseline_lateral(rows, "", None)
        unfinished = _baseline_lateral(rows, "unfinished_", finished)
        query = (
            query.add_columns(*finished.c, *unfinished.c)
            .outerjoin(finished, true())
            .outerjoin(unfinished, true())
        )
    else:
        query = query.add_columns(rows.c.spec)
    return query, _ordered(rows, key, descending)


def _is_distilled(kind: str, teacher_job_id: str | None) -> bool:
    return kind == "distill" and teacher_job_id is not None


def _baselines(
    db_session: Session, keys: set[tuple[str, str, str]]
) -> dict[tuple[str, str, str], list[tuple[Any, str, Row]]]:
    """SQLite: candidate baselines per (detector, dataset, owner), most recent first
    (one query)."""
    if not keys:
        return {}
    query = (
        select(
            Job.detector,
            Job.dataset,
            Job.owner,
            Job.spec,
            Job.id.label("baseline_job_id"),
            *(getattr(EvalResult, m).label(f"baseline_{m}") for m in METRICS),
        )
        .join(EvalResult, EvalResult.job_id == Job.id)
        .where(
            Job.kind == "train",
            Job.state == "succeeded",
            or_(
                *(
                    and_(Job.detector == d, Job.dataset == s, Job.owner == o)
                    for d, s, o in sorted(keys)
                )
            ),
        )
        .order_by(
            Job.finished_at.desc().nulls_last(),
            Job.created_at.desc(),
            Job.seq.desc(),
        )
    )
    found: dict[tuple[str, str, str], list[tuple[Any, str, Row]]] = {}
    for r in db_session.execute(query).mappings():
        student = (r["spec"] or {}).get("student")
        found.setdefault((r["detector"], r["dataset"], r["owner"]), []).append(
            (student, r["baseline_job_id"], r)
        )
    return found


def _sqlite_baselines(db_session: Session, fetched: Sequence[Row]) -> list[Row | None]:
    """The baseline columns of each fetched row (None when it has none): its owner's."""
    distilled = [_is_distilled(r["kind"], r["teacher_job_id"]) for r in fetched]
    keys = {
        (r["detector"], r["dataset"], r["job_owner"])
        for r, d in zip(fetched, distilled, strict=True)
        if d
    }
    candidates = _baselines(db_session, keys)
    out: list[Row | None] = []
    for r, is_distilled in zip(fetched, distilled, strict=True):
        match = None
        if is_distilled:
            student = (r["spec"] or {}).get("student")
            key = (r["detector"], r["dataset"], r["job_owner"])
            for cand_student, _, cand in candidates.get(key, []):
                if cand_student == student:
                    match = cand
                    break
        out.append(match)
    return out


def _pg_baseline(r: Row) -> Row | None:
    if r["baseline_job_id"] is not None:
        return r
    if r["unfinished_baseline_job_id"] is not None:
        return {
            f"baseline_{name}": r[f"unfinished_baseline_{name}"] for name in ("job_id", *METRICS)
        }
    return None


def _delta(value: float | None, other: float | None) -> float | None:
    return None if value is None or other is None else value - other


def _ratio(value: float | None, other: float | None) -> float | None:
    return None if value is None or not other else value / other


def _where(cost: dict[str, Any] | None) -> tuple[str | None, int | None]:
    latency = (cost or {}).get("latency") or {}
    return latency.get("device"), latency.get("threads")


def _cost_fields(row: dict[str, Any], r: Row, distilled: bool) -> None:
    """The measurement's device and ONNX check, and for a distilled row the teacher's
    cost and the ratios to it. A speed-up is only given when both latencies were
    measured on the same device with the same thread count: otherwise it would
    compare machines, not models."""
    cost = row["cost"]
    row["device"], row["threads"] = _where(cost)
    onnx = (cost or {}).get("onnx") or {}
    row["onnx_max_abs_diff"] = onnx.get("max_abs_diff")
    for c in ("params", "flops", "latency_ms"):
        row[f"teacher_{c}"] = r[f"teacher_{c}"] if distilled else None
    row["params_ratio_vs_teacher"] = _ratio(row["params"], row["teacher_params"])
    row["flops_ratio_vs_teacher"] = _ratio(row["flops"], row["teacher_flops"])
    same_place = distilled and cost is not None and _where(cost) == _where(r["teacher_cost"])
    row["speedup_vs_teacher"] = (
        _ratio(row["teacher_latency_ms"], row["latency_ms"]) if same_place else None
    )


def _row(r: Row, baseline: Row | None) -> dict[str, Any]:
    row: dict[str, Any] = {name: r[name] for name in _RESULT_COLUMNS}
    row["kind"] = r["kind"]
    distilled = _is_distilled(r["kind"], r["teacher_job_id"])
    row["teacher_job_id"] = r["teacher_job_id"] if distilled else None
    row["baseline_job_id"] = baseline["baseline_job_id"] if baseline is not None else None
    for m in METRICS:
        row[f"teacher_{m}"] = r[f"teacher_{m}"] if distilled else None
        row[f"baseline_{m}"] = baseline[f"baseline_{m}"] if baseline is not None else None
    for m in DELTA_METRICS:
        row[f"delta_{m}_vs_baseline"] = _delta(row[m], row[f"baseline_{m}"])
        row[f"delta_{m}_vs_teacher"] = _delta(row[m], row[f"teacher_{m}"])
    _cost_fields(row, r, distilled)
    return row


def _page(
    fetched: Sequence[Row], baselines: Sequence[Row | None], limit: int, offset: int
) -> tuple[list[dict[str, Any]], int | None]:
    rows = [_row(r, b) for r, b in zip(fetched[:limit], baselines, strict=True)]
    return rows, (offset + limit if len(fetched) > limit else None)


def list_page(
    *,
    db_session: Session,
    filters: ResultFilters,
    sort: str = DEFAULT_SORT,
    limit: int,
    offset: int = 0,
) -> tuple[list[dict[str, Any]], int | None]:
    """One page of rows and the offset of the next page (None on the last one)."""
    dialect = db_session.get_bind().dialect.name
    query = page_statement(dialect, filters, sort)
    parameters = page_parameters(filters, limit=limit + 1, offset=offset)
    fetched = list(db_session.execute(query, parameters).mappings())
    if dialect == "postgresql":
        # The LATERAL joins only find baselines for distilled rows.
        baselines: Sequence[Row | None] = [_pg_baseline(r) for r in fetched[:limit]]
    else:
        baselines = _sqlite_baselines(db_session, fetched[:limit])
    return _page(fetched, baselines, limit, offset)


def page_body(
    *,
    db_session: Session,
    filters: ResultFilters,
    sort: str = DEFAULT_SORT,
    limit: int,
    offset: int = 0,
) -> bytes:
    """One page (:func:`list_page`) as the JSON of :class:`api.schemas.results.ResultPage`."""
    rows, next_offset = list_page(
        db_session=db_session, filters=filters, sort=sort, limit=limit, offset=offset
    )
    page = ResultPage.model_validate(
        {"items": rows, "limit": limit, "offset": offset, "next_offset": next_offset}
    )
    return page.model_dump_json().encode()


_VERSION = select(LeaderboardVersion.version).where(LeaderboardVersion.id == 1)


def leaderboard_version(db_session: Session) -> int:
    """The counter every change to the leaderboard's content raises (the triggers of
    migration 0004 on :data:`TRIGGER_JOB_COLUMNS`)."""
    version = db_session.scalar(_VERSION)
    if version is None:
        raise RuntimeError("leaderboard_version has no row: is the database migrated to head?")
    return int(version)


PageKey: TypeAlias = tuple[Any, ...]


def page_key(filters: ResultFilters, sort: str, limit: int, offset: int) -> PageKey:
    return (*astuple(filters), sort, limit, offset)


def page_etag(version: int, key: PageKey) -> str:
    """A strong ETag: the same version and query always give the same bytes."""
    digest = hashlib.blake2b(repr(key).encode(), digest_size=8).hexdigest()
    return f'"lb{version}-{digest}"'


class PageCache:
    """Serialised JSON pages of one version of the leaderboard, least recently used
    first out. A page read for version v may contain changes committed after v (the
    version is read first), never fewer, so serving it for v is never stale."""

    #: Pages larger than this are not kept (limit=500 with long metric dicts).
    MAX_BODY = 1 << 20

    def __init__(self, entries: int) -> None:
        self.entries = entries
        self._version: int | None = None
        self._pages: OrderedDict[PageKey, bytes] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, version: int, key: PageKey) -> bytes | None:
        with self._lock:
            if version != self._version:
                return None
            body = self._pages.get(key)
            if body is not None:
                self._pages.move_to_end(key)
            return body

    def clear(self) -> None:
        with self._lock:
            self._version = None
            self._pages.clear()

    def put(self, version: int, key: PageKey, body: bytes) -> None:
        if self.entries <= 0 or len(body) > self.MAX_BODY:
            return
        with self._lock:
            if self._version is None or version > self._version:
                self._version = version
                self._pages.clear()
            elif version < self._version:
                return  # a slower request of an older version
            self._pages[key] = body
            self._pages.move_to_end(key)
            while len(self._pages) > self.entries:
                self._pages.popitem(last=False)


def iter_rows(
    *, db_session: Session, filters: ResultFilters, sort: str = DEFAULT_SORT, cap: int = CSV_CAP
) -> Iterator[dict[str, Any]]:
    """Every row in order, up to ``cap``, fetched in chunks (one page query per chunk)."""
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
    """A cell: ISO timestamps written as the JSON rows write them (UTC as ``Z``),
    empty for missing values."""
    if value is None:
        return ""
    if isinstance(value, datetime):
        return value.isoformat().replace("+00:00", "Z")
    return value


#: Metrics where a lower value is better (CrowdHuman's log-average miss rate).
LOWER_IS_BETTER: frozenset[str] = frozenset({"mr"})
#: Points a front is computed from, at most (the most recent ones).
PARETO_CAP = 10_000


def pareto_front(points: Sequence[tuple[float, float]], *, lower_is_better: bool) -> list[int]:
    """Indexes of the points no other point dominates, cheapest first. A point
    ``(cost, score)`` is dominated by one that costs no more and scores at least as
    well, and is strictly better in one of the two; of equal points the first is kept."""
    sign = -1.0 if lower_is_better else 1.0
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -sign * points[i][1], i))
    front: list[int] = []
    best: float | None = None
    for i in order:
        score = sign * points[i][1]
        if best is None or score > best:
            front.append(i)
            best = score
    return front


def pareto(
    db_session: Session,
    *,
    detector: str,
    dataset: str,
    cost: str,
    metric: str,
    device: str | None = None,
    owner: str | None = None,
) -> dict[str, Any]:
    """Every result of ``detector`` on ``dataset`` with both ``cost`` and ``metric``
    (measured on ``device`` when given; of ``owner``'s jobs when given), and which of
    them form the accuracy/cost front."""
    cost_column, metric_column = getattr(EvalResult, cost), getattr(EvalResult, metric)
    query = (
        select(
            EvalResult.id,
            EvalResult.job_id,
            EvalResult.method,
            Job.kind,
            cost_column.label("cost"),
            metric_column.label("metric"),
            EvalResult.cost.label("measurement"),
        )
        .join(Job, Job.id == EvalResult.job_id)
        .where(
            EvalResult.detector == detector,
            EvalResult.dataset == dataset,
            cost_column.is_not(None),
            metric_column.is_not(None),
            Job.owner == owner if owner is not None else true(),
        )
        .order_by(EvalResult.id.desc())
        .limit(PARETO_CAP + 1)
    )
    fetched = list(db_session.execute(query).mappings())
    truncated = len(fetched) > PARETO_CAP
    fetched = fetched[:PARETO_CAP][::-1]
    counts: dict[str, int] = {}
    for r in fetched:
        where = _where(r["measurement"])[0]
        if where is not None:
            counts[where] = counts.get(where, 0) + 1
    if device is not None:
        fetched = [r for r in fetched if _where(r["measurement"])[0] == device]
    on_front = set(
        pareto_front(
            [(float(r["cost"]), float(r["metric"])) for r in fetched],
            lower_is_better=metric in LOWER_IS_BETTER,
        )
    )
    points = [
        {
            "result_id": r["id"],
            "job_id": r["job_id"],
            "kind": r["kind"],
            "method": r["method"],
            "cost": r["cost"],
            "metric": r["metric"],
            "device": _where(r["measurement"])[0],
            "on_front": i in on_front,
        }
        for i, r in enumerate(fetched)
    ]
    front = sorted((p for p in points if p["on_front"]), key=lambda p: (p["cost"], p["result_id"]))
    return {
        "detector": detector,
        "dataset": dataset,
        "cost": cost,
        "metric": metric,
        "lower_is_better": metric in LOWER_IS_BETTER,
        "points": points,
        "front": [p["job_id"] for p in front],
        "truncated": truncated,
        "device": device,
        "devices": dict(sorted(counts.items(), key=lambda item: (-item[1], item[0]))),
    }
