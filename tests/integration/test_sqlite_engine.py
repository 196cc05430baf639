"""SQLite engine specifics: files, processes sharing one file, wake-ups, scale, errors.

The cross-engine behaviour lives in `tests/integration/contract/`; this file covers what
only a file shared by several processes can get wrong.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import sqlite3
import subprocess
import sys
import textwrap
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from conveyor.engines.base import FlowNode, Outcome
from conveyor.engines.sqlite import SqliteEngine, migrations, parse_sqlite_url
from conveyor.engines.sqlite import connection as sqlite_connection
from conveyor.engines.sqlite import engine as sqlite_engine_module
from conveyor.errors import (
    ConfigError,
    EngineUnavailable,
    SchemaTooNew,
)
from conveyor.job import JobState, NewJob, new_job_id
from conveyor.testing import eventually

LEASE_MS = 30_000
SRC = str(Path(__file__).resolve().parents[2] / "src")


def new(queue: str = "q", **kw: object) -> NewJob:
    return NewJob(
        id=new_job_id(queue), queue=queue, task="t", payload_json='{"n": 1}',
        max_attempts=3, **kw,  # type: ignore[arg-type]
    )  # fmt: skip


def db_path(url: str) -> Path:
    return parse_sqlite_url(url)


@pytest.fixture
async def engine(sqlite_url: str) -> AsyncIterator[SqliteEngine]:
    eng = SqliteEngine(sqlite_url)
    await eng.connect()
    yield eng
    await eng.close()


async def claim(eng: SqliteEngine, n: int = 10, queue: str = "q") -> list[str]:
    ex = await eng.exchange([], queues=[queue], limit=n, worker_id="w", lease_ms=LEASE_MS)
    return [j.id for j in ex.jobs]


def run_script(code: str, *args: str) -> subprocess.Popen[str]:
    """A child Python process with `src` importable (the engine under test)."""
    env = {**os.environ, "PYTHONPATH": SRC}
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


# --- URLs, files, schema ----------------------------------------------------------------


def test_url_forms(tmp_path: Path) -> None:
    assert parse_sqlite_url("sqlite:///conveyor.db") == Path("conveyor.db")
    assert parse_sqlite_url("sqlite:///data/q.db") == Path("data/q.db")
    assert parse_sqlite_url(f"sqlite:///{tmp_path}/q.db") == tmp_path / "q.db"
    assert parse_sqlite_url("sqlite:////var/q.db") == Path("/var/q.db")
    for bad in ("sqlite://", "sqlite:///", "sqlite:///:memory:", "sqlite://host/q.db",
                "sqlite:///q.db?mode=ro", "redis://x"):  # fmt: skip
        with pytest.raises(ConfigError, match="sqlite:///"):
            SqliteEngine(bad)


async def test_fresh_file_gets_schema_and_survives_reopen(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/nested/dir/conveyor.db"  # parent directories are created
    first = SqliteEngine(url)
    await first.connect()
    [res] = await first.enqueue([new(dedupe_key="k")])
    await first.pause("q")
    await first.close()
    await first.close()  # safe twice

    raw = sqlite3.connect(tmp_path / "nested/dir/conveyor.db")
    assert raw.execute("PRAGMA user_version").fetchone()[0] == sqlite_engine_module.SCHEMA_VERSION
    assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    tables = {r[0] for r in raw.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert {"jobs", "queues", "events", "workers", "queue_counts", "meta"} <= tables
    raw.close()

    again = SqliteEngine(url)
    await again.connect()
    job = await again.get_job(res.id)
    assert job.state is JobState.PENDING and job.dedupe_key == "k"
    counts = await again.counts("q")
    assert counts.pending == 1 and counts.paused
    # The dedupe key is still held after reopening.
    [dup] = await again.enqueue([new(dedupe_key="k")])
    assert (dup.id, dup.created) == (res.id, False)
    await again.close()


async def test_two_engines_opening_a_fresh_file_at_once(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/race.db"
    engines = [SqliteEngine(url) for _ in range(4)]
    await asyncio.gather(*(e.connect() for e in engines))  # each on its own thread
    await engines[0].enqueue([new()])
    assert all([(await e.counts("q")).pending == 1 for e in engines])
    await asyncio.gather(*(e.close() for e in engines))


async def test_engine_connects_lazily_and_reconnects_after_close(sqlite_url: str) -> None:
    eng = SqliteEngine(sqlite_url)
    [res] = await eng.enqueue([new()])  # no explicit connect
    await eng.close()
    assert (await eng.get_job(res.id)).state is JobState.PENDING
    await eng.close()


# --- errors ---------------------------------------------------------------------------------


async def test_path_under_a_file_is_unavailable_with_the_fix(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")
    eng = SqliteEngine(f"sqlite:///{blocker}/sub/conveyor.db")
    with pytest.raises(EngineUnavailable) as info:
        await eng.connect()
    message = str(info.value)
    assert str(blocker) in message and "writable" in message


async def test_directory_as_database_is_unavailable(tmp_path: Path) -> None:
    (tmp_path / "adir.db").mkdir()
    with pytest.raises(EngineUnavailable, match=r"adir\.db.*writable"):
        await SqliteEngine(f"sqlite:///{tmp_path}/adir.db").connect()


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores file permissions")
async def test_read_only_directory_is_unavailable(tmp_path: Path) -> None:
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        with pytest.raises(EngineUnavailable, match="writable"):
            await SqliteEngine(f"sqlite:///{ro}/conveyor.db").connect()
    finally:
        ro.chmod(0o700)


async def test_file_that_is_not_a_database_is_unavailable(tmp_path: Path) -> None:
    path = tmp_path / "garbage.db"
    path.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(EngineUnavailable, match=r"garbage\.db.*not a Conveyor SQLite"):
        await SqliteEngine(f"sqlite:///{path}").connect()


async def test_newer_schema_is_refused(tmp_path: Path) -> None:
    """A file stamped by a Conveyor from before numbered migrations, but newer."""
    path = tmp_path / "future.db"
    raw = sqlite3.connect(path)
    raw.execute("PRAGMA user_version = 99")
    raw.close()
    with pytest.raises(SchemaTooNew, match="upgrade Conveyor"):
        await SqliteEngine(f"sqlite:///{path}").connect()


# main's schema.sql as it was when numbered migrations arrived (schema version 3).
MAIN_SCHEMA = Path(__file__).parent / "fixtures" / "sqlite_schema_main_v3.sql"


async def test_file_made_by_the_previous_release_opens_and_keeps_its_jobs(
    tmp_path: Path,
) -> None:
    """A database built by main's schema script (user_version 3, no migration table),
    holding a job of each kind, is migrated in place and everything keeps working."""
    path = tmp_path / "old.db"
    raw = sqlite3.connect(path, isolation_level=None)
    raw.executescript(f"BEGIN;\n{MAIN_SCHEMA.read_text()}\nPRAGMA user_version = 3;\nCOMMIT;")
    raw.execute(
        "INSERT INTO jobs (id, queue, task, payload, state, max_attempts, priority, tenant, "
        "dedupe_key, created_ms, seq) VALUES "
        "('q:old-a', 'q', 't', '{}', 'pending', 3, 0, NULL, 'k', 1, 1), "
        "('q:old-b', 'q', 't', '{}', 'pending', 3, 0, 'acme', NULL, 2, 2)"
    )
    raw.execute("INSERT INTO queues (name, known) VALUES ('q', 1)")
    raw.execute("UPDATE meta SET value = 2 WHERE key = 'seq'")
    raw.close()

    engine = SqliteEngine(f"sqlite:///{path}")
    await engine.connect()
    try:
        counts = await engine.counts("q")
        assert counts.pending == 2
        [dup] = await engine.enqueue([new(dedupe_key="k")])  # the old job still holds "k"
        assert (dup.id, dup.created) == ("q:old-a", False)
        await engine.enqueue([new()])
        ids = await claim(engine, 3)
        assert ids[:2] == ["q:old-a", "q:old-b"]  # the old jobs keep their place in line
        assert await engine.tenant_running("q") == {"acme": 1}
    finally:
        await engine.close()
    raw = sqlite3.connect(path)
    applied = [r[0] for r in raw.execute("SELECT version FROM schema_migrations")]
    assert applied == [m.number for m in migrations.MIGRATIONS]
    assert raw.execute("PRAGMA user_version").fetchone()[0] == migrations.SCHEMA_VERSION
    raw.close()


async def test_file_migrated_by_a_newer_conveyor_is_refused_untouched(tmp_path: Path) -> None:
    path = tmp_path / "newer.db"
    engine = SqliteEngine(f"sqlite:///{path}")
    await engine.enqueue([new()])
    await engine.close()
    future = len(migrations.MIGRATIONS) + 1
    raw = sqlite3.connect(path, isolation_level=None)
    raw.execute(
        "INSERT INTO schema_migrations (version, name, applied_ms) VALUES (?, 'future', 0)",
        (future,),
    )
    raw.close()
    with pytest.raises(SchemaTooNew, match=rf"migrations \[{future}\].*upgrade Conveyor"):
        await SqliteEngine(f"sqlite:///{path}").connect()
    raw = sqlite3.connect(path)
    assert raw.execute("SELECT count(*) FROM jobs").fetchone()[0] == 1  # left as it was
    raw.close()


async def test_migrations_apply_in_order_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A new numbered migration runs once, on files at the previous number."""
    path = tmp_path / "m.db"
    engine = SqliteEngine(f"sqlite:///{path}")
    await engine.enqueue([new()])
    await engine.close()
    n = len(migrations.MIGRATIONS) + 1
    extra = migrations.Migration(n, "add_note", "ALTER TABLE queues ADD COLUMN note TEXT;")
    monkeypatch.setattr(migrations, "MIGRATIONS", (*migrations.MIGRATIONS, extra))
    for _ in range(2):  # the second open finds it applied (ALTER would fail twice)
        engine = SqliteEngine(f"sqlite:///{path}")
        assert (await engine.counts("q")).pending == 1
        await engine.close()
    raw = sqlite3.connect(path)
    assert "note" in [r[1] for r in raw.execute("PRAGMA table_info(queues)")]
    assert raw.execute("PRAGMA user_version").fetchone()[0] == 2 + n
    raw.close()


