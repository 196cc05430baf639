"""What starting a process needs, without typer: loading the user's app, binding it to
its engine, logging, the start-up line and the retention flags.

Apart from `common.py` (which holds the typer app) so that `conveyor worker` can start
without typer (`worker_start.py`'s fast path; issue 15, point 7); `common.py` re-exports
all of it for the other commands.
"""

from __future__ import annotations

import contextlib
import difflib
import importlib
import logging
import os
import sys
import time
import traceback
from collections.abc import Iterable
from typing import Any

import orjson

from ..app import Conveyor
from ..errors import ConfigError
from ..retention import RetentionPolicy
from ..settings import Settings, redact, url_source
from ..status import parse_duration


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
            query = url.partition("?")[2]
            return f"sqlite:///{parse_sqlite_url(url).resolve()}" + (f"?{query}" if query else "")
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
