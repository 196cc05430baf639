"""Background loops that never die silently.

A worker runs two loops beside its handlers: the claim loop (exchange: acknowledge and
claim) and the heartbeat loop (renew leases, stay registered, sample queue depths). If
either stopped on an error nobody expected (a reply the code does not know, a bug), the
worker would look alive while its leases ran out and its jobs were re-run elsewhere: the
failure mode of issue 13, where a heartbeat loop died on the first OOM reply.

So each turn of a loop goes through a `Supervisor`: an expected engine outage
(`EngineUnavailable`, `EngineFull`) and an unexpected error are both logged, the loop
backs off (0.1 s doubling to `cap`) and tries again, and while it fails the worker's
readiness is 503 naming the loop and the error. The first success clears it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from ..errors import EngineUnavailable

log = logging.getLogger("conveyor.worker")

BACKOFF_START_S = 0.1
BACKOFF_CAP_S = 5.0


@dataclass
class Supervisor:
    """The health of one background loop and its retry delay.

    Args:
        name: the loop's name, shown in logs and readiness ("heartbeat", "claim").
        cap: the longest delay between two failed turns, in seconds.
    """

    name: str
    cap: float = BACKOFF_CAP_S
    delay: float = BACKOFF_START_S
    error: str | None = None
    failures: int = 0

    def ok(self) -> None:
        """A turn succeeded: reset the delay, clear the failure (logged once)."""
        if self.error is not None:
            log.info("%s loop recovered after %d failed turn(s)", self.name, self.failures)
        self.error = None
        self.failures = 0
        self.delay = BACKOFF_START_S

    def failed(self, exc: BaseException) -> float:
        """A turn failed: log it, record it for readiness; returns seconds to wait.

        An engine outage is logged once per outage (the engine's own state says the
        rest); anything else is logged with its traceback every time, since it is a bug
        or a reply nobody planned for.
        """
        expected = isinstance(exc, EngineUnavailable)
        if not expected:
            log.error(
                "%s loop failed (%s: %s); retrying in %.1fs",
                self.name,
                type(exc).__name__,
                exc,
                self.delay,
                exc_info=exc,
            )
        elif self.error is None:
            log.warning("%s loop: %s; retrying with backoff", self.name, exc)
        self.error = f"{type(exc).__name__}: {exc}"
        self.failures += 1
        wait = self.delay
        self.delay = min(self.delay * 2, self.cap)
        return wait


@dataclass
class Supervisors:
    """Every loop of a process, for readiness and /health/detailed."""

    loops: dict[str, Supervisor] = field(default_factory=dict)

    def add(self, name: str, *, cap: float = BACKOFF_CAP_S) -> Supervisor:
        """Register (or return) the supervisor of loop `name`."""
        return self.loops.setdefault(name, Supervisor(name, cap))

    def errors(self) -> dict[str, str | None]:
        """Every loop with its last error (None while healthy), for /health/detailed."""
        return {name: s.error for name, s in self.loops.items()}

    def failing(self) -> dict[str, str]:
        """Loops whose last turn failed, with the error (empty: all healthy)."""
        return {name: s.error for name, s in self.loops.items() if s.error is not None}
