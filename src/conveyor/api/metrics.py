"""The API's Prometheus metrics: HTTP traffic, WebSocket subscribers, queue depths.

Queue gauges reuse `conveyor.metrics.Metrics` (same names and help as the workers', so
one alert rule covers both), refreshed from the engine on every scrape: the API has no
loop of its own that samples, and a scrape is exactly when fresh numbers are wanted.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

from prometheus_client import Counter, Gauge, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..errors import EngineUnavailable
from ..metrics import DURATION_BUCKETS, Metrics

if TYPE_CHECKING:
    from ..app import Conveyor

# A scrape must answer even while the engine is silent (Prometheus times out at 10 s).
SCRAPE_ENGINE_TIMEOUT = 3.0


class ApiMetrics(Metrics):
    """`Metrics` plus the HTTP and WebSocket series of one API instance.

    Args:
        prefix: metric name prefix (settings `metrics_prefix`, default `conveyor_`).
    """

    def __init__(self, prefix: str = "conveyor_") -> None:
        super().__init__(prefix)
        r, p = self.registry, prefix
        self.http_requests = Counter(
            p + "http_requests",
            "HTTP requests answered by the API, by method, route template and status",
            ("method", "route", "status"),
            registry=r,
        )
        self.http_latency = Histogram(
            p + "http_request_duration_seconds",
            "HTTP request latency by method and route template",
            ("method", "route"),
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.ws_subscribers = Gauge(
            p + "websocket_subscribers", "WebSocket clients watching job events", registry=r
        )
        self.ws_events = Counter(
            p + "websocket_events_sent", "Job events sent to WebSocket clients", registry=r
        )
        self.ws_overflows = Counter(
            p + "websocket_overflows",
            "WebSocket clients disconnected because they read events too slowly",
            registry=r,
        )

    async def sample(self, app: Conveyor) -> None:
        """Refresh queue gauges and `engine_up` from the engine (called on scrape)."""

        async def read() -> None:
            names = await app.queue_names()
            counts = await asyncio.gather(*(app.counts(name) for name in names))
            self.record_depths(counts, app.clock.now_ms())

        try:
            await asyncio.wait_for(read(), SCRAPE_ENGINE_TIMEOUT)
        except (EngineUnavailable, TimeoutError):
            self.engine_up.set(0)
        else:
            self.engine_up.set(1)


class HttpMetricsMiddleware:
    """Counts and times every HTTP request by its route *template*.

    Labels use the matched template (`/jobs/{job_id}`), never the raw path: one label
    value per job id would grow the series without bound. Unmatched paths share one
    label. A plain ASGI middleware (not `BaseHTTPMiddleware`), so WebSockets and
    streaming pass through untouched.
    """

    def __init__(self, app: ASGIApp, metrics: ApiMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500  # if the app raises before answering, the server answers 500

        async def send_and_record(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_and_record)
        finally:
            route = scope.get("route")
            template = getattr(route, "path_format", None) or getattr(route, "path", None)
            label = str(template) if template else "<unmatched>"
            method = str(scope.get("method", ""))
            self.metrics.http_requests.labels(method, label, str(status)).inc()
            self.metrics.http_latency.labels(method, label).observe(time.perf_counter() - start)
