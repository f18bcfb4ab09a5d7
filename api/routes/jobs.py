"""``/jobs``: submit, read, list and cancel runs. Queries live in api.services.jobs."""

from __future__ import annotations

from collections.abc import Mapping

from fastapi import APIRouter, Depends, Header, HTTPException, Query, Response
from fastapi.responses import JSONResponse
from pydantic_core import to_json
from sqlalchemy.orm import Session, sessionmaker

from api.auth import Caller, current_token
from api.deps import get_app_settings, get_db, get_session_factory
from api.problems import problem
from api.schemas.jobs import JobCreate, JobPage, JobRead
from api.services import jobs as service
from pgd_service.db.models import Job
from pgd_service.settings import Settings

router = APIRouter(prefix="/jobs", tags=["jobs"])
_JOB_READ_FIELDS = tuple(JobRead.model_fields)


def _found(job: Job | None, job_id: str) -> Job:
    if job is None:
        raise HTTPException(404, f"job {job_id} not found")
    return job


def rejected(exc: service.SpecRejected) -> JSONResponse:
    """The 422 problem of a spec naming something this server cannot use."""
    return problem(422, str(exc), errors=exc.errors)


@router.post(
    "", status_code=202, response_model=JobRead, responses={422: {"description": "invalid"}}
)
def create_job(
    spec: JobCreate,
    idempotency_key: str | None = Header(None, min_length=1, max_length=128),
    token: Caller = Depends(current_token),
    session_factory: sessionmaker[Session] = Depends(get_session_factory),
    settings: Settings = Depends(get_app_settings),
) -> Response:
    """Queue a run; the same Idempotency-Key and spec return the same job.

    The dataset must be registered on the server with both splits; ``teacher_ref``
    and ``checkpoint_ref`` must name a succeeded train or distill job of the same
    detector and model, or a registered checkpoint. The job is stored, then sent
    to the broker (a broker that is down leaves it queued for the re-sender)."""
    # Its own session rather than the get_db dependency: a sync generator dependency
    # costs two more trips to the thread pool.
    with session_factory() as db_session:
        try:
            job, created = service.create(
                db_session=db_session,
                settings=settings,
                spec=spec,
                owner=token.owner,
                idempotency_key=idempotency_key,
                sees_all=token.is_admin,
            )
        except service.IdempotencyConflict as exc:
            raise HTTPException(409, str(exc)) from None
        except service.SpecRejected as exc:
            return rejected(exc)
    # A new job is its own column values: serialised once, as pydantic would write
    # JobRead, without validating it twice on the way as response_model would.
    row = job if isinstance(job, Mapping) else {n: getattr(job, n) for n in _JOB_READ_FIELDS}
    return Response(
        to_json({name: row[name] for name in _JOB_READ_FIELDS}),
        status_code=202 if created else 200,
        headers={"Location": f"/jobs/{row['id']}"},
        media_type="application/json",
    )


@router.get("", response_model=JobPage)
def list_jobs(
    filters: service.JobFilters = Depends(),
    limit: int = Query(20, ge=1, le=200),
    cursor: str | None = Query(None, max_length=64),
    token: Caller = Depends(current_token),
    db_session: Session = Depends(get_db),
) -> JobPage:
    """Jobs visible to the caller, newest first, with filters and cursor pagination."""
    try:
        rows, next_cursor = service.list_page(
            db_session=db_session, token=token, filters=filters, limit=limit, cursor=cursor
        )
    except service.InvalidCursor as exc:
        raise HTTPException(422, str(exc)) from None
    return JobPage(items=[JobRead.model_validate(row) for row in rows], next_cursor=next_cursor)


@router.get("/{job_id}", response_model=JobRead)
def get_job(
    job_id: str,
    token: Caller = Depends(current_token),
    db_session: Session = Depends(get_db),
) -> Job:
    """One job (404 if it does not exist or belongs to another owner)."""
    return _found(service.get(db_session=db_session, job_id=job_id, token=token), job_id)


@router.post("/{job_id}/cancel", status_code=202, response_model=JobRead)
def cancel_job(
    job_id: str,
    token: Caller = Depends(current_token),
    db_session: Session = Depends(get_db),
    settings: Settings = Depends(get_app_settings),
) -> Job:
    """Cancel a waiting or queued job at once, or ask a running one to stop; 409 once it
    has finished."""
    job = _found(service.get(db_session=db_session, job_id=job_id, token=token), job_id)
    if not service.cancel(db_session=db_session, settings=settings, job=job):
        raise HTTPException(409, f"job {job_id} is already {job.state}")
    return job
