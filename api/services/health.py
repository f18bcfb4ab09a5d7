"""Readiness: whether the database and the broker answer, each within its bound."""

from __future__ import annotations

import logging

import anyio
from sqlalchemy import Engine, text

from pgd_service.queue import broker_ok
from pgd_service.settings import Settings

log = logging.getLogger("pgd.readyz")
_PING = text("SELECT 1")
#: How long readiness waits for a database connection (a probe must answer fast).
READY_DB_TIMEOUT_S = 2.0


def _ping(engine: Engine) -> None:
    with engine.connect() as conn:
        conn.execute(_PING)


async def database_ok(engine: Engine, timeout_s: float = READY_DB_TIMEOUT_S) -> bool:
    """``SELECT 1`` on a pooled connection within ``timeout_s`` (a hung server is
    abandoned, not waited for)."""
    try:
        with anyio.fail_after(timeout_s):
            await anyio.to_thread.run_sync(_ping, engine, abandon_on_cancel=True)
    except Exception as exc:  # noqa: BLE001 - any failure means "not ready"
        log.warning("readiness: database unreachable: %s", exc)
        return False
    return True


async def readiness(engine: Engine, settings: Settings) -> dict[str, str]:
    """``{"database": "ok" | "unreachable", "broker": ...}``."""
    database = await database_ok(engine)
    broker = await anyio.to_thread.run_sync(broker_ok, settings)
    return {
        "database": "ok" if database else "unreachable",
        "broker": "ok" if broker else "unreachable",
    }
