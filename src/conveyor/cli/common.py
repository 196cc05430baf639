"""What every command shares: the typer app, error output, the operation helpers; and
(from `starting.py`, which needs no typer) app loading, logging and the start-up line."""

from __future__ import annotations

import asyncio
import functools
import logging
import sys
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import orjson
import typer

from ..app import Conveyor, check_queue
from ..errors import ConfigError, ConveyorError, EngineUnavailable
from ..settings import Settings
from ..status import format_duration
from .starting import JsonFormatter as JsonFormatter
from .starting import announce as announce
from .starting import bind_app as bind_app
from .starting import declared_queues as declared_queues
from .starting import did_you_mean as did_you_mean
from .starting import engine_label as engine_label
from .starting import load_app as load_app
from .starting import parse_keep as parse_keep
from .starting import retention_policy as retention_policy
from .starting import setup_logging as setup_logging

if TYPE_CHECKING:
    from rich.console import Console

cli = typer.Typer(
    name="conveyor",
    help="Conveyor: run workers and operate queues.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _console(*, stderr: bool = False) -> Console:
    """A console that wraps only for a person: Rich assumes 80 columns when it does not
    write to a terminal, which broke tables and the start-up line into pieces in log
    files and pipes (`conveyor queues | grep`). Off a terminal, lines keep their length.

    Rich is imported here, on first output, not with this module: `conveyor worker`
    prints through the logger and never needs it (its ~40 modules were start-up time)."""
    from rich.console import Console

    stream = sys.stderr if stderr else sys.stdout
    return Console(stderr=stderr, width=None if stream.isatty() else 100_000)


@functools.cache
def console() -> Console:
    """The stdout console, made on first use."""
    return _console()


def version() -> str:
    """The installed Conveyor's version (the `conveyor-jobs` distribution)."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as dist_version

    try:
        return dist_version("conveyor-jobs")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown (not installed)"


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"conveyor {version()}")
        raise typer.Exit()


@cli.callback()
def _root(
    show_version: Annotated[
        bool,
        typer.Option(
            "--version",
            callback=_print_version,
            is_eager=True,
            help="print the installed version and exit",
        ),
    ] = False,
) -> None:
    """Conveyor: run workers and operate queues."""


@functools.cache
def err_console() -> Console:
    """The stderr console, made on first use."""
    return _console(stderr=True)


T = TypeVar("T")


def fail(message: str, code: int = 2) -> typer.Exit:
    """Print one readable error line; return the Exit to raise."""
    from rich.markup import escape

    # Messages carry ids and user data: escape them so "[...]" is not taken as markup.
    err_console().print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
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


AppOpt = Annotated[
    str | None,
    typer.Option(
        "--app",
        help="your app as MODULE:ATTR, to use its tasks' declarations (env CONVEYOR_APP)",
        show_default=False,
    ),
]


def configured_app(flag: str | None) -> Conveyor | None:
    """The app an operations command was given: `--app`, else `CONVEYOR_APP`, else None.

    Raises:
        ConfigError: the app cannot be imported (see `load_app`).
    """
    target = flag or Settings.load().app
    return load_app(target) if target else None


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
    console().print(text, markup=False, highlight=False, soft_wrap=True)


def warn(text: str) -> None:
    """Print one warning line on stderr, where it never mixes with `--json` output."""
    from rich.text import Text

    err_console().print(Text.assemble(("warning: ", "bold yellow"), text), soft_wrap=True)


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
