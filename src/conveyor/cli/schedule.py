"""`conveyor scheduler` (the process) and `conveyor schedules ...` (the runtime store).

`schedules` commands need only the engine URL, like every operation: code-defined
schedules appear once a scheduler has started with the app, runtime ones are added here.
"""

from __future__ import annotations

import time
from typing import Annotated, Any

import orjson
import typer
from rich.markup import escape
from rich.table import Table

from ..app import Conveyor
from ..engines.base import LeaseInfo
from ..errors import ConfigError, ConveyorError
from ..scheduler import Scheduler
from ..schedules import ScheduleInfo, ScheduleSpec, cron_schedule, every_schedule
from ..settings import Settings
from ..status import parse_duration
from .common import (
    AppOpt,
    JsonOpt,
    UrlOpt,
    announce,
    bind_app,
    cli,
    configured_app,
    console,
    did_you_mean,
    engine_label,
    friendly,
    load_app,
    operate,
    print_json,
    retention_policy,
    run_async,
    say,
    setup_logging,
    warn,
    when,
)
from .run import AppArg
from .worker_start import run_worker

schedules_cli = typer.Typer(
    name="schedules",
    help="List, add, remove, pause and resume recurring schedules.",
    no_args_is_help=True,
)
cli.add_typer(schedules_cli)

NameArg = Annotated[str, typer.Argument(help="schedule name, as `conveyor schedules list` shows")]


@cli.command("scheduler")
@friendly
def scheduler_command(
    target: AppArg,
    url: UrlOpt = None,
    lease_timeout: Annotated[
        float,
        typer.Option(help="seconds leadership lives without renewal; takeover time (30)"),
    ] = 30.0,
    keep_completed: Annotated[
        str | None,
        typer.Option(
            help="delete completed jobs older than this (env CONVEYOR_KEEP_COMPLETED; 24h; "
            "'forever')"
        ),
    ] = None,
    keep_failed: Annotated[
        str | None,
        typer.Option(
            help="delete failed and cancelled jobs older than this (env CONVEYOR_KEEP_FAILED; "
            "7d; 'forever')"
        ),
    ] = None,
    log_level: Annotated[str | None, typer.Option(help="DEBUG, INFO, WARNING, ERROR")] = None,
    log_format: Annotated[str | None, typer.Option(help="text or json")] = None,
) -> None:
    """Run the scheduler: schedules, retention cleanup and stalled-job recovery.

    Run two or three for availability: one leads, the others take over within the lease.
    """
    settings = Settings.load(
        url=url, log_level=log_level and log_level.upper(), log_format=log_format
    )
    setup_logging(settings.log_level, settings.log_format)
    app = load_app(target)
    overridden = bind_app(app, settings, url)
    policy = retention_policy(settings, keep_completed, keep_failed)
    scheduler = Scheduler(
        app,
        lease_timeout=lease_timeout,
        keep_completed=policy.keep_completed,
        keep_failed=policy.keep_failed,
        clean_interval=policy.interval,
        clean_batch=policy.batch,
        close_app=True,
        require_noeviction=settings.require_noeviction,
    )
    engine = engine_label(app.url)
    announce(
        f"scheduler {scheduler.id} on {engine}{overridden} "
        f"schedules={len(app.schedules)} lease={lease_timeout:g}s",
        settings.log_format,
        scheduler=scheduler.id,
        engine=engine,
        schedules=len(app.schedules),
    )
    run_async(run_worker(scheduler))


# --- the runtime store ------------------------------------------------------------------------
def schedules_table(rows: list[ScheduleInfo], now: float) -> Table:
    """The `schedules list` table."""
    table = Table(show_edge=False, header_style="bold")
    table.add_column("name", no_wrap=True)
    columns = (
        "schedule",
        "tz",
        "task",
        "next run",
        "last run",
        "paused",
        "source",
        "error",
        "last error",
    )
    for column in columns:
        table.add_column(column)
    for row in rows:
        table.add_row(
            row.name,
            f"{row.kind} {row.expr}",
            row.timezone,
            row.task,
            when(row.next_run, now),
            when(row.last_run, now),
            "yes" if row.paused else "no",
            row.source,
            "-" if row.error is None else f"[red]{escape(row.error)}[/]",
            last_error_text(row.last_error, now),
        )
    return table


def last_error_text(error: dict[str, Any] | None, now: float) -> str:
    """The `last error` cell: why the scheduler could not enqueue the latest occurrence,
    and when (rich markup; the message is escaped)."""
    if error is None:
        return "-"
    message = escape(f"{error['type']}: {error['message']}")
    return f"[red]{message}[/] ({when(error['at'], now)})"


@schedules_cli.command("list")
@friendly
def list_command(url: UrlOpt = None, as_json: JsonOpt = False, app_ref: AppOpt = None) -> None:
    """Every schedule: definition, timezone, next and last run, paused, code or runtime,
    and its error: a definition that cannot be read or, given the app (`--app`), a job
    the scheduler cannot enqueue (a task the app does not know, an invalid payload);
    and its last error: why the scheduler failed to enqueue its latest occurrence
    (cleared by the next successful run)."""

    async def read(app: Conveyor) -> tuple[list[ScheduleInfo], LeaseInfo | None]:
        return await app.list_schedules(), await app.scheduler_leader()

    code = configured_app(app_ref)
    rows, lease = operate(url, read, app=code)
    if code is not None:
        for row in rows:
            row.error = row.error or occurrence_error(code, row)
    if as_json:
        print_json([row.to_dict() for row in rows])
        return
    now = time.time()
    if not rows:
        say("no schedules (code-defined ones appear once `conveyor scheduler` has started)")
    else:
        console().print(schedules_table(rows, now))
    say(
        f"leader: {lease.holder} (lease {lease.ttl_ms / 1000:.1f}s left)"
        if lease
        else "leader: none (no scheduler is running)"
    )


