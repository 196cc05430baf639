"""Helpers for testing code that uses Conveyor.

* `TestHarness` (what `app.testing()` returns; defined in `conveyor.harness`): run your
  own tasks in pytest on a private memory engine with a fake clock, no worker process.
* `eventually`: poll an async condition until it holds, instead of sleeping.

(Conveyor's own scripted probe app lives in the repository's tests/, not here: an app
whose payload picks files to write has no place in an installed package.)
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from .harness import TestHarness

__all__ = ["TestHarness", "eventually"]


async def eventually(
    check: Callable[[], Awaitable[bool]],
    *,
    timeout: float = 10.0,
    interval: float = 0.02,
    message: str = "condition",
) -> None:
    """Wait until `check()` is true, instead of sleeping for a guessed time.

    Args:
        check: an async callable; polled until it returns true.
        timeout: seconds before giving up.
        interval: seconds between polls.
        message: what was awaited, for the failure message.

    Raises:
        AssertionError: `check()` was still false after `timeout` seconds.
    """
    deadline = time.monotonic() + timeout
    while True:
        if await check():
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"{message} did not hold within {timeout}s")
        await asyncio.sleep(interval)
