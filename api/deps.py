"""Request-scoped dependencies: how routes reach what the app holds (``app.state``).

Routes take these with ``Depends``; nothing else in ``api/routes`` reads
``app.state``."""

from __future__ import annotations

from collections.abc import Iterator

from fastapi import Request
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from api.observability import RequestMetrics
from api.services.results import PageCache
from pgd_service.settings import Settings


async def get_app_settings(request: Request) -> Settings:
    """The settings the app was created with (async: a sync dependency would cost a
    trip to the thread pool)."""
    return request.app.state.settings


def get_db(request: Request) -> Iterator[Session]:
    """One session per request, closed afterwards (uncommitted work is rolled back)."""
    with request.app.state.session_factory() as session:
        yield session


async def get_session_factory(request: Request) -> sessionmaker[Session]:
    """The app's session factory, for work that outlives the request's session (a
    streamed body)."""
    return request.app.state.session_factory


async def get_engine(request: Request) -> Engine:
    return request.app.state.engine


async def get_results_cache(request: Request) -> PageCache:
    """The process's cache of serialised leaderboard pages."""
    return request.app.state.results_cache


async def get_request_metrics(request: Request) -> RequestMetrics | None:
    """This process's request metrics (None when the app was built without them)."""
    return getattr(request.app.state, "request_metrics", None)
