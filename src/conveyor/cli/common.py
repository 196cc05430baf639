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
from ..errors import ConfigError, ConveyorError, EngineUnavailable
from ..retention import RetentionPolicy
from ..settings import Settings
from ..status import parse_duration

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


def parse_keep(text: str | None, default: float) -> float | None:
    """A retention flag: a duration (`24h`, `7d`), or `forever` to keep jobs for good.

    Raises:
        ConfigError: not a duration; the message shows valid examples.
    """
    if text is None:
        return default
    if text.strip().lower() in ("forever", "never", "off"):
        return None
    seconds = parse_duration(text)
    if seconds <= 0:
        raise ConfigError(f"retention {text!r} is invalid: use a duration > 0 or 'forever'")
    return seconds


def retention_policy(
    settings: Settings, keep_completed: str | None = None, keep_failed: str | None = None
) -> RetentionPolicy:
    """The retention policy of the settings (flags given here take precedence).

    Raises:
        ConfigError: a keep time is not a duration or 'forever'.
    """
    return RetentionPolicy(
        keep_completed=parse_keep(keep_completed or settings.keep_completed, 0),
        keep_failed=parse_keep(keep_failed or settings.keep_failed, 0),
        interval=settings.retention_interval,
        batch=settings.retention_batch,
    )


async def check_engine_url(url: str, role: str, require_noeviction: bool) -> None:
    """Check the engine server's settings at start (durability.py) on a connection of its
    own, for processes that connect later on another event loop (the API).

    An engine that cannot be reached is only logged: such a process starts anyway and its
    readiness says the engine is down.

    Raises:
        ConfigError: Redis may evict keys and `require_noeviction` is set.
    """
    from ..durability import check_engine

    probe = Conveyor(url)
    try:
        check_engine(await probe.connect(), role=role, require_noeviction=require_noeviction)
    except EngineUnavailable as exc:
        logging.getLogger("conveyor.durability").warning(
            "%s: cannot check the engine's settings now: %s", role, exc
        )
    finally:
        await probe.close()
