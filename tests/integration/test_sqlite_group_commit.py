"""SQLite group commit (`engines/sqlite/group_commit.py`): concurrent writes share one
transaction and one fsync, and every caller is answered as if it had its own.

The grouping is made deterministic by holding the engine's one thread with a read that
waits on a gate: every write queued meanwhile lands in the same group.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
from collections.abc import AsyncIterator, Awaitable
from pathlib import Path
from typing import Any

import pytest

from conveyor.engines.base import Outcome
from conveyor.engines.sqlite import SqliteEngine, parse_sqlite_url
from conveyor.engines.sqlite.connection import parse_sqlite_synchronous
from conveyor.errors import ConfigError, EngineUnavailable, InvalidState
from conveyor.job import JobState, NewJob, new_job_id
from conveyor.testing import eventually

SRC = str(Path(__file__).resolve().parents[2] / "src")
LEASE_MS = 30_000


def new(queue: str = "q", payload_json: str = "{}") -> NewJob:
    return NewJob(
        id=new_job_id(queue), queue=queue, task="t", payload_json=payload_json, max_attempts=3
    )


@pytest.fixture
async def engine(sqlite_url: str) -> AsyncIterator[SqliteEngine]:
    eng = SqliteEngine(sqlite_url)
    await eng.connect()
    yield eng
    await eng.close()


async def in_one_group(eng: SqliteEngine, writes: list[Awaitable[Any]]) -> list[Any]:
    """Run `writes` so that they are queued while the engine's thread is busy, and so
    form one group; returns their results or exceptions, in order."""
    gate = threading.Event()
    held = asyncio.ensure_future(eng._call(lambda conn: gate.wait(10)))
    await asyncio.sleep(0.05)  # the thread is now inside the gate
    before = eng._group.groups
    tasks = [asyncio.ensure_future(w) for w in writes]

    async def all_queued() -> bool:
        return len(eng._group._queued) == len(tasks)

    await eventually(all_queued, interval=0.001, message="every write queued")
    gate.set()
    await held
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert eng._group.groups == before + 1, "the writes did not share one transaction"
    return results


async def test_concurrent_enqueues_share_one_transaction(engine: SqliteEngine) -> None:
    jobs = [new() for _ in range(100)]
    results = await in_one_group(engine, [engine.enqueue([j]) for j in jobs])
    assert [r[0].id for r in results] == [j.id for j in jobs]
    assert (await engine.counts("q")).pending == 100
    # Enqueue order is claim order: the group kept the order the writes were queued in.
    ex = await engine.exchange([], queues=["q"], limit=100, worker_id="w", lease_ms=LEASE_MS)
    assert [j.id for j in ex.jobs] == [j.id for j in jobs]


async def test_many_concurrent_enqueues_need_few_commits(engine: SqliteEngine) -> None:
    """Without the gate: 200 tasks enqueueing at once are answered by far fewer commits."""
    before = engine._group.groups
    await asyncio.gather(*(engine.enqueue([new()]) for _ in range(200)))
    assert (await engine.counts("q")).pending == 200
    assert engine._group.groups - before < 50


async def test_a_failing_write_fails_alone(engine: SqliteEngine) -> None:
    [done] = await engine.enqueue([new()])
    await engine.cancel_job(done.id)  # finished: cancelling it again is refused
    jobs = [new() for _ in range(10)]
    writes: list[Awaitable[Any]] = [engine.enqueue([j]) for j in jobs[:5]]
    writes.append(engine.cancel_job(done.id))
    writes += [engine.enqueue([j]) for j in jobs[5:]]
    results = await in_one_group(engine, writes)
    assert isinstance(results[5], InvalidState) and "cancelled" in str(results[5])
    created = [r[0].id for r in results[:5] + results[6:]]
    assert created == [j.id for j in jobs]
    assert (await engine.counts("q")).pending == 10
    assert (await engine.get_job(done.id)).state is JobState.CANCELLED


async def test_a_write_that_raises_leaves_nothing_behind(engine: SqliteEngine) -> None:
    """The failing write had already changed a row when it raised: its savepoint undoes
    that, and the writes around it still commit."""
    [keep] = await engine.enqueue([new()])

    def half_then_raise(conn: sqlite3.Connection) -> None:
        conn.execute("UPDATE jobs SET priority = 99 WHERE id = ?", (keep.id,))
        raise ValueError("boom")

    jobs = [new(), new()]
    results = await in_one_group(
        engine,
        [engine.enqueue([jobs[0]]), engine._write(half_then_raise), engine.enqueue([jobs[1]])],
    )
    assert isinstance(results[1], ValueError)
    assert (await engine.get_job(keep.id)).priority == 0
    assert (await engine.counts("q")).pending == 3


async def test_a_failed_group_fails_every_caller_with_the_real_error(
    engine: SqliteEngine, sqlite_url: str
) -> None:
    """Another process holds the write lock past the busy timeout: BEGIN fails, and every
    caller of the group gets EngineUnavailable naming the lock, with nothing stored."""
    await engine._call(lambda conn: conn.execute("PRAGMA busy_timeout = 50"))
    other = sqlite3.connect(parse_sqlite_url(sqlite_url), isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    try:
        results = await in_one_group(engine, [engine.enqueue([new()]) for _ in range(20)])
    finally:
        other.execute("ROLLBACK")
        other.close()
    assert all(isinstance(r, EngineUnavailable) for r in results), results
    assert all("locked" in str(r) and "busy timeout" in str(r) for r in results)
    assert (await engine.counts("q")).pending == 0
    await engine.enqueue([new()])  # the lock is free again: writes work
    assert (await engine.counts("q")).pending == 1


async def test_a_full_disk_fails_every_member(engine: SqliteEngine) -> None:
    """SQLITE_FULL inside the group (the file may not grow): each caller is told, with
    the fix, and no job of the group is stored."""
    await engine.enqueue([new()])

    def clamp(conn: sqlite3.Connection) -> None:
        pages = conn.execute("PRAGMA page_count").fetchone()[0]
        conn.execute(f"PRAGMA max_page_count = {pages}")

    await engine._call(clamp)
    big = '{"x": "' + "y" * 20_000 + '"}'
    writes = [engine.enqueue([new(payload_json=big)]) for _ in range(10)]
    results = await in_one_group(engine, writes)
    assert all(isinstance(r, EngineUnavailable) and "disk" in str(r) for r in results), results
    assert (await engine.counts("q")).pending == 1
    await engine._call(lambda conn: conn.execute("PRAGMA max_page_count = 1073741823"))
    await engine.enqueue([new()])
    assert (await engine.counts("q")).pending == 2


async def test_outcomes_and_enqueues_group_together(engine: SqliteEngine) -> None:
    """A worker's exchange (acks, claims) and producers' enqueues in one transaction."""
    await engine.enqueue([new() for _ in range(3)])
    ex = await engine.exchange([], queues=["q"], limit=3, worker_id="w", lease_ms=LEASE_MS)
    acks = [Outcome(kind="complete", job_id=j.id, token=j.token or "", result_json="1")
            for j in ex.jobs]  # fmt: skip
    results = await in_one_group(
        engine,
        [
            engine.enqueue([new()]),
            engine.exchange(acks, queues=["q"], limit=0, worker_id="w", lease_ms=LEASE_MS),
            engine.enqueue([new()]),
        ],
    )
    assert results[1].lost == []
    counts = await engine.counts("q")
    assert (counts.completed, counts.pending) == (3, 2)


PRODUCER = """
import asyncio, os, signal, sys
from conveyor.engines.base import Outcome
from conveyor.engines.sqlite import SqliteEngine
from conveyor.job import NewJob, new_job_id

