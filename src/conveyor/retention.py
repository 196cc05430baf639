"""Retention: finished jobs are deleted once past their keep time, ahead of the load.

Who runs it: the scheduler's leader for every queue, and every worker for the queues it
consumes (so memory stays bounded with no scheduler process at all). Several processes
cleaning the same queue is harmless: each call deletes a bounded batch atomically, and a
job already deleted is simply not there for the next one.

How a pass keeps up without blocking the engine (issue 13, item 2: a pass that stopped
after 10 batches every 60 s fell behind above ~167 jobs/s per queue):

    pass:  clean(batch) -> yield -> clean(batch) -> ... until a batch comes back short
           (the queue is within its retention) or `max_batches` full batches were deleted
    next:  behind (budget spent)     -> again after BEHIND_PAUSE_S
           deleted > 10 batches      -> interval halves (down to MIN_INTERVAL_S)
           deleted < 1 batch         -> interval doubles (up to `interval`, and at most
                                        a quarter of the shortest keep time)

Each call is one engine step of at most `batch` jobs (on Redis one script of a few ms
for 1,000 jobs), so claims and heartbeats of the fleet interleave between them.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .errors import ConfigError
from .job import JobState

if TYPE_CHECKING:
    from .app import Conveyor

log = logging.getLogger("conveyor.retention")

DEFAULT_KEEP_COMPLETED = 24 * 3600.0  # the runbooks' 24-hour cleanup
DEFAULT_KEEP_FAILED = 7 * 24 * 3600.0  # failures stay longer: someone has to look at them
DEFAULT_INTERVAL_S = 60.0
DEFAULT_BATCH = 1000
DEFAULT_MAX_BATCHES = 100  # full batches per pass before it yields to the rest of the process
MIN_INTERVAL_S = 1.0
BEHIND_PAUSE_S = 0.05


@dataclass(frozen=True, slots=True)
class RetentionPolicy:
    """How long finished jobs are kept and how the clean-up runs.

    Args:
        keep_completed: seconds completed jobs are kept (None: forever).
        keep_failed: seconds failed and cancelled jobs are kept (None: forever).
        interval: longest pause between two passes, in seconds (the pause shrinks
            while passes find a lot to delete).
        batch: jobs deleted per engine call.
        max_batches: full batches (calls that deleted `batch` jobs) per pass; a pass
            that spends them all is "behind" and the next one follows after
            `BEHIND_PAUSE_S`. Calls that find less are not counted: a pass always looks
            at every queue once.

    Raises:
        ConfigError: a value is out of range; the message names the fix.
    """

    keep_completed: float | None = DEFAULT_KEEP_COMPLETED
    keep_failed: float | None = DEFAULT_KEEP_FAILED
    interval: float = DEFAULT_INTERVAL_S
    batch: int = DEFAULT_BATCH
    max_batches: int = DEFAULT_MAX_BATCHES

    def __post_init__(self) -> None:
        for label, keep in (
            ("keep_completed", self.keep_completed),
            ("keep_failed", self.keep_failed),
        ):
            if keep is not None and not keep > 0:
                raise ConfigError(
                    f"{label}={keep!r} is invalid: use seconds > 0, or None (forever)"
                )
        if not self.interval > 0:
            raise ConfigError(f"retention interval={self.interval!r} is invalid: use seconds > 0")
        if self.batch < 1 or self.max_batches < 1:
            raise ConfigError("retention batch and max_batches must be >= 1 (e.g. batch=1000)")

    @property
    def enabled(self) -> bool:
        """Whether anything is ever deleted."""
        return self.keep_completed is not None or self.keep_failed is not None

    @property
    def max_interval(self) -> float:
        """The longest pause between passes: `interval`, but at most a quarter of the
        shortest keep time, so finished jobs outstay their retention by at most ~25%
        (keep 20 s: a pass every 5 s; keep 24 h: every `interval`)."""
        keeps = [keep for _, keep in self.rules()]
        if not keeps:
            return self.interval
        return min(self.interval, max(MIN_INTERVAL_S, min(keeps) / 4))

    def rules(self) -> list[tuple[JobState, float]]:
        """(finished state, seconds kept) for each state that is cleaned."""
        pairs = (
            (JobState.COMPLETED, self.keep_completed),
            (JobState.FAILED, self.keep_failed),
            (JobState.CANCELLED, self.keep_failed),
        )
        return [(state, keep) for state, keep in pairs if keep is not None]


@dataclass(slots=True)
class PassReport:
    """What one `clean_pass` did."""

    deleted: int = 0
    calls: int = 0
    caught_up: bool = True  # every queue is within its retention


async def clean_pass(app: Conveyor, queues: Sequence[str], policy: RetentionPolicy) -> PassReport:
    """Delete finished jobs of `queues` past their retention, in bounded batches.

    Args:
        app: the app (cleans through its facade, `Conveyor.clean`).
        queues: the queues to clean, in order.
        policy: keep times and batch sizes.

    Returns:
        How many jobs were deleted, and whether the queues are within retention now.

    Raises:
        EngineUnavailable: the engine cannot be reached (callers retry later).
    """
    report = PassReport()
    full = 0
    for queue in queues:
        for state, keep in policy.rules():
            while True:
                n = await app.clean(queue, state, older_than=keep, limit=policy.batch)
                report.calls += 1
                report.deleted += n
                if n < policy.batch:
                    break
                # Only full batches spend the budget: a short call is one cheap look at a
                # queue within its retention, and counting those made a process with more
                # queues than budget / states (34 at the defaults) "behind" forever, passing
                # again every BEHIND_PAUSE_S over idle queues (~3,500 Redis commands/s for
                # one idle worker on 50 queues, bench/RESULTS.md) and never reaching the rest.
                full += 1
                if full >= policy.max_batches:
                    report.caught_up = False
                    return report
                await asyncio.sleep(0)  # let this process's claims and heartbeats through
    return report


def next_interval(policy: RetentionPolicy, current: float, report: PassReport) -> float:
    """Seconds until the next pass, after `report` (see the module docstring)."""
    longest = policy.max_interval
    if not report.caught_up:
        return BEHIND_PAUSE_S
    if report.deleted > 10 * policy.batch:
        return max(MIN_INTERVAL_S, min(current, longest) / 2)
    if report.deleted < policy.batch:
        return min(longest, current * 2)
    return min(current, longest)


class Retention:
    """Runs `clean_pass` on its own adaptive schedule (a worker's, or the scheduler's).

    Args:
        app: the app to clean through.
        policy: keep times and batch sizes.
    """

    def __init__(self, app: Conveyor, policy: RetentionPolicy) -> None:
        self.app = app
        self.policy = policy
        self.interval = policy.max_interval
        self.deleted = 0  # in total, for logs and tests

    async def step(self, queues: Sequence[str]) -> float:
        """One pass over `queues`; returns seconds until the next one is due.

        Raises:
            EngineUnavailable: the engine cannot be reached.
        """
        if not self.policy.enabled or not queues:
            return self.policy.max_interval
        report = await clean_pass(self.app, queues, self.policy)
        self.deleted += report.deleted
        self.interval = next_interval(self.policy, self.interval, report)
        if report.deleted:
            log.info(
                "retention deleted %d finished job(s)%s; next pass in %.2fs",
                report.deleted,
                "" if report.caught_up else " (still behind)",
                self.interval,
            )
        return self.interval
