"""Operations: every runbook procedure as one `conveyor` command.

Commands work on queue names and job ids, so an operator needs no access to the
application's code: `--url` (or `CONVEYOR_URL` / `REDIS_URL`) is all they take. Read
commands print a table, or JSON with `--json`; mutating commands print one line (JSON
with `--json`). Mistakes print one `error: Type: message` line and exit 2; a drain that
times out and `status` on an unreachable engine exit 1, so scripts can branch on them.

The numbers come from the shared read model (`conveyor.status`), so the CLI, the HTTP
API and the dashboard agree.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable, Iterable, Sequence
from datetime import UTC, datetime
from typing import Annotated, Any, TypeVar

import orjson
import typer
from rich.box import SIMPLE_HEAD
from rich.console import Group, RenderableType
from rich.json import JSON
from rich.markup import escape
from rich.panel import Panel
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from ..app import Conveyor, check_queue
from ..errors import ConfigError, InvalidPayload
from ..job import Job, JobState
from ..settings import Settings
from ..status import (
    format_duration,
    parse_duration,
    policy_in_effect,
    queue_overview,
    status_document,
)
from .common import (
    AppOpt,
    bind_app,
    cli,
    configured_app,
    console,
    declared_queues,
    did_you_mean,
    err_console,
    fail,
    friendly,
    run_async,
)

T = TypeVar("T")

UrlOpt = Annotated[
    str | None,
    typer.Option(
        "--url", help="engine URL (env CONVEYOR_URL, then REDIS_URL; sqlite:///conveyor.db)"
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="print machine-readable JSON")]
QueueArg = Annotated[str, typer.Argument(help="queue name", show_default=False)]
JobIdArg = Annotated[str, typer.Argument(help="job id, as `conveyor jobs` prints it")]


# --- shared helpers ------------------------------------------------------------------------
def operate(
    url: str | None, action: Callable[[Conveyor], Awaitable[T]], *, app: Conveyor | None = None
) -> T:
    """Run `action` against the engine named by `url` (or the environment), then close.

    Args:
        url: the `--url` flag; `None` falls back to `CONVEYOR_URL`, `REDIS_URL`, then
            the URL in `app`'s code (if given), then the embedded SQLite file.
        action: what to do with the connected app.
        app: the user's app (`--app`), for commands that use its tasks; its URL in code
            comes after the flag and the environment.

    Returns:
        What `action` returned.

    Raises:
        typer.Exit: a Conveyor error (bad setting, unknown job, engine down), printed as
            one line, exit code 2.
    """
    settings = Settings.load(url=url)
    used = app or Conveyor()
    bind_app(used, settings, url)

    async def run() -> T:
        try:
            return await action(used)
        finally:
            await used.close()

    return run_async(run())


def say(text: str) -> None:
    """Print one line of plain output (no rich markup: ids and messages are user data)."""
    console.print(text, markup=False, highlight=False, soft_wrap=True)


def warn(text: str) -> None:
    """Print one warning line on stderr, where it never mixes with `--json` output."""
    err_console.print(Text.assemble(("warning: ", "bold yellow"), text), soft_wrap=True)


def print_json(doc: Any) -> None:
    """Print `doc` as indented JSON on stdout, bypassing rich (no wrapping or colour)."""
    sys.stdout.write(orjson.dumps(doc, option=orjson.OPT_INDENT_2).decode() + "\n")
    sys.stdout.flush()


def split_queues(text: str) -> list[str]:
    """`"a,b, c"` -> `["a", "b", "c"]`, each checked like every queue name.

    Raises:
        ConfigError: no queue given, or a name is invalid.
    """
    names = [name.strip() for name in text.split(",") if name.strip()]
    if not names:
        raise ConfigError("no queue given: pass one or more comma-separated queue names")
    return [check_queue(name) for name in names]


async def warn_unknown(app: Conveyor, names: Iterable[str]) -> list[str]:
    """Warn about queues nobody declared: never held a job and no task of the app (if
    one was given) uses them. Most often a typo, which would otherwise make `drain`
    succeed at once or `pause` guard nothing. Returns the unknown names."""
    known = set(await app.queue_names()) | (declared_queues(app) if app.tasks else set())
    unknown = [name for name in names if name not in known]
    for name in unknown:
        warn(f"queue {name!r} has never held a job ({did_you_mean(name, known)})")
    return unknown


def when(timestamp: float | None, now: float) -> str:
    """`2026-01-01 10:00:00Z (3m12s ago)`, or `-` when it has not happened."""
    if timestamp is None:
        return "-"
    stamp = datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%d %H:%M:%SZ")
    delta = now - timestamp
    relative = f"{format_duration(delta)} ago" if delta >= 0 else f"in {format_duration(-delta)}"
    return f"{stamp} ({relative})"


def job_moment(job: Job, now: float) -> str:
    """The time that matters for a job in its state, relative to now."""
    if job.state == JobState.SCHEDULED:
        return f"due in {format_duration(max(0.0, (job.scheduled_at or now) - now))}"
    if job.state == JobState.RUNNING:
        return f"started {format_duration(now - (job.started_at or now))} ago"
    if job.state == JobState.PENDING:
        return f"waiting {format_duration(now - job.created_at)}"
    return f"finished {format_duration(now - (job.finished_at or job.created_at))} ago"


def queue_table(rows: Sequence[dict[str, Any]]) -> Table:
    """The `conveyor queues` table (also part of `conveyor status`)."""
    table = Table(box=SIMPLE_HEAD, header_style="bold", pad_edge=False, collapse_padding=True)
    table.add_column("queue", no_wrap=True)
    for state in JobState:
        table.add_column(state.value, justify="right")
    table.add_column("paused")
    table.add_column("oldest pending", justify="right")
    table.add_column("done/min", justify="right")
    table.add_column("limits")
    table.add_column("held back")
    for row in rows:
        limits = ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in row["limits"].items())
        table.add_row(
            Text(row["queue"]),
            *(str(row[state.value]) for state in JobState),
            Text("paused", style="bold yellow") if row["paused"] else "",
            format_duration(row["oldest_pending_age_seconds"]),
            str(row["throughput_per_min"]),
            Text(limits or "-"),
            Text("; ".join(row["held_back"]) or "-", style="yellow" if row["held_back"] else ""),
        )
    return table


def job_detail(job: Job, now: float, policy: dict[str, Any] | None = None) -> RenderableType:
    """Everything about one job: options (with the timeout and backoff in effect,
    `status.policy_in_effect`), payload, timeline, every attempt's error."""
    info = Table.grid(padding=(0, 2))
    info.add_column(style="bold")
    info.add_column()
    fields: list[tuple[str, Any]] = [
        ("id", job.id),
        ("queue", job.queue),
        ("task", job.task),
        ("state", job.state.value),
        ("attempts", f"{job.attempt} of {job.max_attempts}"),
        ("priority", job.priority),
        ("tenant", job.tenant),
        ("dedupe key", job.dedupe_key),
        ("timeout", in_effect_text(policy, "timeout", job)),
        ("backoff", in_effect_text(policy, "backoff", job)),
        ("worker", job.worker),
        ("progress", None if job.progress_value is None else str(job.progress_value)),
    ]
    for name, value in fields:
        info.add_row(name, Text("-" if value is None else str(value)))

    timeline = Table.grid(padding=(0, 2))
    timeline.add_column(style="bold")
    timeline.add_column()
    for name, stamp in (
        ("created", job.created_at),
        ("scheduled", job.scheduled_at),
        ("started", job.started_at),
        ("finished", job.finished_at),
    ):
        timeline.add_row(name, when(stamp, now))

    parts: list[RenderableType] = [
        info,
        Panel(JSON(orjson.dumps(job.payload).decode()), title="payload", title_align="left"),
        Panel(timeline, title="timeline", title_align="left"),
    ]
    if job.result is not None:
        parts.append(
            Panel(JSON(orjson.dumps(job.result).decode()), title="result", title_align="left")
        )
    for error in job.errors:
        body = Text(f"{error.type}: {error.message}", style="bold red")
        if error.traceback:
            body.append("\n\n" + error.traceback.rstrip(), style="default")
        title = f"attempt {error.attempt} failed {when(error.at or None, now)}"
        parts.append(Panel(body, title=title, title_align="left"))
    if not job.errors:
        parts.append(Text("no failed attempts"))
    return Group(*parts)


