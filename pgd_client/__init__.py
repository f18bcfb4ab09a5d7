"""pgd's Python client: the REST API with typed results, RFC 9457 errors as
:class:`ProblemError`, safe retries and resumable server-sent events.

It imports neither the server (``api``, ``worker``, ``pgd_service``) nor torch."""

from pgd_client.client import Client
from pgd_client.errors import PgdError, ProblemError, Unreachable
from pgd_client.models import (
    TERMINAL_STATES,
    Artifact,
    CreatedToken,
    Event,
    GroupPage,
    Job,
    JobPage,
    MetricPoint,
    ResultPage,
    ResultRow,
    Token,
)

__all__ = [
    "TERMINAL_STATES",
    "Artifact",
    "Client",
    "Event",
    "GroupPage",
    "Job",
    "JobPage",
    "MetricPoint",
    "PgdError",
    "ProblemError",
    "ResultPage",
    "ResultRow",
    "Token",
    "CreatedToken",
    "Unreachable",
]
