"""Health, readiness and the catalogues (presets, datasets)."""

from __future__ import annotations

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse
from sqlalchemy import Engine

from api.auth import Caller, current_token, visible_owner
from api.deps import get_app_settings, get_engine
from api.problems import problem
from api.schemas.catalogue import DatasetRead, PresetRead
from api.services import health
from api.services.jobs import dataset_info
from pgd_core.data.manifest import dataset_names
from pgd_core.presets import PRESETS, list_presets
from pgd_service.settings import Settings

public = APIRouter(tags=["health"])
router = APIRouter(dependencies=[Depends(current_token)], tags=["catalogue"])


@public.get("/healthz")
def healthz() -> dict[str, str]:
    """The process is up (no dependency is checked)."""
    return {"status": "ok"}


# Public, as /healthz: load balancers and Kubernetes probes carry no token.
@public.get("/readyz", response_model=dict[str, str], responses={503: {"description": "down"}})
async def readyz(
    engine: Engine = Depends(get_engine), settings: Settings = Depends(get_app_settings)
) -> dict[str, str] | JSONResponse:
    """The database and the broker answer; 503 naming those that do not."""
    checks = await health.readiness(engine, settings)
    down = [name for name, status in checks.items() if status != "ok"]
    if down:
        return problem(
            503,
            f"not ready: {' and '.join(down)} unreachable",
            headers={"Retry-After": "5"},
            checks=checks,
        )
    return {"status": "ok"}


@public.get("/me", response_model=dict[str, str | bool])
def me(
    token: Caller = Depends(current_token), settings: Settings = Depends(get_app_settings)
) -> dict[str, str | bool]:
    """Who the token belongs to (the dashboard's sign-in checks a token with it), and
    whose results it sees on /results: ``"own"`` (its owner's) or ``"all"``."""
    results = "own" if visible_owner(token, settings) is not None else "all"
    return {"owner": token.owner, "is_admin": token.is_admin, "results": results}


@router.get("/presets")
def presets() -> list[PresetRead]:
    """The paper's settings and the tiny CPU settings, each a complete job spec."""
    return [
        PresetRead(name=name, spec=PRESETS[name].model_dump(mode="json")) for name in list_presets()
    ]


@router.get("/datasets")
def datasets(settings: Settings = Depends(get_app_settings)) -> list[DatasetRead]:
    """The data sets registered under the server's data root. One whose manifest or
    files are broken is listed with ``usable`` false and why (the details, which
    name server paths, are in the server log), not allowed to hide the others."""
    if not settings.data_root.is_dir():
        return []
    listed = []
    for name in dataset_names(settings.data_root):
        info = dataset_info(settings.data_root, name)
        if isinstance(info, str):
            listed.append(
                DatasetRead(name=name, format="", classes=[], splits=[], usable=False, problem=info)
            )
            continue
        listed.append(
            DatasetRead(
                name=info.name,
                format=info.format,
                classes=list(info.classes),
                splits=sorted(info.splits),
            )
        )
    return listed
