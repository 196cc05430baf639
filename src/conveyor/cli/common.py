"""What every command shares: the typer app, app loading, logging and error output."""

from __future__ import annotations

import asyncio
import functools
import importlib
import logging
import os
import sys
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import orjson
import typer
from rich.console import Console
from rich.markup import escape

from ..app import Conveyor
from ..errors import ConfigError, ConveyorError
from ..settings import Settings, redact, url_source

cli = typer.Typer(
    name="conveyor",
    help="Conveyor: run workers and operate queues.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console()


@cli.callback()
def _root() -> None:
    """Conveyor: run workers and operate queues."""


err_console = Console(stderr=True)

T = TypeVar("T")


def fail(message: str, code: int = 2) -> typer.Exit:
    """Print one readable error line; return the Exit to raise."""
    # Messages carry ids and user data: escape them so "[...]" is not taken as markup.
    err_console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    return typer.Exit(code)


def run_async(coro: Coroutine[Any, Any, T]) -> T:
    """Run a command's coroutine, turning Conveyor errors into one line and exit 2."""
    try:
        return asyncio.run(coro)
    except ConveyorError as exc:
        raise fail(f"{type(exc).__name__}: {exc}") from None


def friendly(fn: Callable[..., T]) -> Callable[..., T]:
    """Decorator: ConveyorErrors raised outside asyncio also become one line."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> T:
        try:
            return fn(*args, **kwargs)
        except ConveyorError as exc:
            raise fail(f"{type(exc).__name__}: {exc}") from None

    return wrapper


def load_app(target: str | None) -> Conveyor:
    """Import `module:attr` (the user's app). Without a target, a bare app is used,
    which can operate queues by name but runs no tasks.

    Raises:
        ConfigError: the module or attribute cannot be found, or is not a Conveyor.
    """
    if not target:
        return Conveyor()
    module_name, sep, attr = target.partition(":")
    if not sep or not module_name or not attr:
        raise ConfigError(f"app {target!r} is not MODULE:ATTR (example: myproject.jobs:app)")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        raise ConfigError(
            f"cannot import {module_name!r} ({exc}): run from the project directory or "
            "set PYTHONPATH"
        ) from exc
    app = getattr(module, attr, None)
    if not isinstance(app, Conveyor):
        raise ConfigError(f"{target!r} is not a Conveyor app (found {type(app).__name__})")
    return app


def bind_app(app: Conveyor, settings: Settings, url_flag: str | None) -> str:
    """Point `app` at its engine: the `--url` flag, then the environment (`CONVEYOR_URL`,
    `REDIS_URL`), then the URL given in code (`Conveyor("redis://...")`), then the
    default SQLite file; apply the payload limit too. Start-up lines print `app.url`
    after this, never `settings.url` (which does not know the URL in code).

    Args:
        app: the loaded app.
        settings: the process's settings (their `url` holds flag, environment or default).
        url_flag: the `--url` flag as given, `None` when absent.

    Returns:
        What the start-up line adds after the URL: `""`, or, when a flag or the
        environment overrides the URL in code, e.g.
        `" (--url overrides redis://127.0.0.1:6379/0 in the app's code)"`.
    """
    source = url_source(url_flag)
    code = app.url_in_code
    url = settings.url if source is not None or code is None else code
    app.configure(url=url, max_payload_bytes=settings.max_payload_bytes)
    if source is not None and code is not None and code != url:
        return f" ({source} overrides {redact(code)} in the app's code)"
    return ""


class JsonFormatter(logging.Formatter):
    """One JSON object per line, for log shippers."""

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "ts": record.created,
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(doc).decode()


def setup_logging(level: str, fmt: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger("conveyor")
    root.handlers[:] = [handler]
    root.setLevel(level)
