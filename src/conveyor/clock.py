"""The one clock: wall time for what is stored, monotonic time for durations.

Scheduling logic takes `now` from a `Clock`, so tests drive time with `FakeClock`
instead of sleeping.
"""

from __future__ import annotations

import time


class Clock:
    """Real time."""

    def now(self) -> float:
        """Wall-clock seconds since the epoch (what gets stored)."""
        return time.time()

    def now_ms(self) -> int:
        """Wall-clock milliseconds since the epoch (the storage unit)."""
        return time.time_ns() // 1_000_000

    def monotonic(self) -> float:
        """Seconds from an arbitrary origin, for measuring durations."""
        return time.monotonic()


class FakeClock(Clock):
    """A clock that only moves when told to (tests)."""

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self._now = start

    def now(self) -> float:
        return self._now

    def now_ms(self) -> int:
        return int(self._now * 1000)

    def monotonic(self) -> float:
        return self._now

    def advance(self, seconds: float) -> None:
        """Move time forward by `seconds`."""
        self._now += seconds
