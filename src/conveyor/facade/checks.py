"""Argument checks of the app facade, shared by its producer, registry and operator
sides: each returns the value or raises the named error with the rule and the fix."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from ..errors import ConfigError, InvalidJob
from ..job import QUEUE_NAME


def check_queue(name: str, *, error: type[Exception] = ConfigError) -> str:
    """Return `name` if it is a valid queue name.

    Raises:
        error (ConfigError by default): the name breaks the rule; the message says it.
    """
    if not isinstance(name, str) or not QUEUE_NAME.match(name):
        raise error(f"queue name {name!r} is invalid: use 1-64 letters, digits, '_', '-' or '.'")
    return name


def check_attempts(value: Any, *, error: type[Exception] = ConfigError) -> None:
    """Check a `max_attempts` value (an integer from 1 to 1000).

    Raises:
        error (ConfigError by default): it is out of range or not an integer.
    """
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 1000:
        raise error(f"max_attempts={value!r} is invalid: use an integer from 1 to 1000")


def check_timeout(value: Any, *, error: type[Exception] = ConfigError) -> None:
    """Check a `timeout` value (seconds > 0, or None for no limit).

    Raises:
        error (ConfigError by default): it is not a positive number.
    """
    if value is not None and (not isinstance(value, int | float) or value <= 0):
        raise error(f"timeout={value!r} is invalid: use seconds > 0, or None for no limit")


def check_label(field: str, value: Any, max_len: int) -> str | None:
    """Return an optional label (`tenant`, `dedupe_key`) if it is 1-`max_len` characters.

    Raises:
        InvalidJob: it is not a string of that length.
    """
    if value is None:
        return None
    if not isinstance(value, str) or not value or len(value) > max_len:
        raise InvalidJob(f"{field}={value!r} is invalid: use a string of 1-{max_len} characters")
    return value


def due(delay: Any, run_at: Any) -> tuple[int, int | None]:
    """Convert `delay` / `run_at` to storage milliseconds (the engine's clock adds now).

    Returns:
        (delay_ms, run_at_ms or None).

    Raises:
        InvalidJob: both are given, or one is of the wrong type or negative.
    """
    if delay is not None and run_at is not None:
        raise InvalidJob("pass delay= or run_at=, not both")
    if run_at is not None:
        if not isinstance(run_at, datetime):
            raise InvalidJob(f"run_at={run_at!r} is invalid: pass a datetime")
        return 0, int(run_at.timestamp() * 1000)
    if delay is None:
        return 0, None
    if isinstance(delay, timedelta):
        delay = delay.total_seconds()
    if isinstance(delay, bool) or not isinstance(delay, int | float) or not delay >= 0:
        raise InvalidJob(f"delay={delay!r} is invalid: use seconds >= 0 or a timedelta")
    return int(delay * 1000), None
