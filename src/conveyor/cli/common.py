"""What every command shares: the typer app, app loading, logging and error output."""

from __future__ import annotations

import asyncio
import contextlib
import difflib
import functools
import importlib
import logging
import os
import sys
import time
import traceback
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import orjson
import typer

from ..app import Conveyor, check_queue
from ..errors import ConfigError, ConveyorError, EngineUnavailable
from ..retention import RetentionPolicy
from ..settings import Settings, redact, url_source
from ..status import format_duration, parse_duration

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
        if not _is_missing(exc, module_name):
            raise ConfigError(_raised_on_import(module_name, exc)) from exc
        raise ConfigError(
            f"cannot import {module_name!r}: no module named {exc.name!r} is on the path "
            f"({os.getcwd()} and PYTHONPATH): run from the project directory or set PYTHONPATH"
        ) from exc
    except Exception as exc:  # the module exists but its own code failed
        raise ConfigError(_raised_on_import(module_name, exc)) from exc
    app = getattr(module, attr, None)
    if not isinstance(app, Conveyor):
        raise ConfigError(f"{target!r} is not a Conveyor app (found {type(app).__name__})")
    return app


# Attributes every LogRecord has; anything else on a record came from `extra=` (the job
# log's job_id, task, queue, ...) and becomes a field of its JSON line.
_RECORD_ATTRS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {
    "message",
    "asctime",
    "taskName",
}


def _is_missing(exc: ModuleNotFoundError, module_name: str) -> bool:
    """True when the app's module itself (or a package above it) is what is missing, not
    something the module imports."""
    parts = module_name.split(".")
    return exc.name in {".".join(parts[: i + 1]) for i in range(len(parts))}


def _raised_on_import(module_name: str, exc: BaseException) -> str:
    """Where importing the user's module failed: its innermost frame in the user's code
    (file and line) and the exception, so the fix starts at the right line."""
    frames = traceback.extract_tb(exc.__traceback__)
    # Frames of the import machinery are noise; the last frame outside it is where it broke.
    own = [f for f in frames if "importlib" not in f.filename]
    where = f" at {own[-1].filename}:{own[-1].lineno}" if own else ""
    if isinstance(exc, SyntaxError) and exc.filename:
        where = f" at {exc.filename}:{exc.lineno}"
    return (
        f"importing {module_name!r} raised {type(exc).__name__}: {exc}{where}: "
        "the module was found, its code failed; fix that line (run "
        f"`python -c 'import {module_name}'` for the full traceback)"
    )


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
    """One JSON object per line, for log shippers: ts, level, logger, msg, the record's
    `extra` fields, and `exc` (the traceback) when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "ts": record.created,
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _RECORD_ATTRS:
                doc[key] = value
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            doc["exc"] = record.exc_text
        return orjson.dumps(doc, default=str).decode()


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


def did_you_mean(name: str, known: Iterable[str]) -> str:
    """A hint for a name that is not among `known`: the closest one, or the list."""
    names = sorted(set(known))
    close = difflib.get_close_matches(name, names, n=1)
    return f"did you mean {close[0]!r}?" if close else f"known: {', '.join(names) or '-'}"


def declared_queues(app: Conveyor) -> set[str]:
    """Queues the app's code declares: its tasks', its default, and those with limits."""
    return {t.queue for t in app.tasks.values()} | {app.default_queue} | set(app.queue_limits)


def engine_label(url: str) -> str:
    """The engine URL for a start-up line: secrets redacted and, for SQLite, the file's
    absolute path (two processes started from different directories with
    `sqlite:///conveyor.db` use two different files, and this shows it)."""
    if url.startswith("sqlite:///"):
        from ..engines.sqlite.engine import parse_sqlite_url

        with contextlib.suppress(ConfigError):
            return f"sqlite:///{parse_sqlite_url(url).resolve()}"
    return redact(url)


def announce(message: str, fmt: str, **fields: Any) -> None:
    """Print a process's start-up line on stdout: plain text, or with `--log-format json`
    one JSON object shaped like the log lines (`msg` plus `fields`). Printed whatever
    the log level, since runbooks wait for it; never wrapped.

    Args:
        message: the line as a person reads it.
        fmt: the log format, "text" or "json".
        fields: the same facts as separate JSON fields.
    """
    if fmt == "json":
        doc = {"ts": time.time(), "level": "INFO", "logger": "conveyor.cli", "msg": message}
        line = orjson.dumps({**doc, **fields}, default=str).decode()
    else:
        line = message
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


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
