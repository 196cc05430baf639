"""Argument checks of the app facade, shared by its producer, registry and operator
sides: each returns the value or raises the named error with the rule and the fix."""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from typing import Any

from ..errors import ConfigError, InvalidArgument, InvalidJob
from ..job import QUEUE_NAME

# The longest delay or attempt timeout: ten years. Past that a number is a mistake (or
# inf), and its milliseconds would overflow SQLite's 64-bit integers.
MAX_SECONDS = 10 * 365 * 86_400.0
# Every number in a cursor an engine hands out fits in 63 bits (SQLite rowids, Redis
# scores and ids); a longer one is forged, and would reach the engine as an overflow.
_CURSOR_NUMBER = re.compile(r"\d+")
MAX_CURSOR_LENGTH = 256


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
    if value is not None and (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not 0 < value <= MAX_SECONDS  # also false for NaN
    ):
        raise error(
            f"timeout={value!r} is invalid: use seconds > 0 (at most {MAX_SECONDS:.0f}), "
            "or None for no limit"
        )


def check_label(field: str, value: Any, max_len: int) -> str | None:
    """Return an optional label (`tenant`, `dedupe_key`) if it is 1-`max_len` characters.

    Raises:
        InvalidJob: it is not a string of that length.
    """
    if value is None:
        return None
    if not isinstance(value, str) or not value or len(value) > max_len:
        raise InvalidJob(f"{field}={value!r} is invalid: use a string of 1-{max_len} characters")
    return check_text(field, value)


def check_text(field: str, value: str) -> str:
    """Return `value` if it can be stored: text every engine keeps is valid UTF-8.

    Raises:
        InvalidJob: it holds a lone surrogate (e.g. from a bad `\\ud800` escape).
    """
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidJob(
            f"{field}={value!r} is invalid: it holds a lone surrogate ({exc.reason}), "
            "which is not text; send valid UTF-8"
        ) from None
    return value


def check_priority(value: Any, low: int, high: int) -> int:
    """Return a priority: an integer (not a bool) from `low` to `high`.

    Raises:
        InvalidJob: anything else.
    """
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise InvalidJob(
            f"priority={value!r} is invalid: use an integer from {low} to {high} "
            "(higher runs first)"
        )
    return value


def check_cursor(cursor: str | None) -> str | None:
    """Reject listing cursors no engine could have handed out, before an engine sees
    them: too long, or holding a number past 63 bits (which engines would answer
    with an overflow instead of a named error).

    Raises:
        InvalidArgument: the cursor is forged.
    """
    if cursor is None:
        return None
    if (
        not isinstance(cursor, str)
        or len(cursor) > MAX_CURSOR_LENGTH
        or any(int(n) >= 2**63 for n in _CURSOR_NUMBER.findall(cursor))
    ):
        raise InvalidArgument(
            f"cursor {str(cursor)[:40]!r} is not one this engine returned: pass back the "
            "cursor of the previous page, or none for the first page"
        )
    return cursor


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
        try:
            return 0, int(run_at.timestamp() * 1000)
        except (OverflowError, ValueError, OSError) as exc:
            raise InvalidJob(f"run_at={run_at!r} is invalid: {exc}") from None
    if delay is None:
        return 0, None
    if isinstance(delay, timedelta):
        delay = delay.total_seconds()
    if (
        isinstance(delay, bool)
        or not isinstance(delay, int | float)
        or not 0 <= delay <= MAX_SECONDS  # also false for NaN
    ):
        raise InvalidJob(
            f"delay={delay!r} is invalid: use seconds from 0 to {MAX_SECONDS:.0f} (ten "
            "years) or a timedelta"
        )
    return int(delay * 1000), None
