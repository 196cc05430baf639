"""`conveyor limits`: show or change a queue's fleet-wide limits at run time.

The engine stores and enforces them, so a change applies to every worker from its next
claim, without a restart. Workers started with limits in code (`app.limits`) or flags
(`--queue-concurrency`, `--tenant-concurrency`, `--rate`) store theirs again when they
start: make a lasting change there too.
"""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.box import SIMPLE_HEAD
from rich.table import Table

from ..app import Conveyor, check_queue
from .common import JsonOpt, QueueArg, UrlOpt, cli, console, friendly, operate, print_json, say


@cli.command("limits")
@friendly
def limits_command(
    queue: QueueArg,
    concurrency: Annotated[
        int | None,
        typer.Option(help="running jobs of the queue at once, across all workers"),
    ] = None,
    tenant_concurrency: Annotated[
        int | None,
        typer.Option(help="running jobs of one tenant at once (jobs without a tenant: no limit)"),
    ] = None,
    rate: Annotated[
        str | None,
        typer.Option(help="jobs started per window, e.g. 100/1s, 5/250ms, 1000/1m"),
    ] = None,
    tenant_rate: Annotated[str | None, typer.Option(help="the same per tenant, e.g. 10/1s")] = None,
    clear: Annotated[
        bool,
        typer.Option("--clear", help="remove the queue's limits (then apply any options given)"),
    ] = False,
    url: UrlOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Show or change QUEUE's fleet-wide limits (enforced by the engine for every worker).

    Without options it shows them. Options change only the limits they name; --clear
    starts from none. Example: conveyor limits mail --tenant-concurrency 2 --rate 100/1s
    """
    check_queue(queue)
    changing = clear or any(
        v is not None for v in (concurrency, tenant_concurrency, rate, tenant_rate)
    )

    async def action(app: Conveyor) -> dict[str, Any]:
        if changing:
            await app.change_limits(
                queue,
                clear=clear,
                concurrency=concurrency,
                tenant_concurrency=tenant_concurrency,
                rate=rate,
                tenant_rate=tenant_rate,
            )
        return await app.limits_document(queue)

    doc = operate(url, action)
    if as_json:
        print_json(doc)
        return
    limits = doc["limits"]
    if changing:
        set_to = ", ".join(f"{k}={v}" for k, v in limits.items() if v is not None)
        say(f"{queue}: limits {set_to or 'cleared (none)'}")
        return
    table = Table(box=SIMPLE_HEAD, title=f"limits of {queue} (fleet-wide)")
    table.add_column("limit")
    table.add_column("value")
    table.add_column("now", justify="right")
    now = {
        "concurrency": f"{doc['running']} running",
        "tenant_concurrency": ", ".join(f"{t}: {n}" for t, n in doc["tenant_running"].items())
        or "-",
    }
    for name, value in limits.items():
        table.add_row(name, "none" if value is None else str(value), now.get(name, ""))
    console().print(table)
    say(f"pending: {doc['pending']}")
