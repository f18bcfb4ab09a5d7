"""``/results``: the leaderboard, as JSON pages or a streamed CSV export.

Queries live in api.services.results. A token sees the results of its owner's
jobs (an admin's every result), as it sees the jobs themselves; with
``PGD_RESULTS_VISIBILITY=everyone`` every token sees every result (a leaderboard
shared by a team). Pagination is by offset
(``limit`` + ``offset``): rows are ordered by a metric, not by insertion, so a
keyset cursor would need the metric value and id; offset is simpler and a row
evaluated during a walk may shift one page boundary.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import Response, StreamingResponse
from pydantic import BaseModel, Field, field_validator, model_validator
from sqlalchemy.orm import Session, sessionmaker

from api.auth import Caller, current_token, visible_owner
from api.deps import get_app_settings, get_results_cache, get_session_factory
from api.schemas.results import GroupPage, GroupRow, Pareto, ResultPage, ResultRow
from api.services import groups as group_service
from api.services import results as service
from pgd_service.db.models import COSTS
from pgd_service.settings import Settings

router = APIRouter(prefix="/results", tags=["results"])

CSV_COLUMNS: tuple[str, ...] = tuple(
    name for name in ResultRow.model_fields if name not in ("metrics", "cost")
)
GROUP_CSV_COLUMNS: tuple[str, ...] = tuple(GroupRow.model_fields)


def _wants_csv(request: Request, fmt: str | None) -> bool:
    if fmt is not None:
        return fmt == "csv"
    accept = request.headers.get("accept", "")
    return any(part.split(";")[0].strip() == "text/csv" for part in accept.split(","))


def _group_cell(value: object) -> object:
    if isinstance(value, list):
        return " ".join(str(v) for v in value)
    return service.csv_value(value)


def _group_csv(rows: list[dict]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(GROUP_CSV_COLUMNS)
    for row in rows:
        writer.writerow([_group_cell(row[name]) for name in GROUP_CSV_COLUMNS])
    return buffer.getvalue()


def _csv_lines(
    session_factory: sessionmaker[Session], filters: service.ResultFilters, sort: str
) -> Iterator[str]:
    buffer = io.StringIO()
    writer = csv.writer(buffer)

    def flush() -> str:
        text = buffer.getvalue()
        buffer.seek(0)
        buffer.truncate()
        return text

    writer.writerow(CSV_COLUMNS)
    yield flush()
    # Its own session: the request's one may be closed before the body is streamed.
    with session_factory() as db_session:
        for count, row in enumerate(
            service.iter_rows(db_session=db_session, filters=filters, sort=sort), 1
        ):
            writer.writerow([service.csv_value(row[name]) for name in CSV_COLUMNS])
            if count % 500 == 0:
                yield flush()
    yield flush()


def _not_modified(request: Request, etag: str) -> bool:
    header = request.headers.get("if-none-match")
    if not header:
        return False
    tags = {tag.strip().removeprefix("W/") for tag in header.split(",")}
    return etag in tags or "*" in tags


class ResultQuery(BaseModel):
    """The query parameters of ``GET /results`` (one model: FastAPI validates it in
    one call, where eight separate parameters cost a third of a cached page)."""

    dataset: str | None = None
    detector: str | None = None
    method: str | None = None
    kind: str | None = None
    study: str | None = Field(None, max_length=36, description="only the jobs of this study")
    sweep: str | None = Field(None, max_length=36, description="only the jobs of this sweep")
    job: str | None = Field(None, max_length=36, description="only this job's result")
    group_by: Literal["config"] | None = Field(
        None,
        description="config: one row per configuration, its seeds summarised "
        "(mean, sd, 95 % interval, paired delta against the same-seed no-KD control)",
    )
    sort: str = Field(
        service.DEFAULT_SORT,
        max_length=16,
        description=f"one of {', '.join(service.SORT_KEYS)}; a leading - sorts descending",
    )
    limit: int = Field(50, ge=1, le=500)
    offset: int = Field(0, ge=0, le=1_000_000_000)
    format: Literal["json", "csv"] | None = Field(
        None, description="csv exports every matching row (up to 100000), ignoring limit/offset"
    )

    @field_validator("sort")
    @classmethod
    def _known_sort(cls, sort: str) -> str:
        try:
            service.parse_sort(sort)
        except service.InvalidSort as exc:
            # "sort: ..." names the field (api.problems.field_errors).
            raise ValueError(str(exc).removeprefix("sort: ")) from None
        return sort

    @model_validator(mode="after")
    def _groups_sort_by_metrics(self) -> ResultQuery:
        key, _ = service.parse_sort(self.sort)
        if self.group_by == "config" and key in COSTS:
            raise ValueError(f"sort: group_by=config sorts by a metric or created_at, not {key}")
        return self

    def filters(self, owner: str | None) -> service.ResultFilters:
        return service.ResultFilters(
            dataset=self.dataset,
            detector=self.detector,
            method=self.method,
            kind=self.kind,
            study=self.study,
            sweep=self.sweep,
            job=self.job,
            owner=owner,
        )


@router.get("/pareto", response_model=Pareto)
def pareto(
    detector: Annotated[str, Query(max_length=32, description="e.g. fcos")],
    dataset: Annotated[str, Query(max_length=128, description="e.g. coco")],
    cost: Annotated[
        Literal["latency_ms", "flops", "params", "peak_memory_mb"],
        Query(description="the cost axis"),
    ] = "latency_ms",
    metric: Annotated[
        Literal["ap", "ap50", "ap75", "aps", "apm", "apl", "mr", "ji"],
        Query(description="the accuracy axis (mr: lower is better)"),
    ] = "ap",
    device: Annotated[
        str | None,
        Query(
            max_length=200, description="only results measured there, e.g. 'cuda:0 (NVIDIA H200)'"
        ),
    ] = None,
    token: Caller = Depends(current_token),
    session_factory: sessionmaker[Session] = Depends(get_session_factory),
    settings: Settings = Depends(get_app_settings),
) -> Pareto:
    """The accuracy/cost Pareto front of a detector on a dataset: every measured
    result as a point, and the ones no other result beats on both axes."""
    with session_factory() as db_session:
        return Pareto.model_validate(
            service.pareto(
                db_session,
                detector=detector,
                dataset=dataset,
                cost=cost,
                metric=metric,
                device=device,
                owner=visible_owner(token, settings),
            )
        )


@router.get(
    "",
    response_model=ResultPage | GroupPage,
    responses={
        200: {
            "content": {"text/csv": {}},
            "description": "JSON page (GroupPage with group_by=config) or CSV export",
        },
        304: {"description": "If-None-Match holds the page's current ETag"},
    },
)
def list_results(
    request: Request,
    query: Annotated[ResultQuery, Query()],
    token: Caller = Depends(current_token),
    session_factory: sessionmaker[Session] = Depends(get_session_factory),
    cache: service.PageCache = Depends(get_results_cache),
    settings: Settings = Depends(get_app_settings),
) -> Response:
    """Evaluation results with filters and sorting; distilled rows carry teacher/baseline deltas.

    JSON pages carry an ETag that changes whenever any result (or a job with a
    result) changes; a request with that ETag in If-None-Match gets 304 while the
    leaderboard has not changed. Pages are cached per process by that version."""
    # The session is opened here rather than by the get_db dependency: a sync
    # generator dependency costs two trips to the thread pool on the hottest route.
    owner = visible_owner(token, settings)
    with session_factory() as db_session:
        if query.group_by == "config":
            return _grouped(db_session, query, owner, _wants_csv(request, query.format))
        return _page(request, query, owner, db_session, session_factory, cache)


def _page(
    request: Request,
    query: ResultQuery,
    owner: str | None,
    db_session: Session,
    session_factory: sessionmaker[Session],
    cache: service.PageCache,
) -> Response:
    filters, sort, limit, offset = query.filters(owner), query.sort, query.limit, query.offset
    if _wants_csv(request, query.format):
        return StreamingResponse(
            _csv_lines(session_factory, filters, sort),
            media_type="text/csv; charset=utf-8",
            headers={"Content-Disposition": 'attachment; filename="results.csv"'},
        )
    # Two single reads, each its own statement: autocommit spares the BEGIN and the
    # ROLLBACK around them (two round trips of four on a cached page).
    db_session.connection(execution_options={"isolation_level": "AUTOCOMMIT"})
    # The version first: the page read after it holds every change up to it.
    version = service.leaderboard_version(db_session)
    key = service.page_key(filters, sort, limit, offset)
    etag = service.page_etag(version, key)
    headers = {"ETag": etag, "Cache-Control": "private, no-cache"}
    if _not_modified(request, etag):
        return Response(status_code=304, headers=headers)
    # One job's row (a job page's) is a primary-key read: caching it would only
    # push the leaderboard's pages out of the cache.
    cached = filters.job is None
    body = cache.get(version, key) if cached else None
    if body is None:
        body = service.page_body(
            db_session=db_session, filters=filters, sort=sort, limit=limit, offset=offset
        )
        if cached:
            cache.put(version, key, body)
    return Response(body, media_type="application/json", headers=headers)


def _grouped(db_session: Session, query: ResultQuery, owner: str | None, as_csv: bool) -> Response:
    """``group_by=config``: every matching group computed at once (groups are few: one
    per configuration, not per run), then paged or written as CSV."""
    rows = group_service.grouped_rows(
        db_session=db_session, filters=query.filters(owner), sort=query.sort
    )
    if as_csv:
        return Response(
            _group_csv(rows),
            media_type="text/csv; charset=utf-8",
            headers={"Content-Disposition": 'attachment; filename="results-grouped.csv"'},
        )
    end = query.offset + query.limit
    page = GroupPage.model_validate(
        {
            "items": rows[query.offset : end],
            "limit": query.limit,
            "offset": query.offset,
            "next_offset": end if len(rows) > end else None,
        }
    )
    return Response(page.model_dump_json(), media_type="application/json")
