"""Commands that run a Conveyor process: `worker`, `demo`."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from typing import Annotated, Protocol

import typer

from ..app import Conveyor
from ..limits import QueueLimits
from ..settings import Settings
from ..worker import Worker
from ..worker.isolation import ProcessPoolOptions
from .common import (
    announce,
    bind_app,
    cli,
    console,
    declared_queues,
    did_you_mean,
    engine_label,
    friendly,
    load_app,
    retention_policy,
    run_async,
    setup_logging,
)

log = logging.getLogger("conveyor.cli")

AppArg = Annotated[str, typer.Argument(help="your app as MODULE:ATTR, e.g. myproject.jobs:app")]


def default_queues(app: Conveyor) -> tuple[str, ...]:
    """Without --queues a worker serves every queue its app's tasks use."""
    return tuple(sorted({t.queue for t in app.tasks.values()} | {app.default_queue}))


class Service(Protocol):
    """A long-running process body: a `Worker` or a `Scheduler`."""

    def stop(self) -> None: ...

    async def run(self) -> None: ...


async def run_worker(worker: Service, *, exit_on_second_signal: bool = True) -> None:
    """Run a worker (or a scheduler) with SIGTERM/SIGINT handling: the first signal
    stops it gracefully, the second exits at once."""
    loop = asyncio.get_running_loop()
    signals_seen = 0

    def on_signal(sig: signal.Signals) -> None:
        nonlocal signals_seen
        signals_seen += 1
        if signals_seen == 1:
            worker.stop()
        elif exit_on_second_signal:
            # Leases cover whatever was in flight: those jobs run again elsewhere.
            os._exit(128 + sig.value)

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig)
    try:
        await worker.run()
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)


