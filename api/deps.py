"""Request-scoped dependencies: the settings and one database session per request."""

from __future__ import annotations

from collections.abc import Iterator

from fastapi import Request
from sqlalchemy.orm import Session

from pgd_service.settings import Settings


async def get_app_settings(request: Request) -> Settings:
    """The settings the app was created with (async: a sync dependency would cost a
    trip to the thread pool)."""
    return request.app.state.settings


def get_db(request: Request) -> Iterator[Session]:
    """One session per request, closed afterwards (uncommitted work is rolled back)."""
    with request.app.state.session_factory() as session:
        yield session
