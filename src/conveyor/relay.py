"""The outbox relay: committed Postgres outbox rows become jobs in another engine.

`conveyor relay MODULE:ATTR --from postgresql://... --to redis://...` runs a `Relay`.
Each step takes up to `batch` rows with ``FOR UPDATE SKIP LOCKED``, enqueues them into
the target with ids and dedupe keys derived from the row ids, and deletes them in the
same Postgres transaction (see `conveyor.engines.postgres.outbox` for why a row
becomes exactly one job even when relays are SIGKILLed, and why several relays can
run at once). Between steps the relay waits for the NOTIFY that an outbox insert sends
at COMMIT, polling every `interval` seconds (100 ms) as a fallback.

It serves `/health/live`, `/health/ready` (both engines answer, not stopping) and
`/metrics` (rows relayed, duplicates, errors, and the lag: the age of the oldest row
not yet relayed) on `health_port`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from .app import Conveyor
from .engines import open_engine
from .errors import ConfigError, EngineUnavailable
from .serving import EmbeddedServer

__all__ = ["Relay"]

log = logging.getLogger("conveyor.relay")
ERROR_BACKOFF_S = (0.1, 0.5, 1.0, 2.0, 5.0)
READY_PING_TIMEOUT = 2.0


class Relay:
    """Moves committed outbox rows from a Postgres schema into a target engine.

    Args:
        source_url: the ``postgresql://...?schema=...`` whose outbox is relayed.
        target: the app (or its engine URL) the jobs go to (usually on ``redis://...``);
            jobs are stored through it (`Conveyor.store_built`).
        batch: rows per step (one Postgres transaction, one enqueue call).
        interval: polling interval in seconds while no NOTIFY arrives.
        health_port: port of /health/* and /metrics (0: none).
        metrics_prefix: prefix of the metric names.

    Raises:
        ConfigError: the source is not a Postgres URL, or batch/interval are invalid.
    """

    def __init__(
        self,
        source_url: str,
        target: Conveyor | str,
        *,
        batch: int = 100,
        interval: float = 0.1,
        health_port: int = 0,
        health_host: str = "127.0.0.1",
        metrics_prefix: str = "conveyor_",
    ) -> None:
        from .engines.postgres import PostgresEngine

        source = open_engine(source_url)
        if not isinstance(source, PostgresEngine):
            raise ConfigError(
                f"--from {source_url!r} is not a Postgres URL: the outbox lives in "
                "Postgres (postgresql://user@host:5432/db?schema=conveyor)"
            )
        if not 1 <= batch <= 10_000 or not 0.001 <= interval <= 60:
            raise ConfigError(
                f"batch={batch} / interval={interval} is invalid: use a batch of 1 to "
                "10000 rows and an interval of 0.001 to 60 s (defaults: 100, 0.1)"
            )
        self.source = source
        self.target = target if isinstance(target, Conveyor) else Conveyor(target)
        self.batch = batch
        self.interval = interval
        self.health_port = health_port
        self.health_host = health_host
        self.stopping = False
        self.last_lag = 0.0  # seconds, as last measured
        self._stop = asyncio.Event()
        registry = CollectorRegistry()
        self.registry = registry
        p = metrics_prefix
        self.relayed = Counter(p + "relay_rows", "Outbox rows turned into jobs", registry=registry)
        self.duplicates = Counter(
            p + "relay_duplicates",
            "Outbox rows whose job already existed (sent by a relay that died before "
            "deleting the row)",
            registry=registry,
        )
        self.errors = Counter(p + "relay_errors", "Relay steps that failed", registry=registry)
        self.lag = Gauge(
            p + "relay_lag_seconds",
            "Age of the oldest outbox row not yet relayed (0 when empty)",
            registry=registry,
        )

    def stop(self) -> None:
        """Finish the current step, then return from `run`."""
        self.stopping = True
        self._stop.set()

    async def step(self) -> int:
        """Relay one batch; returns how many rows it took (0: the outbox was empty).

        Raises:
            EngineUnavailable: either engine cannot be reached (nothing was deleted).
        """
        results = await self.source.relay_batch(self.target.store_built, self.batch)
        created = sum(r.created for r in results)
        self.relayed.inc(len(results))
        self.duplicates.inc(len(results) - created)
        return len(results)

    async def update_lag(self) -> float:
        """Measure the lag (seconds) and publish it."""
        lag_ms = await self.source.outbox_lag_ms()
        lag = 0.0 if lag_ms is None else max(0, lag_ms) / 1000
        self.lag.set(lag)
        self.last_lag = lag
        return lag

    async def run(self) -> None:
        """Relay until `stop` (or SIGTERM/SIGINT); engine errors back off and retry."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, self.stop)
        server = None
        if self.health_port:
            server = EmbeddedServer(self.health_app(), self.health_host, self.health_port)
            await server.start()
        failures = 0
        try:
            while not self._stop.is_set():
                try:
                    taken = await self.step()
                    if taken < self.batch:
                        await self.update_lag()
                        await self._idle()
                    failures = 0
                except EngineUnavailable as exc:
                    self.errors.inc()
                    delay = ERROR_BACKOFF_S[min(failures, len(ERROR_BACKOFF_S) - 1)]
                    failures += 1
                    log.warning("relay step failed (%s); retrying in %.1fs", exc, delay)
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._stop.wait(), delay)
        finally:
            if server is not None:
                await server.stop()
            await self.source.close()
            await self.target.close()

    async def _idle(self) -> None:
        waiter = asyncio.ensure_future(self.source.wait_for_outbox(self.interval))
        stopper = asyncio.ensure_future(self._stop.wait())
        try:
            await asyncio.wait({waiter, stopper}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiter.cancel()
            stopper.cancel()

    def health_app(self) -> Starlette:
        """/health/live, /health/ready and /metrics of the relay."""

        async def live(request: Request) -> Response:
            return JSONResponse({"status": "alive", "role": "relay"})

        async def ready(request: Request) -> Response:
            reasons = []
            try:
                await asyncio.wait_for(self.source.ping(), READY_PING_TIMEOUT)
            except (EngineUnavailable, TimeoutError) as exc:
                reasons.append(f"source: engine unavailable: {exc or 'ping timed out'}")
            ok, reason = await self.target.readiness(stopping=self.stopping)
            if not ok:
                reasons.append(f"target: {reason}")
            body = {"status": "not ready" if reasons else "ready", "reason": "; ".join(reasons)}
            return JSONResponse(body | {"lag_seconds": self.lag._value.get()},
                                status_code=503 if reasons else 200)  # fmt: skip

        async def metrics(request: Request) -> Response:
            with contextlib.suppress(EngineUnavailable):
                await self.update_lag()
            return Response(generate_latest(self.registry), media_type="text/plain")

        return Starlette(
            routes=[
                Route("/health/live", live),
                Route("/health/ready", ready),
                Route("/metrics", metrics),
            ]
        )
