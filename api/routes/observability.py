"""``GET /metrics``: Prometheus exposition, written by prometheus_client.

No token is required, on purpose: Prometheus scrapers are usually configured
without per-service bearer secrets, and this endpoint shows only aggregates
(job counts per state, request counts and durations per route template); no
owner, job id, spec or token ever appears in a label. Deployments that must
hide even aggregates restrict ``/metrics`` at the ingress.
"""

from __future__ import annotations

from fastapi import APIRouter, Depends, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from sqlalchemy.orm import Session

from api.deps import get_db, get_request_metrics
from api.observability import JobStateCollector, RequestMetrics
from api.services.job_data import count_by_state

router = APIRouter(tags=["health"])


@router.get("/metrics", response_class=Response)
def metrics(
    db_session: Session = Depends(get_db),
    store: RequestMetrics | None = Depends(get_request_metrics),
) -> Response:
    """Job gauges from the database and this process's request metrics."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(JobStateCollector(lambda: count_by_state(db_session)))
    body = generate_latest(registry)
    if store is not None:
        body += generate_latest(store.registry)
    return Response(body, media_type=CONTENT_TYPE_LATEST)
