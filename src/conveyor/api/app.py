"""Assemble the FastAPI application: routers, error mapping, metrics, lifespan."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterable
from typing import TYPE_CHECKING

from fastapi import APIRouter, FastAPI

from ..live import DEFAULT_BUFFER, EventHub
from ..settings import Settings
from . import flows, jobs, live, queues, system
from .auth import Tokens
from .errors import install_error_handlers
from .guard import RequestGuard, default_body_limit
from .metrics import ApiMetrics, HttpMetricsMiddleware
from .state import ApiState
from .task_schemas import install_task_schemas

if TYPE_CHECKING:
    from ..app import Conveyor

API_VERSION = "1"
# The runbooks (and BullMQ-era dashboards) call /api/health, /api/admin/workers/status…
ALIAS_PREFIX = "/api"

DESCRIPTION = """\
Enqueue and inspect jobs, operate queues, poll incident status, and watch jobs live.

**Auth**: `Authorization: Bearer <token>`. The admin token may do everything; a tenant
token sees only its tenant's jobs (others' answer 404) and cannot use queue-wide
operations (403). Probes need no token; `/metrics` needs the admin token when tokens
are configured (unless the API runs with `--public-metrics`).

**Live updates**: `WS /ws/jobs?queue=…|job=…&tenant=…&since=…` pushes every state
change and progress update as JSON (`{"type": "event", "id", "kind", "job_id", …}`);
reconnect with `since=queue:id,…` to replay what was missed. WebSockets are not part
of OpenAPI; see `conveyor.api.live` for the protocol.

Every path is also served under `/api` (e.g. `/api/health/ready`).
"""


def _router() -> APIRouter:
    router = APIRouter()
    for module in (jobs, flows, queues, system, live):
        router.include_router(module.router)
    return router


def create_api(
    app: Conveyor,
    *,
    tokens: Tokens | None = None,
    metrics_prefix: str | None = None,
    owns_app: bool = False,
    ws_buffer: int = DEFAULT_BUFFER,
    max_body_bytes: int | None = None,
    public_hosts: Iterable[str] | None = None,
    public_metrics: bool | None = None,
    ws_max_subscribers: int | None = None,
    ws_max_per_token: int | None = None,
) -> FastAPI:
    """Build the HTTP API for `app` (without the dashboard: `conveyor.web` adds it).

    Nothing connects until the first request, so it works without lifespan events
    (mounted sub-apps do not get them).

    Args:
        app: the Conveyor app: its engine, and its tasks' default queues and limits.
        tokens: bearer tokens; default: from settings (`CONVEYOR_API_*`). With none the
            API is open — put it behind your own auth when mounting — and answers only
            loopback host names and same-origin writes (`conveyor.api.guard`): list the
            host names it is mounted under in `public_hosts`.
        metrics_prefix: Prometheus name prefix (default: settings `metrics_prefix`).
        owns_app: close `app` when the API shuts down (`conveyor api` does).
        ws_buffer: events a WebSocket client may lag before it is disconnected.
        max_body_bytes: the largest request body read (413 past it, before auth);
            default: settings `api_max_body_bytes`, else the app's payload limit plus
            64 KiB for the envelope.
        public_hosts: host names besides localhost that an API *without tokens*
            answers to (default: settings `api_public_hosts`); see `guard`.
        public_metrics: serve `/metrics` without the admin token even when tokens are
            configured (default: settings `api_public_metrics`).
        ws_max_subscribers: live WebSocket subscriptions this process serves at most
            (default: settings `api_ws_max_subscribers`); past it sockets close 4429.
        ws_max_per_token: the same per token (default: settings `api_ws_max_per_token`).

    Returns:
        The FastAPI application.

    Raises:
        ConfigError: the settings or token configuration is invalid.
    """
    if None in (
        tokens,
        metrics_prefix,
        public_hosts,
        public_metrics,
        ws_max_subscribers,
        ws_max_per_token,
    ):
        settings = Settings.load()
        tokens = Tokens.load(settings) if tokens is None else tokens
        metrics_prefix = settings.metrics_prefix if metrics_prefix is None else metrics_prefix
        public_hosts = settings.api_public_hosts if public_hosts is None else public_hosts
        public_metrics = settings.api_public_metrics if public_metrics is None else public_metrics
        max_body_bytes = max_body_bytes or settings.api_max_body_bytes
        ws_max_subscribers = ws_max_subscribers or settings.api_ws_max_subscribers
        ws_max_per_token = ws_max_per_token or settings.api_ws_max_per_token
    assert tokens is not None and metrics_prefix is not None and public_hosts is not None
    assert ws_max_subscribers is not None and ws_max_per_token is not None
    metrics = ApiMetrics(metrics_prefix)
    state = ApiState(
        conveyor=app,
        tokens=tokens,
        hub=EventHub(
            app,
            metrics,
            buffer=ws_buffer,
            max_subscribers=ws_max_subscribers,
            max_per_owner=ws_max_per_token,
        ),
        metrics=metrics,
        owns_app=owns_app,
        public_metrics=bool(public_metrics),
    )

    @contextlib.asynccontextmanager
    async def lifespan(api: FastAPI) -> AsyncIterator[None]:
        yield
        state.stopping = True
        await state.hub.close()
        if state.owns_app:
            await state.conveyor.close()

    api = FastAPI(
        title="Conveyor API",
        version=API_VERSION,
        description=DESCRIPTION,
        lifespan=lifespan,
    )
    api.state.conveyor = state
    router = _router()
    api.include_router(router)
    api.include_router(router, prefix=ALIAS_PREFIX, include_in_schema=False)
    install_error_handlers(api)
    install_task_schemas(api, app)
    api.add_middleware(HttpMetricsMiddleware, metrics=metrics)
    # Added last, so outermost: a refused request reaches neither routing nor auth.
    api.add_middleware(
        RequestGuard,
        max_body_bytes=max_body_bytes or default_body_limit(app.max_payload_bytes),
        open_api=not tokens.enabled,
        public_hosts=public_hosts,
    )
    return api
