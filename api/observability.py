"""Request metrics with prometheus_client, recorded by a pure ASGI middleware.

Each app gets its own CollectorRegistry (tests build many apps in one process).
The ``route`` label is the matched route's template (``/jobs/{job_id}``), never
the raw path, so ids cannot blow up the label set; unmatched paths count as
``unmatched``. Counts are per process: with several API workers, Prometheus
sums the scraped instances. The job gauges are read from the database at
scrape time by :class:`JobStateCollector`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, disable_created_metrics
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# No *_created series: a counter's creation time is noise to a scraper here.
disable_created_metrics()


class RequestMetrics:
    """The request counter and duration histogram of one app, in its own registry."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "pgd_http_requests",
            "HTTP requests served, by route template and status.",
            ("method", "route", "status"),
            registry=self.registry,
        )
        self.durations = Histogram(
            "pgd_http_request_duration_seconds",
            "Time to serve a request (until the response starts).",
            ("method", "route"),
            buckets=BUCKETS,
            registry=self.registry,
        )

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        self.requests.labels(method, route, str(status)).inc()
        self.durations.labels(method, route).observe(seconds)


class JobStateCollector(Collector):
    """``pgd_jobs{state}``: jobs in the database by state, read when scraped."""

    def __init__(self, count_by_state: Callable[[], dict[str, int]]) -> None:
        self.count_by_state = count_by_state

    def describe(self) -> Iterator[Any]:
        yield GaugeMetricFamily("pgd_jobs", "Jobs in the database, by state.", labels=["state"])

    def collect(self) -> Iterator[Any]:
        family = GaugeMetricFamily("pgd_jobs", "Jobs in the database, by state.", labels=["state"])
        for state, count in self.count_by_state().items():
            family.add_metric([state], count)
        yield family


class MetricsMiddleware:
    """Pure ASGI (no BaseHTTPMiddleware): streaming responses such as SSE pass untouched.
    The duration is measured until the response headers are sent."""

    def __init__(self, app: ASGIApp, metrics: RequestMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        recorded = False

        def record(status: int) -> None:
            nonlocal recorded
            if recorded:
                return
            recorded = True
            route: Any = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            self.metrics.observe(scope["method"], template, status, time.perf_counter() - start)

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                record(int(message["status"]))
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        except Exception:
            record(500)
            raise


def install(app: Any) -> RequestMetrics:
    """Attach a fresh metrics registry and its middleware to ``app`` (before it starts)."""
    metrics = RequestMetrics()
    app.state.request_metrics = metrics
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    return metrics
