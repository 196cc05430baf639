"""`conveyor api`: serve the HTTP API (jobs, queues, status, live updates)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..app import Conveyor
from ..settings import Settings
from .common import (
    announce,
    bind_app,
    check_engine_url,
    cli,
    engine_label,
    friendly,
    load_app,
    run_async,
    setup_logging,
)


@cli.command("api")
@friendly
def api_command(
    target: Annotated[
        str | None,
        typer.Argument(
            help="your app as MODULE:ATTR (its tasks give queues and defaults); "
            "omit to serve a bare app that enqueues by queue name"
        ),
    ] = None,
    host: Annotated[
        str | None, typer.Option(help="address to listen on (env CONVEYOR_API_HOST; 127.0.0.1)")
    ] = None,
    port: Annotated[
        int | None, typer.Option(help="port to listen on (env CONVEYOR_API_PORT; 8000)")
    ] = None,
    url: Annotated[
        str | None,
        typer.Option(help="engine URL (env CONVEYOR_URL, REDIS_URL; sqlite:///conveyor.db)"),
    ] = None,
    tokens_file: Annotated[
        str | None,
        typer.Option(
            help='JSON {"admin": ..., "tenants": {token: tenant}} '
            "(env CONVEYOR_API_TOKENS_FILE; also CONVEYOR_API_ADMIN_TOKEN, "
            "CONVEYOR_API_TENANT_TOKENS)"
        ),
    ] = None,
    insecure: Annotated[
        bool,
        typer.Option("--insecure", help="allow serving without tokens on a non-loopback host"),
    ] = False,
    public_metrics: Annotated[
        bool | None,
        typer.Option(
            "--public-metrics",
            help="serve /metrics without the admin token (env CONVEYOR_API_PUBLIC_METRICS)",
        ),
    ] = None,
    public_host: Annotated[
        list[str] | None,
        typer.Option(
            help="host name besides localhost that an API without tokens answers to "
            "(repeatable; env CONVEYOR_API_PUBLIC_HOSTS)"
        ),
    ] = None,
    print_openapi: Annotated[
        bool,
        typer.Option("--print-openapi", help="print the OpenAPI schema and exit"),
    ] = False,
    write_openapi: Annotated[
        Path | None, typer.Option(help="write the OpenAPI schema to this file and exit")
    ] = None,
    log_level: Annotated[str | None, typer.Option(help="DEBUG, INFO, WARNING, ERROR")] = None,
) -> None:
    """Serve the HTTP API and WebSocket live updates."""
    from ..api import Tokens, check_exposure, create_api, openapi_json, serve
    from ..web import create_web_app

    if print_openapi or write_openapi:
        # The schema depends on no setting or engine; only the app's typed tasks add their
        # payload schemas (without an app it is docs/openapi.json).
        bare = load_app(target) if target else Conveyor("memory://")
        text = openapi_json(
            create_api(
                bare,
                tokens=Tokens(),
                metrics_prefix="",
                public_hosts=(),
                public_metrics=False,
            )
        )
        if write_openapi:
            write_openapi.write_text(text, encoding="utf-8")
        else:
            typer.echo(text, nl=False)
        return
    settings = Settings.load(
        url=url,
        api_host=host,
        api_port=port,
        log_level=log_level and log_level.upper(),
        api_public_metrics=public_metrics,
        api_public_hosts=tuple(public_host) if public_host else None,
    )
    setup_logging(settings.log_level, settings.log_format)
    tokens = Tokens.load(settings, tokens_file)
    check_exposure(settings.api_host, tokens, insecure=insecure)
    app = load_app(target)
    overridden = bind_app(app, settings, url)
    run_async(check_engine_url(app.url, "API", settings.require_noeviction))
    api = create_web_app(
        app,
        tokens=tokens,
        metrics_prefix=settings.metrics_prefix,
        owns_app=True,
        max_body_bytes=settings.api_max_body_bytes,
        public_hosts=settings.api_public_hosts,
        public_metrics=settings.api_public_metrics,
        ws_max_subscribers=settings.api_ws_max_subscribers,
        ws_max_per_token=settings.api_ws_max_per_token,
    )
    auth = (
        f"{'admin' if tokens.admin else 'no admin'} token, {len(tokens.tenants)} tenant token(s)"
        if tokens.enabled
        else "NO AUTH (open API: only localhost pages and tools can use it)"
    )
    engine = engine_label(app.url)
    announce(
        f"api on http://{settings.api_host}:{settings.api_port} "
        f"engine={engine}{overridden} auth: {auth}",
        settings.log_format,
        address=f"http://{settings.api_host}:{settings.api_port}",
        engine=engine,
        auth=auth,
    )
    serve(api, host=settings.api_host, port=settings.api_port, log_level=settings.log_level)
