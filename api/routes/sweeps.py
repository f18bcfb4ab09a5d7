"""``/sweeps``: a grid over hyper-parameters, seeds or methods queued as many jobs."""

from __future__ import annotations

from fastapi import APIRouter, Depends, HTTPException, Query, Response
from fastapi.responses import JSONResponse
from sqlalchemy.orm import Session

from api.auth import Caller, current_token
from api.deps import get_app_settings, get_db
from api.problems import field_errors, problem
from api.schemas.sweeps import SweepCreate, SweepCreated, SweepPage, SweepRead
from api.services import sweeps as service
from pgd_service.db.models import Sweep
from pgd_service.settings import Settings

router = APIRouter(prefix="/sweeps", tags=["sweeps"])


@router.post(
    "", status_code=202, response_model=SweepCreated, responses={422: {"description": "invalid"}}
)
def create_sweep(
    body: SweepCreate,
    response: Response,
    token: Caller = Depends(current_token),
    db_session: Session = Depends(get_db),
    settings: Settings = Depends(get_app_settings),
) -> SweepCreated | JSONResponse:
    """Queue one job per grid combination; every combination is validated before any is stored."""
    try:
        sweep, jobs = service.create(
            db_session=db_session,
            settings=settings,
            base=body.base,
            grid=body.grid,
            owner=token.owner,
            sees_all=token.is_admin,
        )
    except service.InvalidCombination as exc:
        errors = field_errors(exc.errors)
        return problem(422, str(exc), errors=errors, combination=exc.combination)
    except service.CombinationRejected as exc:
        return problem(422, str(exc), errors=exc.errors, combination=exc.combination)
    response.headers["Location"] = f"/sweeps/{sweep.id}"
    return SweepCreated(id=sweep.id, jobs=[job.id for job in jobs])


@router.get("", response_model=SweepPage)
def list_sweeps(
    limit: int = Query(20, ge=1, le=100),
    offset: int = Query(0, ge=0),
    token: Caller = Depends(current_token),
    db_session: Session = Depends(get_db),
) -> SweepPage:
    """The caller's sweeps, newest first, each with its job counts per state (a sweep's
    jobs: ``GET /jobs?sweep=<id>``)."""
    sweeps = service.list_page(db_session=db_session, token=token, limit=limit, offset=offset)
    items = [_read(db_session, sweep) for sweep in sweeps[:limit]]
    next_offset = offset + limit if len(sweeps) > limit else None
    return SweepPage(items=items, limit=limit, offset=offset, next_offset=next_offset)


@router.get("/{sweep_id}", response_model=SweepRead)
def get_sweep(
    sweep_id: str,
    token: Caller = Depends(current_token),
    db_session: Session = Depends(get_db),
) -> SweepRead:
    """Job counts per state and mean progress (404 if missing or another owner's)."""
    sweep = service.get(db_session=db_session, sweep_id=sweep_id, token=token)
    if sweep is None:
        raise HTTPException(404, f"sweep {sweep_id} not found")
    return _read(db_session, sweep)


def _read(db_session: Session, sweep: Sweep) -> SweepRead:
    states, total, progress = service.summary(db_session=db_session, sweep=sweep)
    return SweepRead(
        id=sweep.id,
        owner=sweep.owner,
        grid=sweep.grid,
        created_at=sweep.created_at,
        total=total,
        states=states,
        progress=progress,
    )
