"""What every command shares: the typer app, app loading, logging and error output."""

from __future__ import annotations

import asyncio
import difflib
import functools
import importlib
import logging
import os
import sys
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from datetime import UTC, datetime
from typing import Annotated, Any, TypeVar

import orjson
import typer
from rich.console import Console
from rich.markup import escape
from rich.text import Text

from ..app import Conveyor, check_queue
from ..errors import ConfigError, ConveyorError, EngineUnavailable
from ..retention import RetentionPolicy
from ..settings import Settings, redact, url_source
from ..status import format_duration, parse_duration

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
    probe = Conveyor(url)
    try:
        await probe.check_server(role=role, require_noeviction=require_noeviction)
    except EngineUnavailable as exc:
        logging.getLogger("conveyor.durability").warning(
            "%s: cannot check the engine's settings now: %s", role, exc
        )
    finally:
        await probe.close()


# --- shared by the operation commands ------------------------------------------------------
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
            comes after the flag and the environment (`bind_app`).

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


async def warn_unknown(app: Conveyor, names: Iterable[str]) -> None:
    """Warn about queues that never held a job: most often a typo, which would otherwise
    make `drain` succeed at once or `pause` guard nothing."""
    known = await app.queue_names()
    for name in names:
        if name not in known:
            close = difflib.get_close_matches(name, known, n=1)
            hint = f"did you mean {close[0]!r}?" if close else f"known: {', '.join(known) or '-'}"
            warn(f"queue {name!r} has never held a job ({hint})")


def when(timestamp: float | None, now: float) -> str:
    """`2026-01-01 10:00:00Z (3m12s ago)`, or `-` when it has not happened."""
    if timestamp is None:
        return "-"
    stamp = datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%d %H:%M:%SZ")
    delta = now - timestamp
    relative = f"{format_duration(delta)} ago" if delta >= 0 else f"in {format_duration(-delta)}"
    return f"{stamp} ({relative})"
