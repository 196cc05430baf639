"""The worker's health server: liveness, readiness, details and Prometheus metrics.

`/health/ready` answers 200 only when the engine answers, the engine is durable, no
background loop (claim, heartbeat) is failing and the worker is not shutting down — the
reasons a load balancer or Kubernetes should stop counting on this worker. Each 503 says
which one it is.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from .durability import settings_document
from .engines import Engine
from .errors import EngineUnavailable
from .settings import redact

if TYPE_CHECKING:
    from .worker import Worker

READY_PING_TIMEOUT = 2.0


async def readiness(
    engine: Engine, *, stopping: bool, failing: Mapping[str, str] | None = None
) -> tuple[bool, str]:
    """(ready, reason) for a worker or API process using `engine`.

    Pings the engine, so an outage shows within `READY_PING_TIMEOUT` seconds.

    Args:
        engine: the process's engine.
        stopping: the process is shutting down.
        failing: background loops whose last turn failed, with the error (a worker's
            `loops.failing()`); any makes the process not ready.

    Returns:
        (ready, the reason a person reads when it is not).
    """
    if stopping:
        return False, "shutting down"
    if failing:
        name, error = next(iter(failing.items()))
        return False, f"{name} loop failing, retrying with backoff: {error}"
    try:
        await asyncio.wait_for(engine.ping(), READY_PING_TIMEOUT)
    except (EngineUnavailable, TimeoutError) as exc:
        return False, f"engine unavailable: {exc or 'ping timed out'}"
    # Only the memory engine keeps nothing past its process. Redis with AOF off is not
    # durable either, but it serves: start-up logs a warning and status shows it.
    if not engine.durable and engine.url.startswith("memory:"):
        return False, f"engine {engine.url} is not durable (memory:// is for tests only)"
    return True, "ok"


def build_health_app(worker: Worker) -> Starlette:
    """The ASGI app served on `--health-port`."""

    async def live(request: Request) -> Response:
        return JSONResponse({"status": "alive", "worker": worker.id})

    async def ready(request: Request) -> Response:
        ok, reason = await readiness(
            worker.app.engine, stopping=worker.stopping, failing=worker.loops.failing()
        )
        return JSONResponse(
            {"status": "ready" if ok else "not ready", "reason": reason},
            status_code=200 if ok else 503,
        )

    async def detailed(request: Request) -> Response:
        ok, reason = await readiness(
            worker.app.engine, stopping=worker.stopping, failing=worker.loops.failing()
        )
        return JSONResponse(detailed_document(worker, ok, reason), status_code=200 if ok else 503)

    async def metrics(request: Request) -> Response:
        # Breaker states change with time alone (open -> half-open): read them now.
        worker.metrics.record_breakers(worker.app.breakers.values())
        return Response(
            worker.metrics.exposition(), media_type="text/plain; version=0.0.4; charset=utf-8"
        )

    return Starlette(
        routes=[
            Route("/health/live", live),
            Route("/health", live),
            Route("/health/ready", ready),
            Route("/health/detailed", detailed),
            Route("/metrics", metrics),
        ]
    )


def detailed_document(worker: Worker, ready: bool, reason: str) -> dict[str, Any]:
    """What `/health/detailed` returns (also useful in logs)."""
    engine = worker.app.engine
    return {
        "status": "ready" if ready else "not ready",
        "reason": reason,
        "worker": worker.id,
        "engine": {
            "url": redact(engine.url),
            "durable": engine.durable,
            # Redis: maxmemory-policy, AOF and fsync, with what they put at risk.
            "server": settings_document(engine),
            "reachable": worker.stats.engine_ok,
            "error": worker.stats.engine_error,
        },
        # Every background loop: null while healthy, else the error it retries after.
        "loops": {name: loop.error for name, loop in worker.loops.loops.items()},
        "queues": {c.queue: c.to_dict() for c in worker.last_counts},
        "concurrency": {"in_use": worker.in_flight, "limit": worker.concurrency},
        "stats": {
            "processed": worker.stats.processed,
            "failed": worker.stats.failed,
            "retried": worker.stats.retried,
            "released": worker.stats.released,
            "deferred": worker.stats.deferred,
            "lost_leases": worker.stats.lost,
        },
        # Circuit breakers of this process (their state is per process).
        "dependencies": {name: b.info() for name, b in sorted(worker.app.breakers.items())},
        "config": {
            "queues": list(worker.queues),
            "concurrency": worker.concurrency,
            "lease_timeout": worker.lease_ms / 1000,
            "shutdown_timeout": worker.shutdown_timeout,
        },
    }
