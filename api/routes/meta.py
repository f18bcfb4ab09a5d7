"""Health, readiness and the catalogues (presets, datasets)."""

from __future__ import annotations

from fastapi import APIRouter, Depends, HTTPException
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from api.auth import current_token
from api.deps import get_app_settings, get_db
from api.schemas import DatasetRead, PresetRead
from api.settings import Settings
from pgd_core.datasets import list_datasets
from pgd_core.presets import PRESETS, list_presets

public = APIRouter(tags=["health"])
router = APIRouter(dependencies=[Depends(current_token)], tags=["catalogue"])


@public.get("/healthz")
def healthz() -> dict[str, str]:
    """The process is up (no dependency is checked)."""
    return {"status": "ok"}


@router.get("/readyz")
def readyz(db_session: Session = Depends(get_db)) -> dict[str, str]:
    """The database answers; 503 otherwise."""
    try:
        db_session.execute(text("SELECT 1"))
    except SQLAlchemyError:
        raise HTTPException(503, "database unreachable") from None
    return {"status": "ok"}


@router.get("/presets")
def presets() -> list[PresetRead]:
    """The paper's settings and the tiny CPU settings, each a complete job spec."""
    return [
        PresetRead(name=name, spec=PRESETS[name].model_dump(mode="json")) for name in list_presets()
    ]


@router.get("/datasets")
def datasets(settings: Settings = Depends(get_app_settings)) -> list[DatasetRead]:
    """The data sets registered under the server's data root."""
    if not settings.data_root.is_dir():
        return []
    return [
        DatasetRead(
            name=info.name,
            format=info.format,
            classes=list(info.classes),
            splits=sorted(info.splits),
        )
        for info in list_datasets(settings.data_root)
    ]
