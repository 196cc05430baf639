"""Test your own tasks in pytest, without a worker process: `app.testing()`.

```python
async with app.testing() as t:          # the app now talks to a private memory:// engine
    job = await app.enqueue("email.send", {"to": "a@example.com"})
    await t.run_until_idle()            # runs it (and its retries: the clock jumps ahead)
    assert await job.wait(timeout=0) == {"sent": True}
```

Inside the block the app's engine is a fresh `memory://` engine on a `FakeClock`
(`t.clock`), so delays, retry backoff and timestamps take no real time. Handlers run
in this process and event loop, through the real worker runtime (leases, retries,
timeouts, hooks), exactly as `conveyor worker` would run them. On exit the app gets its
own engine, URL and clock back.

Use the async API (`await app.enqueue`) inside the block: `enqueue_sync` would open an
engine of its own.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .clock import FakeClock
from .job import Job, JobState
from .worker import Worker

if TYPE_CHECKING:
    from .app import Conveyor

_SWAPPED = ("_url", "_engine", "_connected", "_connect_lock", "clock", "_results", "_sync")


class TestHarness:
    """What `app.testing()` returns; use it as `async with app.testing() as t:`.

    Args:
        app: the app under test (its tasks, hooks and limits are used as they are).
        start: the fake clock's start, epoch seconds.
        concurrency: jobs run at once by `run_until_idle`.
    """

    __test__ = False  # not a pytest test class, whatever its name

    def __init__(
        self, app: Conveyor, *, start: float = 1_700_000_000.0, concurrency: int = 10
    ) -> None:
        self.app = app
        self.clock = FakeClock(start)
        self.concurrency = concurrency
        self._saved: dict[str, Any] | None = None

    async def __aenter__(self) -> TestHarness:
        app = self.app
        self._saved = {name: getattr(app, name) for name in _SWAPPED}
        app._url, app.clock = "memory://", self.clock
        app._engine, app._connected, app._connect_lock = None, False, None
        app._results, app._sync = None, None
        await app.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        try:
            await self.app.close()
        finally:
            for name, value in (self._saved or {}).items():
                setattr(self.app, name, value)
            self._saved = None

    def advance(self, seconds: float) -> None:
        """Move the fake clock forward (delayed jobs and retries become due)."""
        self.clock.advance(seconds)

    async def run_until_idle(self, *, advance: bool = True, max_rounds: int = 1000) -> int:
        """Run jobs until none is left to run.

        Args:
            advance: also run what is scheduled in the future (delays, retry backoff),
                moving the fake clock to each due time; False runs only what is due now.
            max_rounds: stop after this many passes (a task that enqueues itself
                forever would otherwise never be idle).

        Returns:
            How many attempts ran (retries count once each).

        Raises:
            RuntimeError: still not idle after `max_rounds` passes.
        """
        ran = 0
        for _ in range(max_rounds):
            worker = Worker(
                self.app,
                queues=await self._queues(),
                concurrency=self.concurrency,
                burst=True,
            )
            await worker.run()
            stats = worker.stats
            ran += stats.processed + stats.failed + stats.retried + stats.deferred
            if await self.jobs(JobState.PENDING):
                # The burst worker's last acknowledgement made work pending (a flow's
                # last child released its parent): run again before moving the clock.
                continue
            due = await self._next_due() if advance else None
            if due is None:
                return ran
            self.clock.advance(max(0.0, due - self.clock.now()))
        raise RuntimeError(
            f"still not idle after {max_rounds} passes: a task keeps scheduling jobs; "
            "raise max_rounds or run with advance=False"
        )

    async def jobs(
        self, state: JobState | str | None = None, *, task: str | None = None
    ) -> list[Job]:
        """Every job in the test engine (oldest first within a state), optionally only
        those in `state` and/or of `task`, for assertions."""
        states = list(JobState) if state is None else [JobState(state)]
        out: list[Job] = []
        for queue in await self.app.queue_names():
            for each in states:
                cursor: str | None = None
                while True:
                    page = await self.app.list_jobs(queue, each, limit=500, cursor=cursor)
                    out.extend(j for j in page.jobs if task is None or j.task == task)
                    cursor = page.cursor
                    if cursor is None:
                        break
        return out

    async def _queues(self) -> tuple[str, ...]:
        declared = {t.queue for t in self.app.tasks.values()} | {self.app.default_queue}
        return tuple(sorted(declared | set(await self.app.queue_names())))

    async def _next_due(self) -> float | None:
        scheduled = await self.jobs(JobState.SCHEDULED)
        times = [j.scheduled_at for j in scheduled if j.scheduled_at is not None]
        return min(times) if times else None
