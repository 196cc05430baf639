"""`conveyor worker`: the command's body, and its start without typer.

A worker's start-up is on the clock of every deploy, restart and autoscaling step (issue
15, point 7), and typer (import, and building the command from its signature) was ~10%
of it. So `conveyor worker` with plain arguments (`TARGET --name value`, `--name=value`,
`--burst`) is parsed here, and anything else, `--help`, an unknown option or a value that
does not convert, goes to the typer command in `run.py`, which prints its usual help or
error. Both call `start_worker`; `tests/unit/test_worker_start.py` checks that the two
accept the same options and parse them to the same values.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import signal
from typing import Protocol

from ..app import Conveyor
from ..errors import ConveyorError
from ..limits import QueueLimits
from ..settings import Settings
from ..worker import Worker
from ..worker.isolation import ProcessPoolOptions
from .starting import (
    announce,
    bind_app,
    declared_queues,
    did_you_mean,
    engine_label,
    load_app,
    retention_policy,
    setup_logging,
)

log = logging.getLogger("conveyor.cli")

# The worker's options with a value: flag -> (parameter of `start_worker`, its type);
# `--burst` is the one flag.
OPTIONS: dict[str, tuple[str, type]] = {
    "--queues": ("queues", str),
    "--concurrency": ("concurrency", int),
    "--url": ("url", str),
    "--lease-timeout": ("lease_timeout", float),
    "--shutdown-timeout": ("shutdown_timeout", float),
    "--keep-completed": ("keep_completed", str),
    "--keep-failed": ("keep_failed", str),
    "--health-port": ("health_port", int),
    "--metrics-prefix": ("metrics_prefix", str),
    "--log-level": ("log_level", str),
    "--log-format": ("log_format", str),
    "--queue-concurrency": ("queue_concurrency", int),
    "--tenant-concurrency": ("tenant_concurrency", int),
    "--rate": ("rate", str),
    "--tenant-rate": ("tenant_rate", str),
    "--pool": ("pool", str),
    "--processes": ("processes", int),
    "--max-jobs-per-child": ("max_jobs_per_child", int),
    "--max-memory-per-child": ("max_memory_per_child", str),
}
FLAGS = {"--burst": "burst"}
# Numbers taken here: plain decimals, which every parser reads alike. Others ("1_000",
# "+5", "1e3", "inf") go to typer, whose own conversion decides (it may differ from int()).
_NUMBERS = {int: re.compile(r"-?[0-9]+\Z"), float: re.compile(r"-?[0-9]+(\.[0-9]+)?\Z")}


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


def parse_worker_args(args: list[str]) -> tuple[str, dict[str, object]] | None:
    """(TARGET, options) of plain `conveyor worker` arguments; None for anything this
    does not take (the typer command parses those, and explains what is wrong)."""
    target: str | None = None
    options: dict[str, object] = {}
    i = 0
    while i < len(args):
        arg = args[i]
        i += 1
        if not arg.startswith("-"):
            if target is not None:
                return None  # a second argument: typer's error
            target = arg
            continue
        name, eq, value = arg.partition("=")
        if name in FLAGS and not eq:
            options[FLAGS[name]] = True
            continue
        if name not in OPTIONS:
            return None  # --help, --, a short or unknown option
        if not eq:
            if i == len(args):
                return None
            value = args[i]
            i += 1
        param, kind = OPTIONS[name]
        if kind is not str and not _NUMBERS[kind].match(value):
            return None
        options[param] = kind(value)
    return None if target is None else (target, options)


def start_fast(args: list[str]) -> bool:
    """Run `conveyor worker` from `args` without typer when they are plain; False when
    the typer command must parse them. A Conveyor error is printed as one line and
    exits 2, as the typer command does."""
    parsed = parse_worker_args(args)
    if parsed is None:
        return False
    target, options = parsed
    try:
        start_worker(target, **options)  # type: ignore[arg-type]
    except ConveyorError as exc:
        from .common import fail

        raise SystemExit(fail(f"{type(exc).__name__}: {exc}").exit_code) from None
    return True


def start_worker(
    target: str,
    *,
    queues: str | None = None,
    concurrency: int | None = None,
    url: str | None = None,
    lease_timeout: float | None = None,
    shutdown_timeout: float | None = None,
    keep_completed: str | None = None,
    keep_failed: str | None = None,
    health_port: int | None = None,
    metrics_prefix: str | None = None,
    burst: bool = False,
    log_level: str | None = None,
    log_format: str | None = None,
    queue_concurrency: int | None = None,
    tenant_concurrency: int | None = None,
    rate: str | None = None,
    tenant_rate: str | None = None,
    pool: str | None = None,
    processes: int | None = None,
    max_jobs_per_child: int | None = None,
    max_memory_per_child: str | None = None,
) -> None:
    """Run a worker (the body of `conveyor worker`; see its options in `run.py`).

    Raises:
        ConveyorError: a bad setting, an app that cannot be loaded, the engine down at
            start; the callers print it as one line.
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
    asyncio.run(run_worker(w))
