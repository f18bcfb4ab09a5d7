"""The FastAPI application: ``create_app`` wires settings, database, errors and routes."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from api import body_limit, ui
from api import observability as request_metrics
from api.problems import install_problem_handlers
from api.routes import job_data, jobs, meta, observability, results, studies, sweeps, tokens
from api.services.results import PageCache
from pgd_service.db.session import make_engine, make_session_factory
from pgd_service.maintenance import MaintenanceThread
from pgd_service.settings import Settings, get_settings, redacted

#: What PostgreSQL's pg_stat_activity shows for the API's connections.
APPLICATION_NAME = "pgd-api"


def create_app(settings: Settings | None = None) -> FastAPI:
    """A new app; building the engine opens no connection, so import stays DB-free."""
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # The re-sender and the reaper; safe in every API replica (guarded UPDATEs).
        logging.getLogger("pgd.api").warning(
            "pgd API: database %s, broker %s, work root %s",
            redacted(settings.database_url),
            redacted(settings.broker_url),
            settings.work_root,
        )
        thread = None
        if settings.run_maintenance:
            thread = MaintenanceThread(app.state.session_factory, settings)
            thread.start()
        try:
            yield
        finally:
            if thread is not None:
                thread.stop()

    app = FastAPI(
        title="pgd",
        summary="Prediction-guided distillation runs as a service",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.engine = make_engine(
        settings.database_url, application_name=APPLICATION_NAME, timeout_s=settings.db_timeout_s
    )
    app.state.session_factory = make_session_factory(app.state.engine)
    app.state.results_cache = PageCache(settings.results_cache_entries)
    install_problem_handlers(app)
    app.include_router(meta.public)
    app.include_router(meta.router)
    app.include_router(jobs.router)
    app.include_router(job_data.router)
    app.include_router(results.router)
    app.include_router(sweeps.router)
    app.include_router(studies.router)
    app.include_router(tokens.router)
    app.include_router(observability.router)
    ui.install(app)
    body_limit.install(app, settings.max_body_bytes)
    request_metrics.install(app)
    return app


app = create_app()