@schedules_cli.command("add")
@friendly
def add_command(
    name: NameArg,
    task: Annotated[str, typer.Option(help="task the jobs run", show_default=False)],
    cron: Annotated[
        str | None, typer.Option(help="cron expression, e.g. '0 3 * * *'", show_default=False)
    ] = None,
    every: Annotated[
        str | None, typer.Option(help="interval, e.g. 5m, 1h30m, 90", show_default=False)
    ] = None,
    queue: Annotated[
        str | None, typer.Option(help="queue of the jobs (default: the task's queue)")
    ] = None,
    payload: Annotated[str | None, typer.Option(help="JSON object for every job")] = None,
    timezone: Annotated[str, typer.Option(help="IANA timezone of --cron")] = "UTC",
    missed: Annotated[
        str, typer.Option(help="occurrences missed while no scheduler ran: skip | run_once")
    ] = "skip",
    url: UrlOpt = None,
    as_json: JsonOpt = False,
    app_ref: AppOpt = None,
) -> None:
    """Add (or replace) a runtime schedule; the leading scheduler runs it within a second.

    With the app (`--app` or CONVEYOR_APP) a task it does not register is refused, unless
    `--queue` says it is another service's; without it, the task cannot be checked.
    """
    spec = build_spec(name, task, cron, every, queue, payload, timezone, missed)
    code = configured_app(app_ref)
    if code is None:
        warn(f"task {task!r} not checked: pass --app MODULE:ATTR (or set CONVEYOR_APP)")
    elif task not in code.tasks:
        if queue is None:
            raise ConfigError(
                f"task {task!r} is not registered in the app "
                f"({did_you_mean(task, code.tasks)}): fix the name, or pass --queue if "
                "another service's workers run it"
            )
        warn(f"task {task!r} is not registered in the app: queue {queue!r} must run it")
    else:
        code.build(spec.task, spec.payload, queue=spec.queue, **spec.options)

    async def act(app: Conveyor) -> None:
        await app.add_schedule(spec)

    operate(url, act, app=code)
    report(as_json, {"name": spec.name, "added": spec.describe}, f"added {spec.name}")


def occurrence_error(app: Conveyor, row: ScheduleInfo) -> str | None:
    """Why the scheduler running `app` could not enqueue `row`'s jobs, or None."""
    if row.error is not None or row.spec is None:
        return row.error
    try:
        app.build(row.spec.task, row.spec.payload, queue=row.spec.queue, **row.spec.options)
    except ConveyorError as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


def build_spec(
    name: str,
    task: str,
    cron: str | None,
    every: str | None,
    queue: str | None,
    payload: str | None,
    timezone: str,
    missed: str,
) -> ScheduleSpec:
    """The spec `schedules add` describes.

    Raises:
        ConfigError: not exactly one of --cron / --every, bad JSON, or an invalid field.
    """
    if (cron is None) == (every is None):
        raise ConfigError("give exactly one of --cron '0 3 * * *' or --every 5m")
    body: Any = {}
    if payload is not None:
        try:
            body = orjson.loads(payload)
        except orjson.JSONDecodeError as exc:
            raise ConfigError(f"--payload is not JSON ({exc}): e.g. '{{\"id\": 42}}'") from exc
    if cron is not None:
        return cron_schedule(
            cron, task=task, name=name, timezone=timezone, payload=body, queue=queue, missed=missed
        )
    if timezone != "UTC":
        raise ConfigError("--timezone applies to --cron schedules only")
    return every_schedule(
        parse_duration(str(every)), task=task, name=name, payload=body, queue=queue, missed=missed
    )


def report(as_json: bool, doc: dict[str, Any], line: str) -> None:
    """One line, or the JSON document with `--json`."""
    if as_json:
        print_json(doc)
    else:
        say(line)


@schedules_cli.command("remove")
@friendly
def remove_command(name: NameArg, url: UrlOpt = None, as_json: JsonOpt = False) -> None:
    """Delete a runtime schedule (code-defined ones are removed from the code)."""
    operate(url, lambda app: app.remove_schedule(name))
    report(as_json, {"name": name, "removed": True}, f"removed {name}")


@schedules_cli.command("pause")
@friendly
def pause_command(name: NameArg, url: UrlOpt = None, as_json: JsonOpt = False) -> None:
    """Stop enqueueing a schedule's jobs (occurrences while paused never run)."""
    operate(url, lambda app: app.pause_schedule(name, True))
    report(as_json, {"name": name, "paused": True}, f"paused {name}")


@schedules_cli.command("resume")
@friendly
def resume_command(name: NameArg, url: UrlOpt = None, as_json: JsonOpt = False) -> None:
    """Start enqueueing a paused schedule's jobs again, from its next occurrence."""
    operate(url, lambda app: app.pause_schedule(name, False))
    report(as_json, {"name": name, "paused": False}, f"resumed {name}")
