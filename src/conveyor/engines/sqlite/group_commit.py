"""Group commit: the writes that wait for the engine's thread at the same moment share one
``BEGIN IMMEDIATE`` transaction and one fsync.

Why: with ``synchronous=FULL`` every commit fsyncs the WAL (about 0.2 ms here), so one
transaction per call caps a process at a few thousand writes a second however many
tasks enqueue at once. Every write is queued here instead; the engine's thread takes
*all* the writes queued so far as one group, runs each inside its own ``SAVEPOINT``,
commits once, and only then answers every caller. There is no timer: a group is
whatever arrived while the previous one was being written, so a lone caller waits for
nothing but its own commit, and a crowd shares fsyncs.

What each caller is promised, as with a transaction of its own:

* durability: nobody is answered before the ``COMMIT`` (with ``synchronous=FULL`` when
  any write of the group asked for it) has returned, so "once `enqueue` returns, the
  job is durable" holds for every member;
* isolation of failures: a write that raises is rolled back to its savepoint and only
  its caller gets the error; the others commit. (Bad input never gets this far: the
  app facade rejects it before anything is queued.)
* a failed group fails everyone: when ``BEGIN`` or ``COMMIT`` fails, or SQLite rolls the
  whole transaction back under a member (disk full, I/O error), every caller whose write
  is lost gets that real error, translated like any other (`EngineUnavailable` with the
  fix);
* order: writes run in the order they were queued, so one task's writes keep their order.

Reads (`SqliteCore._call`) are not grouped; they run on the same thread between groups.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import threading
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any

__all__ = ["GroupCommit", "Write"]


@dataclass(slots=True)
class Write:
    """One caller's write waiting for a group: `fn(conn)` and where its answer goes."""

    fn: Callable[[sqlite3.Connection], Any]
    durable: bool
    settles: bool  # may finish flow jobs (an enqueue never does: it only inserts)
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[Any]
    outcome: tuple[bool, Any] = field(default=(False, None))  # (ok, result or exception)


def _deliver(writes: list[Write]) -> None:
    """Answer callers on their own event loop (a cancelled caller is skipped)."""
    for w in writes:
        if w.future.done():
            continue
        ok, value = w.outcome
        if ok:
            w.future.set_result(value)
        else:
            w.future.set_exception(value)


class GroupCommit:
    """The queue of writes and the loop that turns them into grouped transactions.

    Args:
        run_group: runs a list of writes as one transaction on the engine's thread and
            sets each write's `outcome` (see `SqliteCore._run_group`).
    """

    def __init__(self, run_group: Callable[[list[Write]], None]) -> None:
        self._run_group = run_group
        self._lock = threading.Lock()  # callers may sit on several event loops/threads
        self._queued: list[Write] = []
        self._scheduled = False  # a drain is queued on, or running on, the executor
        self.groups = 0  # transactions committed or attempted (tests read it)
        self.writes = 0  # writes they carried

    async def submit(
        self,
        executor: Executor,
        fn: Callable[[sqlite3.Connection], Any],
        durable: bool,
        closed: Callable[[], BaseException],
        settles: bool = True,
    ) -> Any:
        """Queue `fn` for the next group and wait until it committed (or failed).

        Raises:
            whatever `fn` raised (translated), the group's error, or `closed()` when the
            executor is already shut down.
        """
        loop = asyncio.get_running_loop()
        write = Write(fn, durable, settles, loop, loop.create_future())
        with self._lock:
            self._queued.append(write)
            if not self._scheduled:
                try:
                    executor.submit(self._drain, executor, closed)
                except RuntimeError:  # `close` shut the thread down: nobody will drain
                    self._queued.remove(write)
                    raise closed() from None
                self._scheduled = True
        return await write.future

    def _drain(self, executor: Executor, closed: Callable[[], BaseException]) -> None:
        """Run everything queued so far as one group (on the engine's thread).

        One group per executor job: when more writes arrived meanwhile, the next group
        is queued behind the reads that are already waiting, so a stream of writes
        cannot starve them.
        """
        self._run_once()
        with self._lock:
            if not self._queued:
                self._scheduled = False
                return
            try:
                executor.submit(self._drain, executor, closed)
                return
            except RuntimeError:  # shutting down: fail what is left instead of hanging
                left, self._queued = self._queued, []
                self._scheduled = False
        for w in left:
            w.outcome = (False, closed())
        self._answer(left)

    def _run_once(self) -> bool:
        """Run and answer everything queued now as one group; False when nothing was."""
        with self._lock:
            group, self._queued = self._queued, []
        if not group:
            return False
        try:
            self._run_group(group)
        except BaseException as exc:  # a bug in the group runner: answer everyone
            for w in group:
                w.outcome = (False, exc)
        self.groups += 1
        self.writes += len(group)
        self._answer(group)
        return True

    def run_queued(self) -> None:
        """Run every write still queued, now (on the engine's thread, just before the
        connection closes): a write queued before `close` is committed, not refused."""
        while self._run_once():
            pass

    @staticmethod
    def _answer(writes: list[Write]) -> None:
        """One wake-up per event loop per group, not one per caller."""
        by_loop: dict[asyncio.AbstractEventLoop, list[Write]] = {}
        for w in writes:
            by_loop.setdefault(w.loop, []).append(w)
        for loop, members in by_loop.items():
            with contextlib.suppress(RuntimeError):  # that loop is closed: callers gone
                loop.call_soon_threadsafe(_deliver, members)
