"""Health, readiness and the catalogues (presets, datasets)."""

from __future__ import annotations

import logging

import anyio
from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse
from kombu import Connection
from sqlalchemy import text

from api.auth import current_token
from api.db.aio import AsyncDatabase
from api.deps import get_app_settings
from api.problems import problem
from api.runtime import Runtime, get_runtime
from api.schemas import DatasetRead, PresetRead
from pgd_core.data.manifest import list_datasets
from pgd_core.presets import PRESETS, list_presets
from pgd_service.settings import Settings

log = logging.getLogger("pgd.readyz")
_PING = text("SELECT 1")
#: How long readiness waits for a database connection (a probe must answer fast).
READY_DB_TIMEOUT_S = 2.0

public = APIRouter(tags=["health"])
router = APIRouter(dependencies=[Depends(current_token)], tags=["catalogue"])


@public.get("/healthz")
def healthz() -> dict[str, str]:
    """The process is up (no dependency is checked)."""
    return {"status": "ok"}


async def _database_ok(db: AsyncDatabase, timeout_s: float) -> bool:
    try:
        with anyio.fail_after(timeout_s):
            await db.fetch_one(_PING)
    except Exception as exc:  # noqa: BLE001 - any failure means "not ready"
        log.warning("readiness: database unreachable: %s", exc)
        return False
    return True


def _broker_ok(settings: Settings) -> bool:
    """One connection attempt, bounded by ``broker_timeout_s`` (no server for ``sqla+``)."""
    try:
        with Connection(settings.broker_url, connect_timeout=settings.broker_timeout_s) as conn:
            conn.ensure_connection(
                max_retries=1,
                interval_start=0,
                interval_step=0,
                timeout=settings.broker_timeout_s,
            )
    except Exception as exc:  # noqa: BLE001 - any failure means "not ready"
        log.warning("readiness: broker unreachable: %s", exc)
        return False
    return True


@router.get("/readyz", response_model=dict[str, str], responses={503: {"description": "down"}})
async def readyz(
    runtime: Runtime = Depends(get_runtime), settings: Settings = Depends(get_app_settings)
) -> dict[str, str] | JSONResponse:
    """The database and the broker answer; 503 naming those that do not."""
    database = await _database_ok(runtime.db, READY_DB_TIMEOUT_S)
    broker = await anyio.to_thread.run_sync(_broker_ok, settings)
    checks = {
        "database": "ok" if database else "unreachable",
        "broker": "ok" if broker else "unreachable",
    }
    down = [name for name, status in checks.items() if status != "ok"]
    if down:
        return problem(
            503,
            f"not ready: {' and '.join(down)} unreachable",
            headers={"Retry-After": "5"},
            checks=checks,
        )
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