def in_effect_text(policy: dict[str, Any] | None, which: str, job: Job) -> str:
    """One line of `conveyor job`: the value a worker applies and where it comes from."""
    if policy is None:
        policy = {"timeout_from": "unknown", "backoff_from": "unknown"}
    source = policy[f"{which}_from"]
    if source == "unknown":
        return f"set by task {job.task!r} in the worker's code (pass --app to see it)"
    if which == "timeout":
        value = policy["timeout_seconds"]
        shown = "no limit" if value is None else f"{value:g}s"
    else:
        shown = str(policy["backoff_text"])
    return f"{shown} ({'set on this job' if source == 'job' else 'task default'})"


def job_action(
    job_id: str, url: str | None, as_json: bool, verb: str, call: Callable[[Conveyor], Any]
) -> None:
    """Shared body of `retry`, `promote` and `cancel`: act on one job, report its state."""

    async def act(app: Conveyor) -> Job:
        job: Job = await call(app)
        return job

    job = operate(url, act)
    if as_json:
        print_json(job.to_dict())
    else:
        say(f"{verb} {job.id}: now {job.state.value}")


def queue_action(queue: str, url: str | None, as_json: bool, paused: bool) -> None:
    """Shared body of `pause` and `resume`: flip the flag, then show the queue's depth."""
    name = check_queue(queue)

    async def act(app: Conveyor) -> dict[str, Any]:
        await warn_unknown(app, [name])
        await (app.pause(name) if paused else app.resume(name))
        return (await queue_overview(app, [name]))[0]

    row = operate(url, act)
    if as_json:
        print_json(row)
    elif paused:
        say(
            f"paused queue {name}: workers stop claiming, producers keep enqueueing "
            f"({row['pending']} pending, {row['running']} still running)"
        )
    else:
        say(f"resumed queue {name}: workers claim again ({row['pending']} pending)")


