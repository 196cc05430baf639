"""Probes, metrics and the admin status document.

`/health/live` and `/health` are liveness: 200 while the process serves requests, even
when the engine is down (restarting the API would not bring Redis back). `/health/ready`
is readiness, with the same three rules as a worker's: the engine answers, it is durable, and the
process is not shutting down. The probes need no token: load balancers and
orchestrators usually cannot send one, and they reveal nothing but up/down.

`/metrics` lists every queue with its depths — numbers a tenant token is refused on
`/queues` — so when tokens are configured it needs the admin token (Prometheus sends it
with `authorization: {credentials: ...}`), unless the API runs with `--public-metrics`
(`CONVEYOR_API_PUBLIC_METRICS=1`) for a scraper that cannot. A worker's health port
stays open: see docs/security.md.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.security import HTTPAuthorizationCredentials
from starlette.responses import Response

from ..errors import EngineUnavailable
from ..settings import redact
from ..status import status_document
from .auth import AdminPrincipal, authenticate, bearer
from .errors import ERROR_RESPONSES, ApiError, json_response
from .models import HealthOut, LiveOut, ReadyOut, StatusOut
from .state import ApiState, api_state

router = APIRouter(tags=["operations"])
METRICS_MEDIA_TYPE = "text/plain; version=0.0.4; charset=utf-8"


async def api_readiness(state: ApiState) -> tuple[bool, str]:
    """(ready, reason) for this API process (503 too while its live-events reader fails)."""
    return await state.conveyor.readiness(stopping=state.stopping, failing=state.hub.failing())


@router.get("/health/live", response_model=LiveOut, summary="Liveness probe")
async def live() -> Response:
    """Always 200 while the process serves requests, without calling the engine: the
    probe an orchestrator restarts on (same path as a worker's health port)."""
    return json_response({"status": "alive"})


@router.get("/health", response_model=HealthOut, summary="Liveness")
async def health(request: Request) -> Response:
    """Always 200 while the process serves; reports engine reachability, latency and
    durability for humans (use `/health/ready` for routing decisions)."""
    app = api_state(request).conveyor
    info: dict[str, object] = {
        "url": redact(app.url),
        "durable": app.durable,
        "status": "ok",
        "latency_ms": None,
    }
    try:
        info["latency_ms"] = round(await app.ping() * 1000, 3)
    except EngineUnavailable as exc:
        info.update(status="unavailable", error=str(exc) or "timed out")
    return json_response({"status": "alive", "engine": info})


@router.get(
    "/health/ready",
    response_model=ReadyOut,
    responses={503: {"model": ReadyOut, "description": "Not ready; `reason` says why"}},
    summary="Readiness",
)
async def ready(request: Request) -> Response:
    """200 when the engine answers, is durable and the API is not shutting down."""
    ok, reason = await api_readiness(api_state(request))
    return json_response(
        {"status": "ready" if ok else "not ready", "reason": reason}, 200 if ok else 503
    )


@router.get(
    "/metrics",
    response_class=Response,
    responses={
        200: {"content": {METRICS_MEDIA_TYPE: {}}, "description": "Prometheus text"},
        **{k: v for k, v in ERROR_RESPONSES.items() if k in (401, 403)},
    },
    summary="Prometheus metrics",
)
async def metrics(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> Response:
    """HTTP and WebSocket metrics of this process, and queue depths sampled now (admin
    token when tokens are configured, unless `--public-metrics`)."""
    state = api_state(request)
    if not state.public_metrics:
        principal = authenticate(state.tokens, credentials.credentials if credentials else None)
        if not principal.admin:
            raise ApiError(403, "Forbidden", "/metrics needs the admin token")
    await state.metrics.sample(state.conveyor)
    return Response(state.metrics.exposition(), media_type=METRICS_MEDIA_TYPE)


@router.get(
    "/admin/workers/status",
    response_model=StatusOut,
    responses={k: v for k, v in ERROR_RESPONSES.items() if k in (401, 403)},
    summary="Incident status document",
)
async def workers_status(request: Request, principal: AdminPrincipal) -> Response:
    """Engine health, every queue's depths and the live workers, in one document
    (`conveyor status --json` prints the same). Always 200: an unreachable engine shows
    as `engine.status = "unavailable"`, because a poller must see the outage."""
    return json_response(await status_document(api_state(request).conveyor))
