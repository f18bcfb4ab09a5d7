"""``/jobs/{id}``: retry, metrics, artifacts and live events (logic: api.services.job_data)."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Header, HTTPException, Query
from fastapi.responses import FileResponse, PlainTextResponse, StreamingResponse
from sqlalchemy.orm import Session, sessionmaker

from api.auth import Caller, current_token
from api.deps import get_app_settings, get_db, get_session_factory
from api.schemas.job_data import ArtifactRead, MetricSeries
from api.schemas.jobs import JobRead
from api.services import job_data as service
from api.services import jobs as job_service
from pgd_service.db.models import Artifact, Job
from pgd_service.lifecycle import TeacherNotReady
from pgd_service.settings import Settings

router = APIRouter(prefix="/jobs", tags=["jobs"])


def _visible_job(job_id: str, token: Caller, db_session: Session) -> Job:
    """The job if the caller owns it or is an admin; 404 otherwise (as ``GET /jobs/{id}``)."""
    job = job_service.get(db_session=db_session, job_id=job_id, token=token)
    if job is None:
        raise HTTPException(404, f"job {job_id} not found")
    return job


@router.post("/{job_id}/retry", status_code=202, response_model=JobRead)
def retry_job(
    job_id: str,
    token: Caller = Depends(current_token),
    db_session: Session = Depends(get_db),
    settings: Settings = Depends(get_app_settings),
) -> Job:
    """Queue a failed or cancelled job again with its attempt raised (it resumes from its
    last checkpoint) and send it to the broker; 409 in any other state."""
    job = _visible_job(job_id, token, db_session)
    try:
        retried = service.retry(db_session=db_session, settings=settings, job=job)
    except TeacherNotReady as exc:
        raise HTTPException(409, str(exc)) from None
    if not retried:
        raise HTTPException(
            409, f"job {job_id} is {job.state}; only failed or cancelled jobs can be retried"
        )
    return job


@router.get("/{job_id}/metrics", response_model=MetricSeries)
def job_metrics(
    job_id: str,
    name: list[str] | None = Query(None, max_length=64, description="only these metrics"),
    token: Caller = Depends(current_token),
    db_session: Session = Depends(get_db),
) -> MetricSeries:
    """The job's metric points as series by name, each ordered by step."""
    job = _visible_job(job_id, token, db_session)
    series = service.metric_series(db_session=db_session, job_id=job.id, names=name)
    return MetricSeries.model_validate({"series": series})


@router.get("/{job_id}/artifacts", response_model=list[ArtifactRead])
def job_artifacts(
    job_id: str,
    token: Caller = Depends(current_token),
    db_session: Session = Depends(get_db),
) -> list[Artifact]:
    """The files the job produced (checkpoints, plots, logs), by name."""
    job = _visible_job(job_id, token, db_session)
    return service.list_artifacts(db_session=db_session, job_id=job.id)


@router.get(
    # :path, since plot artifacts are named "plots/<file>".
    "/{job_id}/artifacts/{name:path}",
    response_class=FileResponse,
    responses={200: {"content": {"application/octet-stream": {}}}},
)
def download_artifact(
    job_id: str,
    name: str,
    token: Caller = Depends(current_token),
    db_session: Session = Depends(get_db),
    settings: Settings = Depends(get_app_settings),
) -> FileResponse:
    """One artifact's file; 404 if unknown or missing, 403 if stored outside the work root."""
    job = _visible_job(job_id, token, db_session)
    try:
        path = service.artifact_file(
            db_session=db_session, job_id=job.id, name=name, work_root=settings.work_root
        )
    except service.ArtifactOutsideWorkRoot as exc:
        raise HTTPException(403, str(exc)) from None
    if path is None:
        raise HTTPException(404, f"artifact {name} of job {job_id} not found")
    return FileResponse(path, filename=path.name)


@router.get(
    "/{job_id}/logs",
    response_class=PlainTextResponse,
    responses={200: {"content": {"text/plain": {}}}},
)
def job_logs(
    job_id: str,
    tail: int = Query(200, ge=1, le=10_000, description="the last this many lines"),
    token: Caller = Depends(current_token),
    db_session: Session = Depends(get_db),
    settings: Settings = Depends(get_app_settings),
) -> PlainTextResponse:
    """The last ``tail`` lines of the job's log; 404 while it has none, 403 if the log
    is stored outside the work root."""
    job = _visible_job(job_id, token, db_session)
    try:
        path = service.log_file(db_session=db_session, job_id=job.id, work_root=settings.work_root)
    except service.ArtifactOutsideWorkRoot as exc:
        raise HTTPException(403, str(exc)) from None
    if path is None:
        raise HTTPException(404, f"job {job_id} has no log yet")
    return PlainTextResponse(service.tail_lines(path, tail), media_type="text/plain")


@router.get(
    "/{job_id}/events",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/event-stream": {}}}},
)
def job_events(
    job_id: str,
    last_event_id: str | None = Header(None, max_length=128),
    token: Caller = Depends(current_token),
    settings: Settings = Depends(get_app_settings),
    session_factory: sessionmaker[Session] = Depends(get_session_factory),
) -> StreamingResponse:
    """Server-sent events: ``state`` (state, progress, attempt) and ``metric`` (step, name,
    value), until the job has finished. A new stream starts with the current state
    (past metrics are at ``/jobs/{id}/metrics``); a reconnecting client sending
    ``Last-Event-ID`` gets exactly the events it missed: metric points stored after
    that event, then the state if it changed since."""
    # Its own short session, closed before the stream starts: a request-scoped one
    # (get_db) would hold a pooled connection for as long as the stream is open, and
    # a few dozen open streams would starve every other request. Each poll of the
    # stream takes a connection for one read and gives it back.
    with session_factory() as db_session:
        job = _visible_job(job_id, token, db_session)
    stream = service.event_stream(
        session_factory=session_factory,
        job_id=job.id,
        poll_s=settings.events_poll_s,
        keepalive_s=settings.events_keepalive_s,
        max_s=settings.events_max_s,
        last_event_id=last_event_id,
    )
    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    return StreamingResponse(stream, media_type="text/event-stream", headers=headers)
