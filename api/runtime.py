"""What the async routes use, per event loop: the database and the broker publisher.

Pools and asyncio clients belong to the loop that made them. uvicorn runs one
loop per process; tests may run several TestClients of one app at once, each on
its own loop with its own lifespan. So the lifespan starts a :class:`Runtime` for
its loop, routes find the one of the loop they run on, and the lifespan closes
it at the end.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from fastapi import FastAPI, Request

from api.db.aio import AsyncDatabase, open_database
from pgd_service.queue import AsyncPublisher
from pgd_service.settings import Settings


class NotStarted(RuntimeError):
    """A route ran on an event loop where the app's lifespan has not started."""


@dataclass
class Runtime:
    db: AsyncDatabase
    publisher: AsyncPublisher


def _by_loop(app: FastAPI) -> dict[asyncio.AbstractEventLoop, Runtime]:
    registry: dict[asyncio.AbstractEventLoop, Runtime] | None = getattr(app.state, "runtimes", None)
    if registry is None:
        registry = app.state.runtimes = {}
    return registry


async def start(app: FastAPI, settings: Settings) -> Runtime:
    """Open the database pool (without waiting for the server) and the publisher."""
    runtime = Runtime(
        db=open_database(
            settings.database_url, sync_engine=app.state.engine, timeout_s=settings.db_timeout_s
        ),
        publisher=AsyncPublisher(settings),
    )
    await runtime.db.open()
    _by_loop(app)[asyncio.get_running_loop()] = runtime
    return runtime


async def stop(app: FastAPI) -> None:
    runtime = _by_loop(app).pop(asyncio.get_running_loop(), None)
    if runtime is not None:
        await runtime.publisher.close()
        await runtime.db.close()


def current(app: FastAPI) -> Runtime:
    """The Runtime of the running loop."""
    try:
        return _by_loop(app)[asyncio.get_running_loop()]
    except KeyError:
        raise NotStarted(
            "the app's lifespan has not run on this event loop "
            "(serve it with uvicorn, or use TestClient as a context manager)"
        ) from None


async def get_runtime(request: Request) -> Runtime:
    """FastAPI dependency (async: it must run on the loop it looks up)."""
    return current(request.app)