async def test_lock_held_too_long_is_unavailable_and_writes_nothing(
    sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sqlite_connection, "BUSY_TIMEOUT_MS", 100)
    eng = SqliteEngine(sqlite_url)
    await eng.connect()
    holder = sqlite3.connect(db_path(sqlite_url), isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # another process holding the write lock
    try:
        with pytest.raises(EngineUnavailable, match="write lock"):
            await eng.enqueue([new()])
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    counts = await eng.counts("q")
    assert counts.pending == 0
    await eng.enqueue([new()])  # usable again once the lock is free
    assert (await eng.counts("q")).pending == 1
    await eng.close()


# --- durability -----------------------------------------------------------------------------


async def test_enqueue_commits_with_fsync(engine: SqliteEngine) -> None:
    """Acknowledged jobs survive power loss: the enqueue commit runs with synchronous=FULL
    (2), even right after a hot-path exchange that used NORMAL (1)."""
    await engine.enqueue([new()])
    await claim(engine)
    assert await engine._call(lambda c: c.execute("PRAGMA synchronous").fetchone()[0]) == 1
    await engine.enqueue([new()])
    assert await engine._call(lambda c: c.execute("PRAGMA synchronous").fetchone()[0]) == 2


async def test_job_enqueued_survives_killed_process(sqlite_url: str) -> None:
    child = run_script(
        """
        import asyncio, os, sys
        from conveyor.engines.sqlite import SqliteEngine
        from conveyor.job import NewJob
        async def main():
            eng = SqliteEngine(sys.argv[1])
            await eng.enqueue([NewJob("q:survivor", "q", "t", "{}", 1)])
            print("acked", flush=True)
            os._exit(9)  # no close, no checkpoint
        asyncio.run(main())
        """,
        sqlite_url,
    )
    out, err = child.communicate(timeout=60)
    assert "acked" in out, err
    eng = SqliteEngine(sqlite_url)
    assert (await eng.get_job("q:survivor")).state is JobState.PENDING
    await eng.close()


# --- several processes on one file ----------------------------------------------------------

CLAIMER = """
import asyncio, json, os, random, sys, time
from conveyor.engines.base import FlowNode, Outcome
from conveyor.engines.sqlite import SqliteEngine

async def main():
    url, go, ready = sys.argv[1], sys.argv[2], sys.argv[3]
    eng = SqliteEngine(url)
    await eng.connect()
    open(ready, "w").close()
    while not os.path.exists(go):  # start together with the other claimer
        await asyncio.sleep(0.001)
    claimed, outcomes, idle = [], [], 0
    while idle < 3:
        ex = await eng.exchange(outcomes, queues=["q"], limit=random.randint(1, 4),
                                worker_id=str(os.getpid()), lease_ms=60_000)
        assert not ex.lost, ex.lost
        claimed += [j.id for j in ex.jobs]
        outcomes = [Outcome(j.id, j.token, "complete", result_json="1") for j in ex.jobs]
        idle = 0 if ex.jobs else idle + 1
        # A pause as a handler's would be: on a loaded machine one process could
        # otherwise drain all 500 before the other is scheduled at all.
        await asyncio.sleep(0.002)
    await eng.exchange(outcomes, queues=["q"], limit=0, worker_id="x", lease_ms=1)
    await eng.close()
    print(json.dumps(claimed))

asyncio.run(main())
"""


async def test_two_processes_never_claim_the_same_job(sqlite_url: str, tmp_path: Path) -> None:
    eng = SqliteEngine(sqlite_url)
    ids = [r.id for r in await eng.enqueue([new() for _ in range(500)])]
    go = tmp_path / "go"
    ready = [tmp_path / f"ready-{i}" for i in range(2)]
    children = [run_script(CLAIMER, sqlite_url, str(go), str(r)) for r in ready]

    async def both_ready() -> bool:
        return all(r.exists() for r in ready)

    await eventually(both_ready, timeout=60, message="both claimers connected")
    go.touch()
    results = []
    for child in children:
        out, err = await asyncio.to_thread(child.communicate, timeout=120)
        assert child.returncode == 0, err
        results.append(json.loads(out))
    first, second = results
    assert first and second, "both processes claimed (they really ran concurrently)"
    assert set(first).isdisjoint(second)
    assert len(first) + len(second) == 500 and set(first) | set(second) == set(ids)
    counts = await eng.counts("q")
    assert (counts.completed, counts.pending, counts.running) == (500, 0, 0)
    events = await eng.read_events(["q"], since={"q": "0"}, count=5000, block_ms=0)
    assert sum(e.kind == "started" for e in events) == 500
    await eng.close()


async def test_wake_up_from_another_process_is_prompt(engine: SqliteEngine) -> None:
    assert await claim(engine) == []
    waiter = asyncio.create_task(engine.wait_for_jobs(["q"], timeout=30))
    child = run_script(
        """
        import asyncio, sys, time
        from conveyor.engines.sqlite import SqliteEngine
        from conveyor.job import NewJob
        async def main():
            eng = SqliteEngine(sys.argv[1])
            await eng.connect()
            await eng.enqueue([NewJob("q:from-child", "q", "t", "{}", 1)])
            print(time.time(), flush=True)
            await eng.close()
        asyncio.run(main())
        """,
        engine.url,
    )
    out, err = await asyncio.to_thread(child.communicate, timeout=60)
    assert child.returncode == 0, err
    await asyncio.wait_for(waiter, 30)
    woke_at = time.time()
    enqueued_at = float(out.strip())
    assert woke_at - enqueued_at < 0.5, "woken by the other process's commit, not the timeout"
    assert await claim(engine) == ["q:from-child"]


async def test_idle_exchanges_write_nothing_so_idle_workers_do_not_wake_each_other(
    sqlite_url: str,
) -> None:
    """An empty claim must not commit any page: every commit wakes every idle worker of
    every other process, and if their empty claims committed too they would wake each
    other forever."""
    a, b = SqliteEngine(sqlite_url), SqliteEngine(sqlite_url)
    await a.enqueue([new(delay_ms=3_600_000)])  # a scheduled job, not yet due
    assert await claim(b) == []

    def version(conn: sqlite3.Connection) -> int:
        return int(conn.execute("PRAGMA data_version").fetchone()[0])

    before = await b._call(version)
    for _ in range(5):
        assert await claim(a) == []
    await a.recover_expired(["q"])
    assert await b._call(version) == before
    t0 = time.monotonic()
    waiter = asyncio.create_task(b.wait_for_jobs(["q"], timeout=0.3))
    while not waiter.done():
        await claim(a)  # a busy-polling peer does not wake b
    assert time.monotonic() - t0 > 0.25
    await a.close()
    await b.close()


async def test_close_while_waiting_does_not_hang(engine: SqliteEngine) -> None:
    assert await claim(engine) == []
    waiter = asyncio.create_task(engine.wait_for_jobs(["q"], timeout=30))
    await asyncio.sleep(0.05)
    reader = asyncio.create_task(engine.read_events(["q"], since=None, count=10, block_ms=30_000))
    await asyncio.sleep(0.05)
    await engine.close()
    await asyncio.wait_for(waiter, 5)
    assert await asyncio.wait_for(reader, 5) == []
    assert engine._executor is None and engine._conn is None  # not reopened by the waits


# --- scale: no full scans -------------------------------------------------------------------


def _fill_completed(path: Path, n: int, queue: str = "q") -> None:
    """Insert `n` completed jobs directly (the engine would take seconds to make them)."""
    raw = sqlite3.connect(path, isolation_level=None)
    raw.execute("BEGIN IMMEDIATE")
    raw.execute(
        """
        INSERT INTO jobs (id, queue, task, payload, state, attempt, max_attempts, created_ms,
                          started_ms, finished_ms, result, seq)
        WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < ?)
        SELECT ? || ':done' || x, ?, 't', '{}', 'completed', 1, 1, x, x, 1000000 + x / 7,
               '1', -1000000000 - x FROM c
        """,
        (n, queue, queue),
    )
    raw.execute("COMMIT")
    raw.close()


async def test_read_model_is_exact_with_100k_completed_jobs(engine: SqliteEngine) -> None:
    """Counts and deep keyset pages stay exact at 100k finished jobs. Speed is not asserted
    here (no timed tests): `test_hot_queries_use_indices` proves no query scans `jobs`,
    and `bench/` measures the figures."""
    await engine.enqueue([new()])  # creates the queue row
    _fill_completed(engine.path, 100_000)
    await engine.enqueue([new() for _ in range(10)])
    counts = await engine.counts("q")
    assert counts.completed == 100_000 and counts.pending == 11
    seen: set[str] = set()
    page = await engine.list_jobs("q", JobState.COMPLETED, limit=50)
    for _ in range(20):
        seen.update(j.id for j in page.jobs)
        assert page.cursor
        page = await engine.list_jobs("q", JobState.COMPLETED, limit=50, cursor=page.cursor)
    assert len(seen) == 20 * 50
    assert len(await claim(engine, 5)) == 5
    assert await engine.clean("q", JobState.COMPLETED, 0, 100) == 100
    assert (await engine.counts("q")).completed == 99_900


async def test_hot_queries_use_indices(engine: SqliteEngine) -> None:
    """Every query on the claim path and in the read model is an index search, never a
    scan of `jobs` (which would grow with the number of finished jobs)."""
    plans: list[str] = []

    def trace(conn: sqlite3.Connection) -> None:
        conn.set_trace_callback(plans.append)

    await engine._call(trace)
    res = (await engine.enqueue([new(dedupe_key="d"), new(delay_ms=60_000)]))[0]
    ex = await engine.exchange([], queues=["q"], limit=5, worker_id="w", lease_ms=LEASE_MS)
    await engine.exchange(
        [Outcome(ex.jobs[0].id, str(ex.jobs[0].token), "complete", result_json="1")],
        queues=["q"], limit=5, worker_id="w", lease_ms=LEASE_MS,
    )  # fmt: skip
    await engine.heartbeat([(res.id, "x")], lease_ms=LEASE_MS)
    # a flow: stored, a child finishing settles its parent, a parent cancelled cascades
    kids = [FlowNode(new(), "q:flow-root", "fail_parent", False) for _ in range(2)]
    root = FlowNode(dataclasses.replace(new(), id="q:flow-root"), None, "fail_parent", True)
    await engine.enqueue_flow([root, *kids])
    flow = await engine.exchange([], queues=["q"], limit=1, worker_id="w", lease_ms=LEASE_MS)
    await engine.exchange(
        [Outcome(j.id, str(j.token), "complete", result_json="1") for j in flow.jobs],
        queues=["q"], limit=0, worker_id="w", lease_ms=LEASE_MS,
    )  # fmt: skip
    await engine.flow_links("q:flow-root")
    await engine.cancel_job("q:flow-root")
    await engine.counts("q")
    for state in JobState:
        page = await engine.list_jobs("q", state, limit=1)
        await engine.list_jobs("q", state, limit=1, cursor=page.cursor or "0:0")
    await engine.clean("q", JobState.COMPLETED, 0, 10)
    await engine.read_events(["q"], since=None, count=10, block_ms=0)
    await engine._call(lambda c: c.set_trace_callback(None))

    statements = {
        s for s in plans
        if s.lstrip().upper().startswith(("SELECT", "UPDATE", "DELETE", "INSERT"))
        and " jobs" in s
    }  # fmt: skip
    assert len(statements) > 10
    raw = sqlite3.connect(engine.path)
    for sql in statements:
        detail = [row[3] for row in raw.execute("EXPLAIN QUERY PLAN " + sql)]
        assert not any(d.startswith("SCAN jobs") for d in detail), (sql, detail)
    raw.close()


async def test_fair_claims_use_indices(engine: SqliteEngine) -> None:
    """With tenants and limits, claims walk the rotation and the tenants' buckets through
    their indices: no statement scans `jobs` or `tenants`, however long the backlog."""
    from conveyor.limits import QueueLimits

    await engine.set_limits(
        "q",
        QueueLimits.build(concurrency=50, tenant_concurrency=2, rate="100/1s", tenant_rate="9/1s"),
    )
    await engine.enqueue([new(tenant=t) for t in ("a", "b", "a", "a")] + [new(), new()])
    plans: list[str] = []
    await engine._call(lambda conn: conn.set_trace_callback(plans.append))
    ex = await engine.exchange([], queues=["q"], limit=10, worker_id="w", lease_ms=LEASE_MS)
    assert len(ex.jobs) == 5  # a: 2 (its limit), b: 1, no tenant: 2
    await engine.exchange(
        [Outcome(ex.jobs[0].id, str(ex.jobs[0].token), "complete", result_json="1")],
        queues=["q"], limit=5, worker_id="w", lease_ms=LEASE_MS,
    )  # fmt: skip
    await engine.list_jobs("q", JobState.PENDING, limit=1)
    await engine.list_jobs("q", JobState.PENDING, tenant="a", limit=1, cursor="0:0")
    await engine._call(lambda c: c.set_trace_callback(None))
    statements = {
        s for s in plans
        if s.lstrip().upper().startswith(("SELECT", "UPDATE", "DELETE", "INSERT"))
        and (" jobs" in s or " tenants" in s or " rate_log" in s)
    }  # fmt: skip
    raw = sqlite3.connect(engine.path)
    for sql in statements:
        detail = [row[3] for row in raw.execute("EXPLAIN QUERY PLAN " + sql)]
        assert not any(d.startswith(("SCAN jobs", "SCAN tenants")) for d in detail), (sql, detail)
    raw.close()


# --- the event log's bound ------------------------------------------------------------------


async def test_event_log_is_trimmed_to_maxlen(sqlite_url: str) -> None:
    eng = SqliteEngine(sqlite_url, events_maxlen=100)
    for _ in range(10):
        await eng.enqueue([new() for _ in range(100)])
    await eng.enqueue([new("other")])
    stored = await eng._call(
        lambda c: c.execute("SELECT count(*) FROM events WHERE queue = 'q'").fetchone()[0]
    )
    assert 100 <= stored <= 100 + 64  # trimmed in batches, never below maxlen
    events = await eng.read_events(["q"], since={"q": "0"}, count=1000, block_ms=0)
    ids = [int(e.id) for e in events]
    assert ids == sorted(ids) and ids[-1] == int((await eng.last_event_ids(["q"]))["q"])
    assert len(await eng.read_events(["other"], since={"other": "0"}, count=10, block_ms=0)) == 1
    await eng.close()


# --- the engine applies conveyor.lifecycle; its SQL is read by name --------------------------


def test_outcome_statements_follow_the_transition_table() -> None:
    """Each outcome statement's SET clause is read off the lifecycle flags, and every
    statement is fenced by the lease token."""
    from conveyor.engines.sqlite.transitions import STATEMENTS
    from conveyor.lifecycle import TRANSITIONS, Place

    assert {kind for kind, _ in STATEMENTS} == set(TRANSITIONS)
    for (kind, delayed), sql in STATEMENTS.items():
        t = TRANSITIONS[kind]
        target = t.target(1 if delayed else 0)
        sets = sql.split(" WHERE ")[0]
        assert f"state = '{target.value}'" in sets, kind
        assert ("errors =" in sets) == t.append_error, kind
        assert ("attempt = max(0, attempt - 1)" in sets) == t.give_back_attempt, kind
        assert ("started_ms = NULL" in sets) == t.clear_started, kind
        assert ("result =" in sets) == t.store_result, kind
        assert ("finished_ms = :now" in sets) == t.finishes, kind
        keeps_place = target is not JobState.PENDING or t.place is Place.KEEP
        assert ("seq = :seq" in sets) == (not keeps_place), kind
        assert "token = :token AND state = 'running'" in sql, kind


def test_named_queries_are_unique_and_complete() -> None:
    from conveyor.engines.sqlite.queries import QUERIES, parse_queries

    assert "claim" in QUERIES and "{job_columns}" not in QUERIES["claim"]
    with pytest.raises(ValueError, match="'a' is repeated"):
        parse_queries("-- name: a\nSELECT 1;\n-- name: a\nSELECT 2;\n")
    for name, sql in QUERIES.items():  # each one is a single, complete statement
        assert sqlite3.complete_statement(sql + ";") and ";" not in sql, name
