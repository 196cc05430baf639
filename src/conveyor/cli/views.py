"""Read commands: `queues`, `jobs`, `job`, `status` (tables, or JSON with `--json`).

The numbers come from the shared read model (`conveyor.status`), so the CLI, the HTTP
API and the dashboard agree.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any

import orjson
import typer
from rich.box import SIMPLE_HEAD
from rich.console import Group, RenderableType
from rich.json import JSON
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from ..app import Conveyor, check_queue
from ..job import Job, JobState
from ..status import format_duration, policy_in_effect, queue_overview, status_document
from .common import (
    AppOpt,
    JobIdArg,
    JsonOpt,
    QueueArg,
    UrlOpt,
    cli,
    configured_app,
    console,
    friendly,
    operate,
    print_json,
    say,
    warn_unknown,
    when,
)


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


def flow_detail(flow: dict[str, Any]) -> RenderableType:
    """The flow a job belongs to (`app.flow_summary`): its parent and its children."""
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column()
    parent = flow["parent"]
    if parent is not None:
        grid.add_row("parent", Text(f"{parent['id']}  {parent['task']}  {parent['state']}"))
        grid.add_row("on failure", Text(str(flow["policy"])))
    for i, kid in enumerate(flow["children"]):
        grid.add_row(
            "children" if i == 0 else "", Text(f"{kid['id']}  {kid['task']}  {kid['state']}")
        )
    shown = len(flow["children"])
    if flow["children_total"] > shown:
        grid.add_row("", Text(f"... {flow['children_total'] - shown} more"))
    return Panel(grid, title="flow", title_align="left")


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
        console().print(queue_table(rows))


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
        # Unsealed: each CLI run is a new process (a sealed cursor would not outlive it),
        # and whoever runs it holds the engine URL, so the positions hide nothing.
        page = await app.list_jobs(
            name, state, tenant=tenant, limit=limit, cursor=cursor, sealed=False
        )
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
    console().print(table)
    if next_cursor:
        say(f"more: conveyor jobs {name} --state {state.value} --cursor {next_cursor}")


@cli.command("job")
@friendly
def job_command(
    job_id: JobIdArg, url: UrlOpt = None, as_json: JsonOpt = False, app_ref: AppOpt = None
) -> None:
    """Inspect one job: payload, options, timeline, every attempt's error and traceback.

    With the app (`--app` or CONVEYOR_APP), the timeout and backoff its task applies."""

    async def read(app: Conveyor) -> tuple[Job, float, dict[str, Any] | None]:
        return await app.get_job(job_id), app.clock.now(), await app.flow_summary(job_id)

    code = configured_app(app_ref)
    job, now, flow = operate(url, read, app=code)
    policy = policy_in_effect(code or Conveyor("memory://"), job)
    if as_json:
        print_json({**job.to_dict(), "in_effect": policy, "flow": flow})
    else:
        console().print(job_detail(job, now, policy))
        if flow is not None:
            console().print(flow_detail(flow))


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
            durability = "durable" if engine["durable"] else "NOT durable"
            server = engine.get("server")
            if server:
                durability += (
                    f", maxmemory-policy {server['maxmemory_policy']}, "
                    f"appendonly {server['appendonly']}, appendfsync {server['appendfsync']}"
                )
            say(f"engine {engine['url']}: ok, {engine['latency_ms']} ms, {durability}")
            for problem in (server or {}).get("problems", []):
                say(f"  {'ERROR' if 'maxmemory-policy' in problem else 'WARNING'}: {problem}")
        else:
            say(f"engine {engine['url']}: UNAVAILABLE: {engine['error']}")
        if doc["queues"]:
            console().print(queue_table(doc["queues"]))
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
            console().print(workers)
        else:
            say("no live workers")
    if engine["status"] != "ok":
        raise typer.Exit(1)


# --- job operations ------------------------------------------------------------------------
