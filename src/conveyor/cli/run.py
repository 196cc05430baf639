"""Commands that run a Conveyor process: `worker`, `demo`."""

from __future__ import annotations

from typing import Annotated

import typer

from ..settings import Settings
from ..worker import Worker
from .common import (
    bind_app,
    cli,
    console,
    engine_label,
    friendly,
    load_app,
    run_async,
    setup_logging,
)
from .worker_start import default_queues, run_worker, start_worker

AppArg = Annotated[str, typer.Argument(help="your app as MODULE:ATTR, e.g. myproject.jobs:app")]


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
    # Every parameter as given (the first statement: locals() holds only them); the
    # body is shared with the fast path that skips typer (worker_start.py).
    start_worker(**locals())


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