@cli.command()
@friendly
def worker(
    target: AppArg,
    queues: Annotated[
        str | None,
        typer.Option(
            help="comma-separated queues, in priority order "
            "(env CONVEYOR_QUEUES; default: the queues of the app's tasks)"
        ),
    ] = None,
    concurrency: Annotated[
        int | None, typer.Option(help="jobs run at once (env CONVEYOR_CONCURRENCY; 10)")
    ] = None,
    url: Annotated[
        str | None,
        typer.Option(help="engine URL (env CONVEYOR_URL, REDIS_URL; sqlite:///conveyor.db)"),
    ] = None,
    lease_timeout: Annotated[
        float | None, typer.Option(help="seconds a claim lives without heartbeat (30)")
    ] = None,
    shutdown_timeout: Annotated[
        float | None, typer.Option(help="seconds in-flight jobs get on SIGTERM (30)")
    ] = None,
    keep_completed: Annotated[
        str | None,
        typer.Option(
            help="delete completed jobs of these queues older than this "
            "(env CONVEYOR_KEEP_COMPLETED; 24h; 'forever' keeps them)"
        ),
    ] = None,
    keep_failed: Annotated[
        str | None,
        typer.Option(
            help="delete failed and cancelled jobs older than this "
            "(env CONVEYOR_KEEP_FAILED; 7d; 'forever')"
        ),
    ] = None,
    health_port: Annotated[
        int | None,
        typer.Option(
            help="port for /health/* and /metrics; 0 disables (env CONVEYOR_HEALTH_PORT; 3100)"
        ),
    ] = None,
    metrics_prefix: Annotated[
        str | None, typer.Option(help="Prometheus metric name prefix (conveyor_)")
    ] = None,
    burst: Annotated[
        bool, typer.Option("--burst", help="exit when nothing is pending or running")
    ] = False,
    log_level: Annotated[str | None, typer.Option(help="DEBUG, INFO, WARNING, ERROR")] = None,
    log_format: Annotated[str | None, typer.Option(help="text or json")] = None,
    queue_concurrency: Annotated[
        int | None,
        typer.Option(
            help="fleet-wide: running jobs per queue across all workers "
            "(env CONVEYOR_QUEUE_CONCURRENCY)"
        ),
    ] = None,
    tenant_concurrency: Annotated[
        int | None,
        typer.Option(help="fleet-wide: running jobs per tenant (env CONVEYOR_TENANT_CONCURRENCY)"),
    ] = None,
    rate: Annotated[
        str | None,
        typer.Option(help="fleet-wide: jobs started per queue, e.g. 100/1s (env CONVEYOR_RATE)"),
    ] = None,
    tenant_rate: Annotated[
        str | None,
        typer.Option(
            help="fleet-wide: jobs started per tenant, e.g. 10/1s (env CONVEYOR_TENANT_RATE)"
        ),
    ] = None,
    pool: Annotated[
        str | None,
        typer.Option(
            help="thread: handlers run in the worker; process: in child processes that "
            "timeouts, cancels and crashes can kill (env CONVEYOR_POOL; thread)"
        ),
    ] = None,
    processes: Annotated[
        int | None,
        typer.Option(help="child processes of the process pool (env CONVEYOR_PROCESSES; CPUs)"),
    ] = None,
    max_jobs_per_child: Annotated[
        int | None,
        typer.Option(help="replace a child after this many jobs (env CONVEYOR_MAX_JOBS_PER_CHILD)"),
    ] = None,
    max_memory_per_child: Annotated[
        str | None,
        typer.Option(
            help="replace a child whose RSS is above this after a job, e.g. 512MB "
            "(env CONVEYOR_MAX_MEMORY_PER_CHILD)"
        ),
    ] = None,
) -> None:
    """Run a worker: claim jobs under leases and run their handlers.

    The limit options are stored in the engine for each of the worker's queues when it
    starts (over the app's `app.limits(...)`), and every worker obeys them.
    """
    env_has_queues = "CONVEYOR_QUEUES" in os.environ
    settings = Settings.load(
        url=url,
        queues=queues,
        concurrency=concurrency,
        lease_timeout=lease_timeout,
        shutdown_timeout=shutdown_timeout,
        keep_completed=keep_completed,
        keep_failed=keep_failed,
        health_port=health_port,
        metrics_prefix=metrics_prefix,
        log_level=log_level and log_level.upper(),
        log_format=log_format,
        queue_concurrency=queue_concurrency,
        tenant_concurrency=tenant_concurrency,
        rate=rate,
        tenant_rate=tenant_rate,
        pool=pool,
        processes=processes,
        max_jobs_per_child=max_jobs_per_child,
        max_memory_per_child=max_memory_per_child,
    )
    setup_logging(settings.log_level, settings.log_format)
    limits = QueueLimits.build(
        concurrency=settings.queue_concurrency,
        tenant_concurrency=settings.tenant_concurrency,
        rate=settings.rate,
        tenant_rate=settings.tenant_rate,
    )
    app = load_app(target)
    overridden = bind_app(app, settings, url)
    chosen = settings.queues if (queues or env_has_queues) else default_queues(app)
    declared = declared_queues(app)
    for name in chosen:
        if name not in declared:  # most often a typo: the worker would wait on it forever
            log.warning(
                "queue %r is not declared by any task of %s (%s)",
                name,
                target,
                did_you_mean(name, declared),
            )
    isolation = ProcessPoolOptions(
        target=target,
        processes=settings.processes,
        every_task=settings.pool == "process",
        max_jobs_per_child=settings.max_jobs_per_child,
        max_memory_per_child=settings.max_memory_per_child,
    )
    concurrency = settings.concurrency
    if settings.pool == "process" and "concurrency" not in settings.model_fields_set:
        # One job per child: more slots would only hold claimed jobs waiting for a child.
        concurrency = settings.processes or os.cpu_count() or 1
    w = Worker(
        app,
        queues=chosen,
        concurrency=concurrency,
        lease_timeout=settings.lease_timeout,
        shutdown_timeout=settings.shutdown_timeout,
        burst=burst,
        health_port=settings.health_port,
        metrics_prefix=settings.metrics_prefix,
        close_app=True,
        limits=None if limits.empty else limits,
        retention=retention_policy(settings),
        require_noeviction=settings.require_noeviction,
        isolation=isolation,
        freeze_heap=True,  # the process is the worker's own (see worker.runtime._freeze_heap)
    )
    engine = engine_label(app.url)
    pool_note = ""
    if w.process_pool is not None:
        pool_note = f" pool=process({w.process_pool.processes})"

    def ready() -> None:  # after the engine answered (runbook 003's ready signal)
        announce(
            f"worker {w.id} on {engine}{overridden} queues={','.join(chosen)} "
            f"concurrency={concurrency}{pool_note} "
            f"health port={settings.health_port or 'off'}",
            settings.log_format,
            worker=w.id,
            engine=engine,
            engine_overridden=overridden.strip(" ()") or None,
            queues=list(chosen),
            concurrency=concurrency,
            pool="process" if w.process_pool is not None else "thread",
            processes=w.process_pool.processes if w.process_pool is not None else None,
            health_port=settings.health_port or None,
        )

    w.on_ready = ready
    run_async(run_worker(w))


