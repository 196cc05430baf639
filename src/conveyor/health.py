"""The worker's health server: liveness, readiness, details and Prometheus metrics.

`/health/ready` answers 200 only when the engine answers, the engine is durable, no
background loop (claim, heartbeat, retention) is failing and the worker is not shutting
down — the reasons a load balancer or Kubernetes should stop counting on this worker.
Each 503 says which one it is.

No endpoint here needs a token, unlike the API's `/metrics`: the callers (probes, load
balancers, Prometheus) usually cannot send one, and nothing here changes state or
returns a payload — only queue names, depths, breaker states and the engine URL
without its password. Keep the port on the cluster network (docs/security.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from .settings import redact

if TYPE_CHECKING:
    from .app import Conveyor
    from .engines import QueueCounts
    from .metrics import WorkerMetrics


class WorkerStatsView(Protocol):
    """The counters of `WorkerStats` that `/health/detailed` shows."""

    @property
    def processed(self) -> int: ...
    @property
    def failed(self) -> int: ...
    @property
    def retried(self) -> int: ...
    @property
    def released(self) -> int: ...
    @property
    def deferred(self) -> int: ...
    @property
    def lost(self) -> int: ...
    @property
    def engine_ok(self) -> bool: ...
    @property
    def engine_error(self) -> str | None: ...


class LoopsView(Protocol):
    """The worker's background loops (`conveyor.worker.supervision.Supervisors`)."""

    def failing(self) -> dict[str, str]: ...
    def errors(self) -> dict[str, str | None]: ...


class PoolView(Protocol):
    """What the health server reads from a worker's process pool (isolation.py)."""

    @property
    def processes(self) -> int: ...
    @property
    def pids(self) -> list[int]: ...
    @property
    def recycled(self) -> int: ...
    @property
    def died(self) -> int: ...


class HealthSource(Protocol):
    """What the health server reads from its worker (`conveyor.worker.Worker`).

    A protocol rather than the `Worker` class, because the worker builds this server:
    naming the class here would make the two modules depend on each other.
    """

    @property
    def id(self) -> str: ...
    @property
    def app(self) -> Conveyor: ...
    @property
    def stopping(self) -> bool: ...
    @property
    def metrics(self) -> WorkerMetrics: ...
    @property
    def stats(self) -> WorkerStatsView: ...
    @property
    def loops(self) -> LoopsView: ...
    @property
    def last_counts(self) -> Sequence[QueueCounts]: ...
    @property
    def in_flight(self) -> int: ...
    @property
    def concurrency(self) -> int: ...
    @property
    def queues(self) -> Sequence[str]: ...
    @property
    def lease_ms(self) -> int: ...
    @property
    def shutdown_timeout(self) -> float: ...
    @property
    def process_pool(self) -> PoolView | None: ...


def build_health_app(worker: HealthSource) -> Starlette:
    """The ASGI app served on `--health-port`."""

    async def live(request: Request) -> Response:
        return JSONResponse({"status": "alive", "worker": worker.id})

    async def ready(request: Request) -> Response:
        ok, reason = await worker.app.readiness(
            stopping=worker.stopping, failing=worker.loops.failing()
        )
        return JSONResponse(
            {"status": "ready" if ok else "not ready", "reason": reason},
            status_code=200 if ok else 503,
        )

    async def detailed(request: Request) -> Response:
        ok, reason = await worker.app.readiness(
            stopping=worker.stopping, failing=worker.loops.failing()
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


def detailed_document(worker: HealthSource, ready: bool, reason: str) -> dict[str, Any]:
    """What `/health/detailed` returns (also useful in logs)."""
    app = worker.app
    return {
        "status": "ready" if ready else "not ready",
        "reason": reason,
        "worker": worker.id,
        "engine": {
            "url": redact(app.url),
            "durable": app.durable,
            # Redis: maxmemory-policy, AOF and fsync, with what they put at risk.
            "server": app.engine_server(),
            "reachable": worker.stats.engine_ok,
            "error": worker.stats.engine_error,
        },
        # Every background loop: null while healthy, else the error it retries after.
        "loops": worker.loops.errors(),
        "queues": {c.queue: c.to_dict() for c in worker.last_counts},
        "concurrency": {"in_use": worker.in_flight, "limit": worker.concurrency},
        # Isolated handlers' children (null: no process pool): live pids, and how many were
        # replaced by the recycling limits or died mid-job (killed on timeout or cancel,
        # or crashed).
        "process_pool": None
        if (pool := worker.process_pool) is None
        else {
            "processes": pool.processes,
            "pids": pool.pids,
            "recycled": pool.recycled,
            "died": pool.died,
        },
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
