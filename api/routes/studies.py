"""``/studies``: a teacher and every (method, seed) student, with a grouped table."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Depends, HTTPException, Query, Response
from fastapi.responses import JSONResponse
from sqlalchemy.orm import Session

from api.auth import Caller, current_token
from api.deps import get_app_settings, get_db
from api.problems import problem
from api.schemas.studies import StudyCreate, StudyCreated, StudyPage, StudyRead, StudySummary
from api.services import studies as service
from api.services.jobs import SpecRejected
from pgd_service.lifecycle import TERMINAL
from pgd_service.settings import Settings

router = APIRouter(prefix="/studies", tags=["studies"])


@router.post(
    "", status_code=202, response_model=StudyCreated, responses={422: {"description": "invalid"}}
)
def create_study(
    body: StudyCreate,
    response: Response,
    token: Caller = Depends(current_token),
    db_session: Session = Depends(get_db),
    settings: Settings = Depends(get_app_settings),
) -> StudyCreated | JSONResponse:
    """Queue the teacher and the no-KD controls; every other student waits for the
    teacher. Every job is validated before any is stored."""
    try:
        study, jobs = service.create(
            db_session=db_session,
            settings=settings,
            owner=token.owner,
            name=body.name,
            teacher=body.teacher,
            teacher_ref=body.teacher_ref,
            template=body.student,
            methods=list(body.methods),
            seeds=list(body.seeds),
            request=body.model_dump(mode="json"),
            sees_all=token.is_admin,
        )
    except (service.StudyRejected, SpecRejected) as exc:
        return problem(422, str(exc), errors=exc.errors)
    response.headers["Location"] = f"/studies/{study.id}"
    return StudyCreated(
        id=study.id, teacher_job_id=study.teacher_job_id, jobs=[job.id for job in jobs]
    )


def _found(study_id: str, token: Caller, db_session: Session):  # noqa: ANN202
    study = service.get(db_session=db_session, study_id=study_id, token=token)
    if study is None:
        raise HTTPException(404, f"study {study_id} not found")
    return study


@router.get("", response_model=StudyPage)
def list_studies(
    limit: int = Query(20, ge=1, le=100),
    offset: int = Query(0, ge=0),
    token: Caller = Depends(current_token),
    db_session: Session = Depends(get_db),
) -> StudyPage:
    """The caller's studies, newest first, with their progress."""
    studies = service.list_page(db_session=db_session, token=token, limit=limit, offset=offset)
    items = []
    for study in studies[:limit]:
        states, total, progress = service.summary(db_session=db_session, study=study)
        items.append(
            StudySummary(
                id=study.id,
                name=study.name,
                owner=study.owner,
                created_at=study.created_at,
                teacher_job_id=study.teacher_job_id,
                methods=study.request.get("methods", []),
                seeds=study.request.get("seeds", []),
                total=total,
                states=states,
                progress=progress,
            )
        )
    next_offset = offset + limit if len(studies) > limit else None
    return StudyPage(items=items, limit=limit, offset=offset, next_offset=next_offset)


@router.get("/{study_id}", response_model=StudyRead)
def get_study(
    study_id: str,
    token: Caller = Depends(current_token),
    db_session: Session = Depends(get_db),
) -> StudyRead:
    """Progress, every job, and the results grouped over seeds (404 if missing or
    another owner's)."""
    study = _found(study_id, token, db_session)
    states, total, progress = service.summary(db_session=db_session, study=study)
    jobs = service.jobs_of(db_session, study)
    return StudyRead.model_validate(
        {
            "id": study.id,
            "name": study.name,
            "owner": study.owner,
            "created_at": study.created_at,
            "teacher_job_id": study.teacher_job_id,
            "methods": study.request.get("methods", []),
            "seeds": study.request.get("seeds", []),
            "request": study.request,
            "total": total,
            "states": states,
            "progress": progress,
            "done": all(job.state in TERMINAL for job in jobs),
            "jobs": [
                {
                    "id": job.id,
                    "role": "teacher" if job.id == study.teacher_job_id else "student",
                    "kind": job.kind,
                    "method": job.method,
                    "seed": job.seed,
                    "state": job.state,
                    "progress": job.progress,
                    "reason": job.reason,
                    "message": job.message,
                }
                for job in jobs
            ],
            "table": service.table(db_session, study),
        }
    )


@router.get(
    "/{study_id}/chart.png",
    response_class=Response,
    responses={200: {"content": {"image/png": {}}, "description": "bar chart"}},
)
def study_chart(
    study_id: str,
    metric: Literal["ap", "ap50", "mr", "ji"] = Query("ap"),
    token: Caller = Depends(current_token),
    db_session: Session = Depends(get_db),
) -> Response:
    """Mean per method with one-sd error bars and the teacher as a line; the legend's
    numbers are in the PNG's ``Description`` text chunk too."""
    study = _found(study_id, token, db_session)
    rows = service.table(db_session, study)
    title = f"study {study.name or study.id[:8]}: {metric.upper()} over seeds"
    return Response(service.chart_png(rows, metric, title), media_type="image/png")