KILL_AFTER = int(sys.argv[2])

async def main():
    eng = SqliteEngine(sys.argv[1])
    await eng.connect()
    acked = 0

    async def producer():
        nonlocal acked
        while True:
            job = NewJob(id=new_job_id("q"), queue="q", task="t", payload_json="{}",
                         max_attempts=1)
            await eng.enqueue([job])
            # Acknowledged: tell the test, then (at the mark) die at once, with other
            # groups in flight.
            os.write(1, (job.id + "\\n").encode())
            acked += 1
            if acked == KILL_AFTER:
                os.kill(os.getpid(), signal.SIGKILL)

    await asyncio.gather(*(producer() for _ in range(50)))

asyncio.run(main())
"""


@pytest.mark.parametrize("query", ["", "?synchronous=normal"])
def test_an_acknowledged_enqueue_survives_kill_9(tmp_path: Path, query: str) -> None:
    """A real producer process, 50 tasks enqueueing at once through group commit, is
    SIGKILLed right after an enqueue returns: every job it was told about is stored.
    (With ?synchronous=normal too: it gives up power cuts, not process crashes.)"""
    db = tmp_path / "kill.db"
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(PRODUCER), f"sqlite:///{db}{query}", "400"],
        env={**os.environ, "PYTHONPATH": SRC},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    acked = proc.stdout.split()
    assert len(acked) >= 400
    raw = sqlite3.connect(db)
    try:
        assert raw.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        stored = {r[0] for r in raw.execute("SELECT id FROM jobs WHERE state = 'pending'")}
    finally:
        raw.close()
    missing = [job_id for job_id in acked if job_id not in stored]
    assert not missing, f"{len(missing)} acknowledged jobs lost, e.g. {missing[:3]}"


# --- ?synchronous= --------------------------------------------------------------------------


def test_synchronous_option_in_the_url() -> None:
    assert parse_sqlite_synchronous("sqlite:///q.db") == "FULL"
    assert parse_sqlite_synchronous("sqlite:///q.db?synchronous=normal") == "NORMAL"
    assert parse_sqlite_synchronous("sqlite:///q.db?synchronous=FULL") == "FULL"
    assert parse_sqlite_url("sqlite:///q.db?synchronous=normal") == Path("q.db")
    for bad in ("sqlite:///q.db?synchronous=off", "sqlite:///q.db?mode=ro",
                "sqlite:///q.db?synchronous=normal&x=1"):  # fmt: skip
        with pytest.raises(ConfigError, match=r"\?synchronous=normal"):
            SqliteEngine(bad)


async def test_enqueues_commit_with_the_urls_sync_level(sqlite_url: str) -> None:
    """FULL by default for enqueues, NORMAL for the worker's exchange; with
    ?synchronous=normal, NORMAL for both."""

    def level(conn: sqlite3.Connection) -> int:
        return int(conn.execute("PRAGMA synchronous").fetchone()[0])

    full, normal = 2, 1
    for url, after_enqueue in ((sqlite_url, full), (sqlite_url + "?synchronous=normal", normal)):
        eng = SqliteEngine(url)
        await eng.enqueue([new()])
        assert await eng._call(level) == after_enqueue
        await eng.exchange([], queues=["q"], limit=1, worker_id="w", lease_ms=LEASE_MS)
        assert await eng._call(level) == normal
        await eng.enqueue([new()])
        assert await eng._call(level) == after_enqueue
        await eng.close()


async def test_close_commits_the_writes_already_queued(sqlite_url: str) -> None:
    """Writes in flight when `close` is called are committed and answered, not refused."""
    eng = SqliteEngine(sqlite_url)
    await eng.connect()
    gate = threading.Event()
    held = asyncio.ensure_future(eng._call(lambda conn: gate.wait(10)))
    await asyncio.sleep(0.05)
    tasks = [asyncio.ensure_future(eng.enqueue([new()])) for _ in range(50)]
    await asyncio.sleep(0)  # every write is queued behind the held thread
    closing = asyncio.ensure_future(eng.close())
    await asyncio.sleep(0.05)
    gate.set()
    await asyncio.gather(held, closing)
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert not [r for r in results if isinstance(r, BaseException)], results
    again = SqliteEngine(sqlite_url)
    assert (await again.counts("q")).pending == 50
    await again.close()
