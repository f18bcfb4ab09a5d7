"""``GET /metrics``: Prometheus text exposition.

No token is required, on purpose: Prometheus scrapers are usually configured
without per-service bearer secrets, and this endpoint shows only aggregates
(job counts per state, request counts and durations per route template); no
owner, job id, spec or token ever appears in a label. Deployments that must
hide even aggregates restrict ``/metrics`` at the ingress.
"""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.responses import PlainTextResponse
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from api.db.models import JOB_STATES, Job
from api.deps import get_db
from api.observability import RequestMetrics, labels

router = APIRouter(tags=["health"])
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


@router.get("/metrics", response_class=PlainTextResponse)
def metrics(request: Request, db_session: Session = Depends(get_db)) -> PlainTextResponse:
    """Job gauges from the database and this process's request metrics."""
    counts = dict.fromkeys(JOB_STATES, 0)
    for state, count in db_session.execute(select(Job.state, func.count()).group_by(Job.state)):
        counts[state] = int(count)
    lines = [
        "# HELP pgd_jobs Jobs in the database, by state.",
        "# TYPE pgd_jobs gauge",
        *(f"pgd_jobs{labels(state=state)} {count}" for state, count in counts.items()),
    ]
    store: RequestMetrics | None = getattr(request.app.state, "request_metrics", None)
    if store is not None:
        lines.extend(store.exposition())
    return PlainTextResponse("\n".join(lines) + "\n", media_type=CONTENT_TYPE)
