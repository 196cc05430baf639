"""Report `async` handlers that block the event loop (`time.sleep`, sync I/O, CPU work).

A blocked loop stalls every job of the worker, its heartbeats (leases expire, jobs run
twice) and its health server, and nothing in the job's own outcome shows it. So a
thread watches the loop: the loop bumps a counter every `TICK_S`; when the counter has
not moved for `threshold` seconds, the thread names the asyncio task the loop is running
(a job's task is `conveyor-job:<id>`), looks the job up, and logs one WARNING with the
task name and the line it is stuck on:

    event loop blocked for 1.0s+ by task 'report.build' (job reports:ab12...), at
    jobs.py:41 in build_report: time.sleep(5)

Timeline: t0 the handler calls time.sleep(5) -> the counter stops; t0+threshold the
thread notices, reads the loop thread's current frame and warns (once per stall);
t0+5 the loop runs again and the counter moves, re-arming the warning.
"""

from __future__ import annotations

import asyncio
import linecache
import logging
import sys
import threading
import time
from collections.abc import Callable, Mapping
from types import CodeType

from ..job import Job
from ..task import Task

log = logging.getLogger("conveyor.worker")
JOB_TASK_PREFIX = "conveyor-job:"  # the runtime names each job's asyncio task this way

TICK_S = 0.1  # how often the loop proves it is alive
DEFAULT_THRESHOLD_S = 1.0


class LoopWatch:
    """Watch the running event loop from a daemon thread (see the module docstring).

    Args:
        describe: maps the asyncio task the loop was running to ("task 'name' (job id)",
            the handler's code object), or None when it is not a job's.
        threshold: seconds without a tick before the stall is reported.
    """

    def __init__(
        self,
        describe: Callable[[asyncio.Task[object] | None], tuple[str, CodeType | None] | None],
        threshold: float = DEFAULT_THRESHOLD_S,
    ) -> None:
        self.describe = describe
        self.threshold = threshold
        self.stalls = 0  # reported stalls (tests and /health read it)
        self._ticks = 0
        self._stop = threading.Event()
        self._ticker: asyncio.Task[None] | None = None
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread_id = 0

    def start(self) -> None:
        """Start watching the running loop (call from inside it)."""
        self._loop = asyncio.get_running_loop()
        self._loop_thread_id = threading.get_ident()
        self._ticker = asyncio.create_task(self._tick(), name="conveyor-loopwatch")
        self._thread = threading.Thread(target=self._watch, name="conveyor-loopwatch", daemon=True)
        self._thread.start()

    async def stop(self) -> None:
        """Stop the ticker and the thread."""
        self._stop.set()
        if self._ticker is not None:
            self._ticker.cancel()
            await asyncio.gather(self._ticker, return_exceptions=True)
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join, 2 * TICK_S + 1)

    async def _tick(self) -> None:
        while True:
            self._ticks += 1
            await asyncio.sleep(TICK_S)

    def _watch(self) -> None:
        seen, since, reported = self._ticks, time.monotonic(), False
        while not self._stop.wait(TICK_S):
            now = time.monotonic()
            if self._ticks != seen:
                seen, since, reported = self._ticks, now, False
                continue
            if not reported and now - since >= self.threshold:
                reported = True
                self.stalls += 1
                self._report(now - since)

    def _report(self, blocked_s: float) -> None:
        assert self._loop is not None
        # Read without the loop's cooperation (it is blocked): a dict lookup and a frame
        # walk are safe under the GIL, and a stale answer only makes the line less exact.
        # CPython's registry of the task each loop is running (private; when a Python
        # version lacks it, the line still names where the loop is stuck).
        current: Mapping[object, asyncio.Task[object]] = getattr(
            asyncio.tasks, "_current_tasks", {}
        )
        task = current.get(self._loop)
        who, handler = self.describe(task) or ("a callback that is not a job", None)
        frame = sys._current_frames().get(self._loop_thread_id)
        # The handler's own line says more than the innermost frame (often deep in a
        # library: ssl.py for a blocking HTTP call); fall back to the innermost.
        pick = frame
        while pick is not None and handler is not None and pick.f_code is not handler:
            pick = pick.f_back
        pick = pick or frame
        where = ""
        if pick is not None:
            code = pick.f_code
            line = linecache.getline(code.co_filename, pick.f_lineno).strip()
            where = f", at {code.co_filename}:{pick.f_lineno} in {code.co_name}: {line}"
        log.warning(
            "event loop blocked for %.1fs+ by %s%s; use `await` (asyncio.sleep, async "
            "clients) or a plain `def` handler (it runs in a thread)",
            blocked_s,
            who,
            where,
        )


def job_describer(
    running: Mapping[str, tuple[Job, object]], tasks: Mapping[str, Task]
) -> Callable[[asyncio.Task[object] | None], tuple[str, CodeType | None] | None]:
    """A `describe` for a worker: its running jobs by id and the app's tasks by name."""

    def describe(task: asyncio.Task[object] | None) -> tuple[str, CodeType | None] | None:
        name = task.get_name() if task is not None else ""
        if not name.startswith(JOB_TASK_PREFIX):
            return None
        entry = running.get(name[len(JOB_TASK_PREFIX) :])
        if entry is None:
            return None
        job = entry[0]
        handler = tasks.get(job.task)
        code = getattr(handler.fn, "__code__", None) if handler is not None else None
        return f"task {job.task!r} (job {job.id})", code

    return describe
