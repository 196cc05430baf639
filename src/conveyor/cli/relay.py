"""`conveyor relay`: committed Postgres outbox rows become jobs in another engine."""

from __future__ import annotations

from typing import Annotated

import typer

from .common import cli, console, friendly, load_app, run_async, setup_logging


@cli.command()
@friendly
def relay(
    target: Annotated[str, typer.Argument(help="your app as MODULE:ATTR, e.g. myproject.jobs:app")],
    source: Annotated[
        str,
        typer.Option(
            "--from", help="the Postgres whose outbox is relayed: postgresql://...?schema=..."
        ),
    ],
    to: Annotated[
        str | None,
        typer.Option("--to", help="engine the jobs go to (default: the app's, CONVEYOR_URL)"),
    ] = None,
    batch: Annotated[int, typer.Option(help="rows per step (one transaction)")] = 100,
    interval: Annotated[
        float, typer.Option(help="seconds between polls while no NOTIFY arrives")
    ] = 0.1,
    health_port: Annotated[
        int, typer.Option(help="port for /health/* and /metrics; 0 disables")
    ] = 3101,
    log_level: Annotated[str, typer.Option(help="DEBUG, INFO, WARNING, ERROR")] = "INFO",
) -> None:
    """Relay outbox rows (written by `app.outbox(conn).add(...)` in your transactions)
    into the target engine, each exactly once; several relays may run at once."""
    from ..relay import Relay

    setup_logging(log_level, "text")
    app = load_app(target)
    if to is not None:
        app.configure(url=to)
    destination = app.url
    r = Relay(source, app, batch=batch, interval=interval, health_port=health_port)
    console().print(
        f"relay {r.source.url.split('@')[-1]} -> {destination.split('@')[-1]} "
        f"batch={batch} interval={interval}s health port={health_port or 'off'}"
    )
    run_async(r.run())
