"""Persistence: SQLAlchemy 2 models (one schema, created only through Alembic) and sessions."""

from pgd_service.db.models import (
    JOB_STATES,
    ApiToken,
    Artifact,
    Base,
    EvalResult,
    Job,
    MetricPoint,
    Sweep,
)

__all__ = [
    "JOB_STATES",
    "ApiToken",
    "Artifact",
    "Base",
    "EvalResult",
    "Job",
    "MetricPoint",
    "Sweep",
]