@cli.command()
@friendly
def demo(
    url: Annotated[
        str | None,
        typer.Option(help="engine URL (default: the embedded SQLite file ./conveyor.db)"),
    ] = None,
    rate: Annotated[float, typer.Option(help="jobs enqueued per second")] = 50.0,
    concurrency: Annotated[int, typer.Option(help="jobs run at once")] = 20,
    duration: Annotated[float | None, typer.Option(help="stop after this many seconds")] = None,
    port: Annotated[int, typer.Option(help="API and dashboard port (a free one if taken)")] = 8000,
) -> None:
    """Enqueue a stream of demo jobs and process them, with a live view, until Ctrl-C."""
    from ..demo import run_demo

    settings = Settings.load(url=url)
    run_async(
        run_demo(settings.url, rate=rate, concurrency=concurrency, duration=duration, port=port)
    )


@cli.command()
@friendly
def dev(
    target: Annotated[
        str | None, typer.Argument(help="your app as MODULE:ATTR (default: the demo app)")
    ] = None,
    url: Annotated[
        str | None, typer.Option(help="engine URL (default: the embedded SQLite file)")
    ] = None,
    port: Annotated[int, typer.Option(help="API and dashboard port (a free one if taken)")] = 8000,
    concurrency: Annotated[int | None, typer.Option(help="jobs run at once")] = None,
    scheduler: Annotated[bool, typer.Option(help="also run the scheduler")] = True,
    tokens_file: Annotated[
        str | None,
        typer.Option(
            help="API tokens, as for `conveyor api` (env CONVEYOR_API_TOKENS_FILE; also "
            "CONVEYOR_API_ADMIN_TOKEN, CONVEYOR_API_TENANT_TOKENS); none: an open API"
        ),
    ] = None,
) -> None:
    """Run worker, API + dashboard and scheduler in one process (for development)."""
    from ..api import Tokens
    from ..dev import DevStack

    settings = Settings.load(url=url, concurrency=concurrency)
    setup_logging(settings.log_level, settings.log_format)
    tokens = Tokens.load(settings, tokens_file)
    if target:
        app = load_app(target)
    else:
        from ..demo import build_app

        app = build_app()
    overridden = bind_app(app, settings, url)
    worker = Worker(app, queues=default_queues(app), concurrency=settings.concurrency)
    stack = DevStack(
        app,
        worker,
        port=port,
        scheduler=scheduler,
        tokens=tokens,
        public_hosts=settings.api_public_hosts,
    )
    auth = (
        f"tokens required ({'admin' if tokens.admin else 'no admin'} token, "
        f"{len(tokens.tenants)} tenant token(s))"
        if tokens.enabled
        else "OPEN, no tokens (only localhost pages and tools can use it; set "
        "CONVEYOR_API_ADMIN_TOKEN to require one)"
    )

    async def main() -> None:
        await stack.start()
        console().print(
            f"conveyor dev on {engine_label(app.url)}{overridden}\n"
            f"  dashboard: [bold]{stack.url}/dashboard[/]\n"
            f"  API:       {stack.url}/docs\n"
            f"  API auth:  {auth}\n"
            f"  queues:    {','.join(worker.queues)}  (Ctrl-C stops gracefully)",
            highlight=False,
        )
        await run_worker(stack)

    run_async(main())