def remaining(rows: Sequence[dict[str, Any]]) -> int:
    """What a drain waits for: pending + running. Scheduled jobs are future work (delays
    and retry back-offs, possibly hours away) and would make a drain never finish."""
    return sum(row["pending"] + row["running"] for row in rows)


def describe_left(rows: Sequence[dict[str, Any]]) -> str:
    """`default: 2000 pending, 0 running; mail: 3 pending, 1 running (5 scheduled)`."""
    parts = []
    for row in rows:
        text = f"{row['queue']}: {row['pending']} pending, {row['running']} running"
        if row["scheduled"]:
            text += f" ({row['scheduled']} scheduled)"
        if row["paused"]:
            text += " (paused)"
        parts.append(text)
    return "; ".join(parts)


# --- read commands ---------------------------------------------------------------------------
@cli.command("queues")
@friendly
def queues_command(url: UrlOpt = None, as_json: JsonOpt = False) -> None:
    """Depth of every queue per state, pause flag, oldest pending age, throughput/min."""
    rows = operate(url, queue_overview)
    if as_json:
        print_json(rows)
    elif not rows:
        say("no queues yet: nothing has been enqueued on this engine")
    else:
        console.print(queue_table(rows))


@cli.command("jobs")
@friendly
def jobs_command(
    queue: QueueArg,
    state: Annotated[
        JobState, typer.Option(help="which jobs to list (failed = the dead-letter queue)")
    ] = JobState.PENDING,
    tenant: Annotated[str | None, typer.Option(help="only this tenant's jobs")] = None,
    limit: Annotated[int, typer.Option(min=1, max=1000, help="jobs per page")] = 50,
    cursor: Annotated[
        str | None, typer.Option(help="continue a listing (printed under the last page)")
    ] = None,
    url: UrlOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """List one queue's jobs in a state: pending in claim order, others newest first."""
    name = check_queue(queue)

    async def read(app: Conveyor) -> tuple[list[Job], str | None, float]:
        await warn_unknown(app, [name])
        page = await app.list_jobs(name, state, tenant=tenant, limit=limit, cursor=cursor)
        return page.jobs, page.cursor, app.clock.now()

    jobs, next_cursor, now = operate(url, read)
    if as_json:
        print_json(
            {
                "queue": name,
                "state": state.value,
                "jobs": [j.to_dict() for j in jobs],
                "cursor": next_cursor,
            }
        )
        return
    if not jobs:
        say(f"no {state.value} jobs in queue {name}" + (f" for tenant {tenant}" if tenant else ""))
        return
    table = Table(box=SIMPLE_HEAD, header_style="bold", pad_edge=False, collapse_padding=True)
    for column in ("id", "task", "tenant", "attempt", "prio", "when", "last error"):
        # Ids are what operators copy into the next command: never cut or wrap them;
        # the error message gives way first (`conveyor job ID` shows it in full).
        table.add_column(
            column,
            no_wrap=column != "last error",
            overflow="ellipsis",
            min_width=max(len(j.id) for j in jobs) if column == "id" else None,
        )
    for job in jobs:
        error = job.last_error
        table.add_row(
            Text(job.id),
            Text(job.task),
            Text(job.tenant or "-"),
            f"{job.attempt}/{job.max_attempts}",
            str(job.priority),
            job_moment(job, now),
            Text(f"{error.type}: {error.message}" if error else "-", no_wrap=True),
        )
    console.print(table)
    if next_cursor:
        say(f"more: conveyor jobs {name} --state {state.value} --cursor {next_cursor}")


@cli.command("job")
@friendly
def job_command(
    job_id: JobIdArg, url: UrlOpt = None, as_json: JsonOpt = False, app_ref: AppOpt = None
) -> None:
    """Inspect one job: payload, options, timeline, every attempt's error and traceback.

    With the app (`--app` or CONVEYOR_APP), the timeout and backoff its task applies."""

    async def read(app: Conveyor) -> tuple[Job, float]:
        return await app.get_job(job_id), app.clock.now()

    code = configured_app(app_ref)
    job, now = operate(url, read, app=code)
    policy = policy_in_effect(code or Conveyor("memory://"), job)
    if as_json:
        print_json({**job.to_dict(), "in_effect": policy})
    else:
        console.print(job_detail(job, now, policy))


@cli.command("status")
@friendly
def status_command(
    url: UrlOpt = None,
    as_json: JsonOpt = False,
    timeout: Annotated[
        float, typer.Option(min=0.1, help="seconds to wait for the engine before 'unavailable'")
    ] = 5.0,
) -> None:
    """The incident-polling document: engine health and latency, queues, live workers.

    Exits 1 when the engine is unavailable (the document still prints).
    """
    doc = operate(url, lambda app: status_document(app, timeout=timeout))
    engine = doc["engine"]
    if as_json:
        print_json(doc)
    else:
        if engine["status"] == "ok":
            durability = "durable" if engine["durable"] else "NOT durable (tests only)"
            say(f"engine {engine['url']}: ok, {engine['latency_ms']} ms, {durability}")
        else:
            say(f"engine {engine['url']}: UNAVAILABLE: {engine['error']}")
        if doc["queues"]:
            console.print(queue_table(doc["queues"]))
        workers = Table(box=SIMPLE_HEAD, header_style="bold", pad_edge=False, collapse_padding=True)
        for column in ("worker", "host/pid", "queues", "in flight", "last heartbeat"):
            workers.add_column(column)
        for w in doc["workers"]:
            workers.add_row(
                Text(str(w["id"])),
                Text(f"{w['host']}/{w['pid']}"),
                Text(",".join(w["queues"] or [])),
                f"{w['in_flight']}/{w['concurrency']}",
                f"{format_duration(w['last_heartbeat_age_seconds'])} ago",
            )
        if doc["workers"]:
            console.print(workers)
        else:
            say("no live workers")
    if engine["status"] != "ok":
        raise typer.Exit(1)


# --- job operations ------------------------------------------------------------------------
@cli.command("retry")
@friendly
def retry_command(job_id: JobIdArg, url: UrlOpt = None, as_json: JsonOpt = False) -> None:
    """Send a failed or cancelled job back to pending with a fresh attempt budget."""
    job_action(job_id, url, as_json, "retried", lambda app: app.retry_job(job_id))


@cli.command("promote")
@friendly
def promote_command(job_id: JobIdArg, url: UrlOpt = None, as_json: JsonOpt = False) -> None:
    """Run a scheduled (delayed or retry-waiting) job now."""
    job_action(job_id, url, as_json, "promoted", lambda app: app.promote_job(job_id))


@cli.command("cancel")
@friendly
def cancel_command(job_id: JobIdArg, url: UrlOpt = None, as_json: JsonOpt = False) -> None:
    """Cancel a scheduled, pending or running job (a running job's lease is revoked)."""
    job_action(job_id, url, as_json, "cancelled", lambda app: app.cancel_job(job_id))


@cli.command("enqueue")
@friendly
def enqueue_command(
    task: Annotated[str, typer.Argument(help="task name the workers registered")],
    queue: Annotated[
        str | None,
        typer.Option(help="queue the task's workers consume (default with --app: the task's)"),
    ] = None,
    payload: Annotated[str, typer.Option(help="the job's payload, a JSON object")] = "{}",
    delay: Annotated[str | None, typer.Option(help="run after this long: 90, 30s, 5m, 2h")] = None,
    priority: Annotated[int, typer.Option(help="-100..100, higher runs first")] = 0,
    tenant: Annotated[str | None, typer.Option(help="tenant, for per-tenant fairness")] = None,
    dedupe_key: Annotated[
        str | None, typer.Option(help="skip if a live job already holds this key")
    ] = None,
    max_attempts: Annotated[
        int | None, typer.Option(help="attempts before failed (the task's with --app; else 3)")
    ] = None,
    url: UrlOpt = None,
    as_json: JsonOpt = False,
    app_ref: AppOpt = None,
) -> None:
    """Enqueue one job and print its id (or the live job holding the dedupe key).

    With the app (`--app` or CONVEYOR_APP), the task's declared queue, attempts, backoff
    and timeout apply, as when your code enqueues it; without it, pass --queue."""
    code = configured_app(app_ref)
    if queue is None and (code is None or task not in code.tasks):
        hint = f" ({did_you_mean(task, code.tasks)})" if code is not None else ""
        raise fail(
            f"task {task!r} is not registered in the app{hint}: pass --queue to enqueue it by "
            "name for another service's workers"
            if code is not None
            else "pass --queue, or --app MODULE:ATTR to use the task's declared queue and options"
        )
    try:
        data = orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        raise InvalidPayload(
            f"--payload is not valid JSON ({exc}): pass a JSON object, e.g. "
            """--payload '{"to": "a@example.com"}'"""
        ) from None
    options: dict[str, Any] = {
        "queue": queue,
        "priority": priority,
        "tenant": tenant,
        "dedupe_key": dedupe_key,
        "max_attempts": max_attempts,
        "delay": None if delay is None else parse_duration(delay),
    }

    async def act(app: Conveyor) -> Job:
        if queue is not None:
            await warn_unknown(app, [queue])
        return await app.enqueue(task, data, **options)

    job = operate(url, act, app=code)
    if as_json:
        print_json(job.to_dict())
    else:
        say(job.id)


# --- queue operations ------------------------------------------------------------------------
@cli.command("pause")
@friendly
def pause_command(queue: QueueArg, url: UrlOpt = None, as_json: JsonOpt = False) -> None:
    """Stop workers claiming from QUEUE; producers keep enqueueing (jobs stay pending)."""
    queue_action(queue, url, as_json, paused=True)


@cli.command("resume")
@friendly
def resume_command(queue: QueueArg, url: UrlOpt = None, as_json: JsonOpt = False) -> None:
    """Let workers claim from QUEUE again."""
    queue_action(queue, url, as_json, paused=False)


@cli.command("retry-all")
@friendly
def retry_all_command(
    queue: QueueArg,
    state: Annotated[
        JobState, typer.Option(help="failed (the dead-letter queue) or cancelled")
    ] = JobState.FAILED,
    url: UrlOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Retry every failed (or cancelled) job of QUEUE with a fresh attempt budget."""
    name = check_queue(queue)

    async def act(app: Conveyor) -> int:
        await warn_unknown(app, [name])
        return await app.retry_all(name, state)

    count = operate(url, act)
    if as_json:
        print_json({"queue": name, "state": state.value, "retried": count})
    else:
        say(f"retried {count} {state.value} job(s) of queue {name}: now pending")


@cli.command("clean")
@friendly
def clean_command(
    queue: QueueArg,
    state: Annotated[JobState, typer.Option(help="completed, failed or cancelled")],
    older_than: Annotated[
        str, typer.Option(help="only jobs finished longer ago than this: 7d, 12h, 30m, 90")
    ],
    limit: Annotated[int, typer.Option(min=1, help="delete at most this many")] = 10_000,
    url: UrlOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Delete finished jobs of QUEUE in one state, older than a given age."""
    name = check_queue(queue)
    seconds = parse_duration(older_than)

    async def act(app: Conveyor) -> int:
        await warn_unknown(app, [name])
        return await app.clean(name, state, seconds, limit)

    count = operate(url, act)
    if as_json:
        print_json(
            {"queue": name, "state": state.value, "older_than_seconds": seconds, "removed": count}
        )
        return
    say(f"removed {count} {state.value} job(s) older than {older_than.strip()} from queue {name}")
    if count == limit:
        say(f"the limit of {limit} was reached: run it again to remove more")


@cli.command("purge")
@friendly
def purge_command(
    queue: QueueArg,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="do not ask for confirmation")] = False,
    url: UrlOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Delete EVERY job of QUEUE in every state, and its dedupe keys. Irreversible."""
    name = check_queue(queue)
    if not yes:

        async def total(app: Conveyor) -> int:
            await warn_unknown(app, [name])
            row = (await queue_overview(app, [name]))[0]
            return sum(int(row[s.value]) for s in JobState)

        count = operate(url, total)
        # Without a terminal nobody can answer; guessing "yes" in a script is how queues
        # get wiped by accident, so refuse and say how to confirm.
        if not sys.stdin.isatty():
            raise fail(
                escape(
                    f"refusing to purge queue {name!r} ({count} jobs) without confirmation: "
                    "stdin is not a terminal; pass --yes to confirm"
                )
            )
        prompt = f"Delete all {count} jobs of queue {name!r} in every state? This cannot be undone"
        if not typer.confirm(prompt, default=False):
            raise fail("purge aborted: nothing was deleted", code=1)
    removed = operate(url, lambda app: app.purge(name))
    if as_json:
        print_json({"queue": name, "removed": removed})
    else:
        say(f"purged queue {name}: {removed} job(s) deleted")


@cli.command("drain")
@friendly
def drain_command(
    queues: Annotated[str, typer.Argument(help="comma-separated queues, e.g. sla,default")],
    timeout: Annotated[float, typer.Option(min=0, help="give up after this many seconds")] = 300,
    interval: Annotated[float, typer.Option(min=0.01, help="seconds between checks")] = 0.5,
    url: UrlOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Wait until QUEUES have nothing pending or running (scheduled jobs are not waited
    for). Pauses nothing: stop producers first. Exits 1 on timeout, naming what is left."""
    names = split_queues(queues)

    async def wait(app: Conveyor) -> tuple[bool, float, list[dict[str, Any]]]:
        unknown = await warn_unknown(app, names)
        if unknown:  # "drained" at once would tell a deploy script a lie
            raise fail(
                f"nothing to drain: {', '.join(map(repr, unknown))} never held a job; "
                "check the queue names (`conveyor queues` lists them)"
            )
        rows = await queue_overview(app, names)
        for row in rows:
            if row["paused"] and row["pending"]:
                warn(
                    f"queue {row['queue']} is paused: its {row['pending']} pending jobs will "
                    f"not drain until `conveyor resume {row['queue']}`"
                )
        served = {q for w in await app.workers() for q in w.get("queues") or []}
        idle = [name for name in names if name not in served]
        if idle and remaining(rows):
            warn(f"no live worker consumes {', '.join(idle)}: their jobs will not drain")
        start = app.clock.monotonic()
        total = max(remaining(rows), 1)
        with Progress(
            TextColumn("draining {task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=err_console,
            disable=as_json,
        ) as progress:
            bar = progress.add_task(",".join(names), total=total)
            while True:
                left = remaining(rows)
                # New arrivals can grow the backlog mid-drain: the bar's total grows too.
                total = max(total, left)
                progress.update(bar, total=total, completed=total - left)
                elapsed = app.clock.monotonic() - start
                if left == 0 or elapsed >= timeout:
                    return left == 0, elapsed, rows
                await asyncio.sleep(min(interval, timeout - elapsed))
                rows = await queue_overview(app, names)

    drained, elapsed, rows = operate(url, wait)
    if as_json:
        print_json({"drained": drained, "elapsed_seconds": round(elapsed, 3), "queues": rows})
        if not drained:
            raise typer.Exit(1)
    elif drained:
        say(f"drained {', '.join(names)} in {format_duration(elapsed)}")
    else:
        raise fail(escape(f"drain timed out after {timeout:g}s: {describe_left(rows)}"), code=1)
