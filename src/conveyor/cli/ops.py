"""Operations: every runbook procedure as one `conveyor` command.

Commands work on queue names and job ids, so an operator needs no access to the
application's code: `--url` (or `CONVEYOR_URL` / `REDIS_URL`) is all they take. Read
commands print a table, or JSON with `--json`; mutating commands print one line (JSON
with `--json`). Mistakes print one `error: Type: message` line and exit 2; a drain that
times out and `status` on an unreachable engine exit 1, so scripts can branch on them.

Read commands (`queues`, `jobs`, `job`, `status`) are in `views.py`; the shared options
and output helpers in `common.py`. Arguments are validated once, by the app facade.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable, Sequence
from typing import Annotated, Any

import orjson
import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from ..app import Conveyor, check_queue
from ..errors import InvalidPayload
from ..job import Job, JobState
from ..status import format_duration, parse_duration, queue_overview
from .common import (
    AppOpt,
    JobIdArg,
    JsonOpt,
    QueueArg,
    UrlOpt,
    cli,
    configured_app,
    did_you_mean,
    err_console,
    fail,
    friendly,
    operate,
    print_json,
    say,
    split_queues,
    warn,
    warn_unknown,
)


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
            console=err_console(),
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
