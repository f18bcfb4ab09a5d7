"""Request metrics kept in process and a pure ASGI middleware that records them.

Hand-written Prometheus text exposition (format 0.0.4): no new dependency. The
``route`` label is the matched route's template (``/jobs/{job_id}``), never the
raw path, so ids cannot blow up the label set; unmatched paths count as
``unmatched``. Counts are per process: with several API workers, Prometheus
sums the scraped instances.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


def escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def labels(**pairs: str) -> str:
    return "{" + ",".join(f'{k}="{escape_label(v)}"' for k, v in pairs.items()) + "}"


def format_value(value: float) -> str:
    if value == float("inf"):
        return "+Inf"
    return repr(float(value)) if not float(value).is_integer() else str(int(value))


class RequestMetrics:
    """Thread-safe request counter and duration histogram."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._requests: dict[tuple[str, str, str], int] = {}
        # (method, route) -> (bucket counts, sum, count)
        self._durations: dict[tuple[str, str], tuple[list[int], float, int]] = {}

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        with self._lock:
            key = (method, route, str(status))
            self._requests[key] = self._requests.get(key, 0) + 1
            counts, total, n = self._durations.get((method, route), ([0] * len(BUCKETS), 0.0, 0))
            for i, bound in enumerate(BUCKETS):
                if seconds <= bound:
                    counts[i] += 1
            self._durations[(method, route)] = (counts, total + seconds, n + 1)

    def exposition(self) -> Iterable[str]:
        with self._lock:
            requests = sorted(self._requests.items())
            durations = sorted((k, (list(c), s, n)) for k, (c, s, n) in self._durations.items())
        yield "# HELP pgd_http_requests_total HTTP requests served, by route template and status."
        yield "# TYPE pgd_http_requests_total counter"
        for (method, route, status), count in requests:
            yield (
                "pgd_http_requests_total"
                f"{labels(method=method, route=route, status=status)} {count}"
            )
        name = "pgd_http_request_duration_seconds"
        yield f"# HELP {name} Time to serve a request (until the response starts)."
        yield f"# TYPE {name} histogram"
        for (method, route), (counts, total, n) in durations:
            for bound, count in zip(BUCKETS, counts, strict=True):
                lab = labels(method=method, route=route, le=format_value(bound))
                yield f"{name}_bucket{lab} {count}"
            yield f"{name}_bucket{labels(method=method, route=route, le='+Inf')} {n}"
            yield f"{name}_sum{labels(method=method, route=route)} {format_value(total)}"
            yield f"{name}_count{labels(method=method, route=route)} {n}"


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
    """Attach a fresh metrics store and its middleware to ``app`` (before it starts)."""
    metrics = RequestMetrics()
    app.state.request_metrics = metrics
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    return metrics
