"""What only the Postgres engine does: its schema and migrations, the rules it reads
from tables, one round trip per exchange, fleet-wide limits across engines, LISTEN/
NOTIFY with its polling fallback, and enqueue inside a caller's own transaction.

Every behaviour it shares with the other engines is in the contract suite.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import psycopg
import pytest
from psycopg_pool import AsyncConnectionPool

from conveyor import ConfigError, Conveyor, EngineUnavailable, JobNotFound
from conveyor.engines import open_engine
from conveyor.engines.postgres import PostgresEngine, parse_postgres_url
from conveyor.engines.postgres.migrations import MIGRATIONS
from conveyor.engines.postgres.rules import RULES, TRANSITION_ROWS
from conveyor.errors import SchemaTooNew
from conveyor.job import JobState
from conveyor.limits import QueueLimits
from conveyor.testing import eventually

pytestmark = pytest.mark.usefixtures("postgres_url")


@pytest.fixture
async def engine(postgres_url: str) -> AsyncIterator[PostgresEngine]:
    eng = open_engine(postgres_url)
    assert isinstance(eng, PostgresEngine)
    await eng.connect()
    yield eng
    await eng.close()


@pytest.fixture
def app(postgres_url: str) -> Conveyor:
    app = Conveyor(postgres_url)

    @app.task("t", queue="q")
    async def t(job: object) -> None:
        return None

    return app


def conninfo(url: str) -> str:
    return parse_postgres_url(url)[0]


async def claim(engine: PostgresEngine, n: int = 10, worker: str = "w") -> list[Any]:
    return (
        await engine.exchange([], queues=["q"], limit=n, worker_id=worker, lease_ms=30_000)
    ).jobs


def record_statements(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The statements every psycopg async cursor executes from now on, in order
    (`connection.execute` goes through a cursor too; the engine's hot calls run on a
    cursor kept per connection)."""
    sent: list[str] = []
    real = psycopg.AsyncCursor.execute

    async def recording(self: psycopg.AsyncCursor[Any], query: Any, *a: Any, **k: Any) -> Any:
        sent.append(str(query))
        return await real(self, query, *a, **k)

    monkeypatch.setattr(psycopg.AsyncCursor, "execute", recording)
    return sent


# --- URL, schema, migrations, rules -----------------------------------------------------------
def test_url_names_the_schema_and_keeps_libpq_parameters() -> None:
    assert parse_postgres_url("postgresql://u:p@h:5433/db?schema=jobs&sslmode=require") == (
        "postgresql://u:p@h:5433/db?sslmode=require",
        "jobs",
    )
    assert parse_postgres_url("postgres://h/db")[1] == "conveyor"
    with pytest.raises(ConfigError, match="schema="):
        parse_postgres_url("postgresql://h/db?schema=bad-name;drop")


async def test_schema_is_created_with_numbered_migrations(
    engine: PostgresEngine, postgres_url: str
) -> None:
    async with await psycopg.AsyncConnection.connect(conninfo(postgres_url)) as conn:
        cur = await conn.execute(
            f"SELECT version, name FROM {engine.schema_sql}.schema_migrations ORDER BY version"
        )
        assert await cur.fetchall() == [(m.number, m.name) for m in MIGRATIONS]
        assert [m.name for m in MIGRATIONS][:3] == ["initial", "exchange", "outbox"]


async def test_an_older_schema_is_upgraded_in_place(
    engine: PostgresEngine, app: Conveyor, postgres_url: str
) -> None:
    """A schema made by a Conveyor that knew only migration 0001 gets the later ones
    and keeps its jobs."""
    [res] = await engine.enqueue([app.build("t", {"kept": True})])
    await engine.close()
    async with await psycopg.AsyncConnection.connect(
        conninfo(postgres_url), autocommit=True
    ) as conn:
        for table in ("outbox", "transitions", "rules"):
            await conn.execute(f"DROP TABLE {engine.schema_sql}.{table}")
        await conn.execute(f"DROP FUNCTION {engine.schema_sql}.exchange")
        await conn.execute(f"DELETE FROM {engine.schema_sql}.schema_migrations WHERE version > 1")
    again = open_engine(postgres_url)
    await again.connect()
    try:
        assert (await again.get_job(res.id)).payload == {"kept": True}
        assert isinstance(again, PostgresEngine)
        assert [job.id for job in await claim(again)] == [res.id]  # exchange() is back
        assert await again.outbox_lag_ms() is None  # the outbox too, empty
    finally:
        await again.close()


async def test_a_schema_from_a_newer_conveyor_is_refused_and_left_alone(
    engine: PostgresEngine, postgres_url: str
) -> None:
    await engine.close()
    async with await psycopg.AsyncConnection.connect(
        conninfo(postgres_url), autocommit=True
    ) as conn:
        await conn.execute(
            f"INSERT INTO {engine.schema_sql}.schema_migrations (version, name) "
            "VALUES (999, 'future')"
        )
    newer = open_engine(postgres_url)
    with pytest.raises(SchemaTooNew, match="999"):
        await newer.connect()


async def test_the_rules_tables_hold_lifecycle_as_written(
    engine: PostgresEngine, postgres_url: str
) -> None:
    """The SQL reads its rules from these rows: they must be lifecycle's, exactly."""
    async with await psycopg.AsyncConnection.connect(conninfo(postgres_url)) as conn:
        cur = await conn.execute(f"SELECT * FROM {engine.schema_sql}.transitions ORDER BY kind")
        assert await cur.fetchall() == sorted(TRANSITION_ROWS)
        cur = await conn.execute(f"SELECT name, value FROM {engine.schema_sql}.rules")
        assert dict(await cur.fetchall()) == RULES


# --- the hot path: one round trip ---------------------------------------------------------
async def test_an_exchange_is_one_statement(
    engine: PostgresEngine, app: Conveyor, monkeypatch: pytest.MonkeyPatch
) -> None:
    await engine.enqueue([app.build("t", {}) for _ in range(3)])
    [first, *_] = await claim(engine, 1)
    sent = record_statements(monkeypatch)
    from conveyor.engines import Outcome

    result = await engine.exchange(
        [Outcome(first.id, str(first.token), "complete", result_json="1")],
        queues=["q"],
        limit=2,
        worker_id="w",
        lease_ms=30_000,
    )
    assert len(result.jobs) == 2 and result.lost == []
    assert len(sent) == 1, sent  # outcomes and claim: one call, no BEGIN/COMMIT


async def test_only_an_exchange_without_outcomes_skips_the_wal_flush(
    engine: PostgresEngine, app: Conveyor, monkeypatch: pytest.MonkeyPatch, postgres_url: str
) -> None:
    """An idle worker's claim commits without waiting for the WAL flush (nothing it
    writes was acknowledged); an exchange that reports outcomes still waits for it."""
    await engine.enqueue([app.build("t", {}) for _ in range(3)])
    await engine._listen_from_now()  # (a worker's first exchange would; its LISTEN uncounted)
    sent = record_statements(monkeypatch)
    [first] = await claim(engine, 1)
    from conveyor.engines import Outcome

    done = Outcome(first.id, str(first.token), "complete", result_json="1")
    result = await engine.exchange([done], queues=["q"], limit=1, worker_id="w", lease_ms=30_000)
    assert len(result.jobs) == 1 and result.lost == []
    assert sent == [engine.q["exchange_claim"], engine.q["exchange"]]
    monkeypatch.undo()
    # What each statement leaves in force for its own transaction's COMMIT:
    args = ("[]", ["q"], 1, "w", 30_000, None)
    async with await psycopg.AsyncConnection.connect(conninfo(postgres_url)) as conn:
        for name, expected in (("exchange_claim", "off"), ("exchange", "on")):
            async with conn.transaction():
                await conn.execute(engine.q[name], args)
                cur = await conn.execute("SELECT current_setting('synchronous_commit')")
                assert await cur.fetchone() == (expected,), name
        cur = await conn.execute("SELECT current_setting('synchronous_commit')")
        assert await cur.fetchone() == ("on",)  # for that transaction only


# --- churn: what earlier runs left does not slow the next (migration 0013) ------------------
async def blocks_read(
    conn: psycopg.AsyncConnection[Any], schema: str, sql: str, tables: tuple[str, ...] = ("jobs",)
) -> dict[str, int]:
    """Run `sql` in a transaction of its own and return the buffers it read (hit or not)
    of each of `tables` and their indexes, counted by the server: load-independent. (The
    backend's counts not yet sent to the statistics are read before and after, in the
    transaction, since nothing is sent before it ends.)"""
    counts = (
        "SELECT c.relname, pg_stat_get_xact_blocks_fetched(c.oid) FROM pg_class c"
        " WHERE c.oid = ANY(%(t)s::regclass[])"
        " OR c.oid IN (SELECT indexrelid FROM pg_index WHERE indrelid = ANY(%(t)s::regclass[]))"
    )
    names = {"t": [f'"{schema}".{table}' for table in tables]}
    async with conn.transaction():
        cur = await conn.execute(counts, names)
        before = dict(await cur.fetchall())
        await conn.execute(sql)
        cur = await conn.execute(counts, names)
        return {str(name): int(n - before[name]) for name, n in await cur.fetchall()}


async def test_the_exchange_reads_no_more_after_purged_runs(
    engine: PostgresEngine, app: Conveyor, postgres_url: str
) -> None:
    """Three runs of 2,000 jobs (enqueued, claimed, completed, purged) leave nothing the
    next run's claims and outcomes step over: a claim of 25 reads a few pages of the
    claim index (the purge vacuumed the dead head away), never all pending jobs through
    another index, and outcomes find their jobs by primary key, not by reading every
    running job (the plans do not depend on statistics, which this table never got)."""
    from conveyor.engines import Outcome

    for _ in range(3):
        await engine.enqueue([app.build("t", {}) for _ in range(2_000)])
        for _ in range(2):
            got = await claim(engine, 1_000)
            done = [Outcome(j.id, str(j.token), "complete", result_json="1") for j in got]
            await engine.exchange(done, queues=["q"], limit=0, worker_id="w", lease_ms=60_000)
        assert await engine.purge("q") == 2_000
    await engine.enqueue([app.build("t", {}) for _ in range(2_000)])
    schema = engine.schema_sql.strip('"')
    call = f"SELECT {engine.schema_sql}.exchange('%s'::jsonb, ARRAY['q'], %d, 'w', 60000)"
    async with await psycopg.AsyncConnection.connect(conninfo(postgres_url)) as conn:
        await blocks_read(conn, schema, call % ("[]", 25))  # plans made (index metapages read)
        for _ in range(2):  # generic plans, cached for the connection
            claimed = await blocks_read(conn, schema, call % ("[]", 25))
            assert claimed["jobs_claim"] <= 6, claimed
            assert claimed["jobs_pending_age"] == 0, claimed  # no read-everything-and-sort
        await claim(engine, 1_000)  # 1,075 running jobs, over some 60 pages
        cur = await conn.execute(
            f"SELECT id, token FROM {engine.schema_sql}.jobs WHERE state = 'running'"
        )
        running = await cur.fetchall()
        assert len(running) == 1_075
        for start in range(0, 75, 25):
            outcomes = json.dumps(
                [{"id": i, "token": t, "kind": "complete"} for i, t in running[start : start + 25]]
            )
            finished = await blocks_read(conn, schema, call % (outcomes, 0))
            if start == 0:
                continue  # plans made
            # By primary key: not a scan of the 1,075 running jobs (their index and pages).
            assert finished["jobs_lease"] <= 4, finished  # the lease probe's descent only
            assert finished["jobs_pkey"] <= 25 * 4 and finished["jobs"] <= 25 * 8, finished
    assert (await app.counts("q")).completed == 75


async def test_the_fair_claim_reads_no_more_as_turns_pile_up(
    engine: PostgresEngine, app: Conveyor, postgres_url: str
) -> None:
    """W5's shape (jobs over 100 tenants, 2 running per tenant): every turn rewrites its
    tenant's row, so 2,000 claimed jobs leave some 2,000 dead entries at the head of the
    turn index. A claim of 25 late in the run reads no more than one early in it (it
    starts at the remembered floor of live turns, migration 0016), and never reads every
    pending job (a hash of them) to find the tenants that have some."""
    from conveyor.engines import Outcome

    await engine.set_limits("q", QueueLimits(tenant_concurrency=2))
    await engine.enqueue([app.build("t", {}, tenant=f"t{i % 100}") for i in range(6_000)])
    schema = engine.schema_sql.strip('"')
    call = f"SELECT {engine.schema_sql}.exchange('[]'::jsonb, ARRAY['q'], 25, 'w', 60000)"
    tables = ("jobs", "tenants")

    async def finish_running() -> None:
        async with conn.transaction():
            cur = await conn.execute(
                f"SELECT id, token FROM {engine.schema_sql}.jobs WHERE state = 'running'"
            )
            running = await cur.fetchall()
        done = [Outcome(i, t, "complete", result_json="1") for i, t in running]
        await engine.exchange(done, queues=["q"], limit=0, worker_id="w", lease_ms=60_000)

    async with await psycopg.AsyncConnection.connect(conninfo(postgres_url)) as conn:
        reads = []
        for _ in range(200):  # 5,000 jobs, one turn each
            reads.append(await blocks_read(conn, schema, call, tables))
            await finish_running()
        assert (await app.counts("q")).completed == 5_000
        cur = await conn.execute(
            f"SELECT (SELECT turn FROM {engine.schema_sql}.turn_floors WHERE queue = 'q'),"
            f" (SELECT min(turn) FROM {engine.schema_sql}.tenants WHERE queue = 'q' AND turn > 0)"
        )
        floor, lowest = await cur.fetchone() or (None, None)
    # The floor is the lowest live turn (tenants served since only got higher ones).
    assert floor is not None and lowest is not None and 0 < floor <= lowest, (floor, lowest)
    early, late = reads[2], reads[-1]  # (the first calls make the plans)
    for read in (early, late):
        # Before 0016 a claim of 25 read the heap page of every pending tenant job (6,186
        # buffers early in this run, 1,301 late).
        assert read["jobs"] <= 600 and read["jobs_pending_age"] == 0, read
    for name in ("tenants", "tenants_pkey", "jobs_tenant_claim", "jobs_tenant_running"):
        assert late[name] <= 2 * early[name] + 8, (name, early, late)


# --- fleet-wide limits: several engines (processes) claim at once -------------------------
async def test_concurrency_limit_holds_across_engines(
    engine: PostgresEngine, app: Conveyor, postgres_url: str
) -> None:
    await engine.set_limits("q", QueueLimits(concurrency=3, tenant_concurrency=1))
    await engine.enqueue(
        [app.build("t", {}, tenant=f"t{i % 4}") for i in range(20)]
        + [app.build("t", {}) for _ in range(10)]
    )
    others = [open_engine(postgres_url) for _ in range(4)]
    for other in others:
        await other.connect()
    try:
        claimed = await asyncio.gather(
            *(claim(e, 5, worker=f"w{i}") for i, e in enumerate([*others, engine] * 3))  # type: ignore[arg-type]
        )
    finally:
        for other in others:
            await other.close()
    jobs = [job for batch in claimed for job in batch]
    assert len(jobs) == 3, "queue concurrency 3, whoever claims"
    tenants = [job.tenant for job in jobs if job.tenant]
    assert len(tenants) == len(set(tenants)), "tenant concurrency 1"
    assert (await engine.counts("q")).running == 3


async def test_skip_locked_claimers_never_share_a_job(
    engine: PostgresEngine, app: Conveyor, postgres_url: str
) -> None:
    await engine.enqueue([app.build("t", {}) for _ in range(200)])
    others = [open_engine(postgres_url) for _ in range(3)]
    for other in others:
        await other.connect()
    try:
        claimed = await asyncio.gather(
            *(claim(e, 10, worker=f"w{i}") for i, e in enumerate([*others, engine] * 5))  # type: ignore[arg-type]
        )
    finally:
        for other in others:
            await other.close()
    ids = [job.id for batch in claimed for job in batch]
    assert len(ids) == 200 and len(set(ids)) == 200


# --- wake-ups ----------------------------------------------------------------------------------
async def test_wait_falls_back_to_polling_when_listen_is_lost(
    engine: PostgresEngine, app: Conveyor, postgres_url: str
) -> None:
    await claim(engine, 1)  # a worker's first exchange starts the LISTEN
    assert engine._listening
    async with await psycopg.AsyncConnection.connect(
        conninfo(postgres_url), autocommit=True
    ) as admin:
        await admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE query LIKE 'LISTEN %%' AND datname = current_database() "
            "AND pid <> pg_backend_pid()"
        )

        async def deaf() -> bool:
            return not engine._listening

        await eventually(deaf, timeout=10)
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        await engine.wait_for_jobs(["q"], timeout=30)
        assert loop.time() - t0 < 10, "returned by polling, not after the 30 s timeout"

    async def listening() -> bool:
        return engine._listening

    await eventually(listening, timeout=15)  # and it listens again


async def test_a_process_that_only_enqueues_does_not_listen(
    engine: PostgresEngine, app: Conveyor, postgres_url: str
) -> None:
    """A producer never waits, so it opens no LISTEN connection (it would be woken by
    the NOTIFYs of each of its own enqueues); a worker's first exchange starts it, and
    a job enqueued after that exchange wakes the worker's wait."""
    await engine.enqueue([app.build("t", {"n": 1})])
    assert engine._listener is None and not engine._listening
    await claim(engine, 5)
    assert engine._listening
    generation = engine._jobs_wake.generation
    async with await psycopg.AsyncConnection.connect(
        conninfo(postgres_url), autocommit=True
    ) as other:
        await engine.enqueue_in(other, [app.build("t", {"n": 2})])  # NOTIFY from elsewhere

    async def woken() -> bool:
        return engine._jobs_wake.generation != generation

    await eventually(woken, message="the other process's NOTIFY reached the listener")
    # Returns at once (woken meanwhile), not after its 30 s timeout.
    await asyncio.wait_for(engine.wait_for_jobs(["q"], timeout=30), 10)


async def test_the_usual_single_enqueue_is_the_lean_statement_with_the_same_answers(
    engine: PostgresEngine, app: Conveyor, postgres_url: str
) -> None:
    """A job with no tenant, dedupe key or delay goes to `enqueue_one` (migration 0017):
    the same row, event and NOTIFYs as `enqueue`; what it cannot store (a queue not known
    yet, an id that exists) gets `enqueue`'s answer."""
    first = app.build("t", {"n": 1})  # queue `q` not known yet: through `enqueue`
    [made] = await engine.enqueue([first])
    assert (made.created, made.state) == (True, JobState.PENDING)
    async with await psycopg.AsyncConnection.connect(
        conninfo(postgres_url), autocommit=True
    ) as other:
        await other.execute(f'LISTEN "{engine.channel}"')
        second = app.build("t", {"n": 2})
        sql, _ = engine.enqueue_statement([second])
        assert "enqueue_one" in sql
        [made] = await engine.enqueue([second])  # the lean path, on the held line
        assert (made.id, made.created, made.state) == (second.id, True, JobState.PENDING)
        heard = [n.payload async for n in other.notifies(timeout=2, stop_after=2)]
        assert sorted(heard) == ["events", "jobs"]
        [again] = await engine.enqueue([second])  # a rerun: the job that holds the id
        assert (again.id, again.created, again.state) == (second.id, False, JobState.PENDING)
        job = await engine.get_job(second.id)
        assert (job.payload, job.max_attempts, job.priority) == ({"n": 2}, second.max_attempts, 0)
        rows = await (
            await other.execute(
                f"SELECT kind, task, attempt FROM {engine.schema_sql}.events WHERE job_id = %s",
                (second.id,),
            )
        ).fetchall()
        assert rows == [("enqueued", "t", 0)], "one event, as `enqueue` writes it"
    assert [j.id for j in await claim(engine)] == [first.id, second.id], "FIFO kept"


# --- transactional enqueue ---------------------------------------------------------------------
async def test_enqueue_in_a_transaction_exists_only_once_committed(
    engine: PostgresEngine, app: Conveyor, postgres_url: str
) -> None:
    await claim(engine)  # a worker: its first exchange starts the LISTEN
    assert engine._listening
    async with await psycopg.AsyncConnection.connect(conninfo(postgres_url)) as conn:
        async with conn.transaction():
            [res] = await engine.enqueue_in(conn, [app.build("t", {"n": 1})])
            assert res.created
            assert (await engine.get_job_in(conn, res.id)).payload == {"n": 1}
            with pytest.raises(JobNotFound):
                await engine.get_job(res.id)  # other connections do not see it yet
            assert await claim(engine) == [], "no worker sees an uncommitted job"
            waiter = asyncio.create_task(engine.wait_for_jobs(["q"], timeout=30))
            done, _ = await asyncio.wait({waiter}, timeout=0.3)
            assert not done, "no wake-up before COMMIT"
        # committed: the NOTIFY sent inside the transaction wakes the worker now
        await asyncio.wait_for(waiter, 10)
        [job] = await claim(engine)
        assert job.id == res.id


async def test_enqueue_in_a_rolled_back_transaction_leaves_nothing(
    engine: PostgresEngine, app: Conveyor, postgres_url: str
) -> None:
    stored: list[str] = []

    async def business(conn: psycopg.AsyncConnection[Any]) -> None:
        async with conn.transaction():
            [res] = await engine.enqueue_in(conn, [app.build("t", {}, dedupe_key="k")])
            stored.append(res.id)
            assert await claim(engine) == []
            raise RuntimeError("business rule failed after the enqueue")

    async with await psycopg.AsyncConnection.connect(conninfo(postgres_url)) as conn:
        with pytest.raises(RuntimeError, match="business rule"):
            await business(conn)
    [res_id] = stored
    with pytest.raises(JobNotFound):
        await engine.get_job(res_id)
    assert await claim(engine) == []
    counts = await engine.counts("q")
    assert (counts.pending, counts.running, counts.completed) == (0, 0, 0)
    assert await engine.read_events(["q"], since={"q": "0"}, count=10, block_ms=0) == [], (
        "no event was ever visible"
    )
    # the dedupe key was never held: a new job takes it
    [again] = await engine.enqueue([app.build("t", {}, dedupe_key="k")])
    assert again.created


def test_enqueue_in_a_sync_transaction(
    engine: PostgresEngine, app: Conveyor, postgres_url: str
) -> None:
    with psycopg.connect(conninfo(postgres_url)) as conn:
        with conn.transaction():
            [kept] = engine.enqueue_in_sync(conn, [app.build("t", {"kept": True})])
            assert engine.get_job_in_sync(conn, kept.id).payload == {"kept": True}
        lost: list[str] = []

        def business() -> None:
            with conn.transaction():
                [res] = engine.enqueue_in_sync(conn, [app.build("t", {"kept": False})])
                lost.append(res.id)
                raise RuntimeError("rolled back")

        with pytest.raises(RuntimeError, match="rolled back"):
            business()
        with pytest.raises(JobNotFound):
            engine.get_job_in_sync(conn, lost[0])
        assert engine.get_job_in_sync(conn, kept.id).state == "pending"


async def test_enqueue_in_refuses_what_is_not_a_psycopg_connection(
    engine: PostgresEngine, app: Conveyor, postgres_url: str
) -> None:
    with pytest.raises(ConfigError, match="psycopg"):
        await engine.enqueue_in(object(), [app.build("t", {})])
    with (
        psycopg.connect(conninfo(postgres_url)) as sync_conn,
        pytest.raises(ConfigError, match="AsyncConnection"),
    ):
        await engine.enqueue_in(sync_conn, [app.build("t", {})])


async def test_pool_connections_are_reused(engine: PostgresEngine) -> None:
    """A sanity check on the engine's pool: it exists and is bounded."""
    pool = engine._pool
    assert isinstance(pool, AsyncConnectionPool) and pool.max_size <= 8


async def test_an_unreachable_server_is_a_named_error_with_the_fix() -> None:
    eng = open_engine("postgresql://postgres:secret@127.0.0.1:1/db?schema=conveyor")
    with pytest.raises(EngineUnavailable, match=r"127\.0\.0\.1:1/db") as info:
        await eng.connect()
    assert "secret" not in str(info.value), "the password never reaches a message"
    assert "CONVEYOR_URL" in str(info.value)


async def test_connections_killed_by_the_server_are_replaced(
    engine: PostgresEngine, app: Conveyor, postgres_url: str
) -> None:
    """A failover or an admin's pg_terminate_backend: at most a named error, then the
    pool reconnects and no job is lost."""
    [res] = await engine.enqueue([app.build("t", {})])
    async with await psycopg.AsyncConnection.connect(
        conninfo(postgres_url), autocommit=True
    ) as admin:
        await admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )

    async def answers() -> bool:
        try:
            await engine.ping()
        except EngineUnavailable:
            return False
        return True

    await eventually(answers, timeout=15)
    assert (await engine.get_job(res.id)).state == "pending"


async def test_an_event_committed_late_is_never_skipped(
    engine: PostgresEngine, app: Conveyor, postgres_url: str
) -> None:
    """Event ids come in commit order (migrations 0005, 0010): a transaction that wrote
    its event first but commits last is read after the one that committed first, and a
    reader that has already passed that one (and stamped positions while it was still
    open) still gets it."""
    # The queue's first job registers it; a transaction doing that first would make the
    # other enqueue wait for its COMMIT (the README says so).
    await engine.enqueue([app.build("t", {"n": "first"})])
    start = await engine.last_event_ids(["q"])
    async with await psycopg.AsyncConnection.connect(conninfo(postgres_url)) as slow:
        [late] = await engine.enqueue_in(slow, [app.build("t", {"n": "late"})])  # row first
        [early] = await engine.enqueue([app.build("t", {"n": "early"})])  # commits first
        seen = await engine.read_events(["q"], since=start, count=10, block_ms=0)
        assert [e.job_id for e in seen] == [early.id], "the committed event is not held back"
        await slow.commit()
    events = await engine.read_events(["q"], since={"q": seen[-1].id}, count=10, block_ms=5000)
    assert [e.job_id for e in events] == [late.id]
    after = await engine.read_events(["q"], since={"q": events[-1].id}, count=10, block_ms=0)
    assert after == []
    everything = await engine.read_events(["q"], since=start, count=10, block_ms=0)
    assert [e.job_id for e in everything] == [early.id, late.id]


async def test_an_unrelated_open_transaction_does_not_delay_events(
    engine: PostgresEngine, app: Conveyor, postgres_url: str
) -> None:
    """A long transaction elsewhere (here: one holding a transaction id, so it pins the
    server's xmin, on the same database) delays no event; so does an open transaction
    that wrote events of its own but has not committed."""
    await engine.enqueue([app.build("t", {"n": "first"})])
    start = await engine.last_event_ids(["q"])
    async with (
        await psycopg.AsyncConnection.connect(conninfo(postgres_url)) as idle,
        await psycopg.AsyncConnection.connect(conninfo(postgres_url)) as writer,
    ):
        await idle.execute("SELECT pg_current_xact_id()")  # an xid, left open
        await engine.enqueue_in(writer, [app.build("t", {"n": "uncommitted"})])
        [job] = await engine.enqueue([app.build("t", {"n": "now"})])
        events = await engine.read_events(["q"], since=start, count=10, block_ms=0)
        assert [(e.kind, e.job_id) for e in events] == [("enqueued", job.id)]
        # A worker's events (started, completed) are readable while both stay open.
        [claimed] = await claim(engine, 1)
        assert claimed.id != job.id  # "first" is older
        more = await engine.read_events(["q"], since={"q": events[-1].id}, count=10, block_ms=0)
        assert [(e.kind, e.job_id) for e in more] == [("started", claimed.id)]
        await writer.rollback()


async def write_interleaved(
    engine: PostgresEngine, app: Conveyor, url: str, writers: int, per_writer: int
) -> list[str]:
    """`writers` connections each enqueue `per_writer` jobs, one transaction each, with
    commits interleaved in an order unrelated to when they wrote; the ids, as committed."""
    made: list[str] = []

    async def write(w: int) -> None:
        async with await psycopg.AsyncConnection.connect(conninfo(url)) as conn:
            for i in range(per_writer):
                [res] = await engine.enqueue_in(conn, [app.build("t", {"w": w, "i": i})])
                await asyncio.sleep(((w * 7 + i * 3) % 5) / 1000)  # commits interleave
                await conn.commit()
                made.append(res.id)

    await asyncio.gather(*(write(w) for w in range(writers)))
    return made


async def test_concurrent_writers_events_are_read_once_each_in_commit_order(
    engine: PostgresEngine, app: Conveyor, postgres_url: str
) -> None:
    """Writers commit in an order unrelated to when they wrote, while a reader tails the
    log: it reads every event exactly once, positions never go back."""
    await engine.enqueue([app.build("t", {"n": "first"})])
    position = await engine.last_event_ids(["q"])
    writers, per_writer = 6, 15
    made: list[str] = []
    done = asyncio.Event()

    async def writers_run() -> None:
        made.extend(await write_interleaved(engine, app, postgres_url, writers, per_writer))
        done.set()

    seen: list[str] = []
    keys: list[tuple[int, int]] = []
    task = asyncio.create_task(writers_run())
    while True:
        finished = done.is_set()
        batch = await engine.read_events(["q"], since=position, count=7, block_ms=50)
        for event in batch:
            seen.append(event.job_id)
            pos, _, row = event.id.partition("-")
            keys.append((int(pos), int(row)))
        if batch:
            position = {"q": batch[-1].id}
        elif finished:
            break
    await task
    assert sorted(seen) == sorted(made) and len(seen) == writers * per_writer
    assert keys == sorted(keys) and len(set(keys)) == len(keys)


async def test_concurrent_readers_stamping_at_once_each_read_every_event_in_order(
    postgres_url: str, app: Conveyor
) -> None:
    """Readers stamp commit positions (migration 0010). Several readers, each on an
    engine of its own (its own pool), tail the log while writers commit out of order:
    every reader reads every event once, positions never go back, and all readers agree
    on each event's position (a stamp is never drawn twice or behind another)."""
    readers = [PostgresEngine(postgres_url) for _ in range(3)]
    for reader in readers:
        await reader.connect()
    try:
        await readers[0].enqueue([app.build("t", {"n": "first"})])
        start = await readers[0].last_event_ids(["q"])
        made: list[str] = []
        done = asyncio.Event()

        async def writers_run() -> None:
            made.extend(await write_interleaved(readers[0], app, postgres_url, 4, 12))
            done.set()

        async def tail(reader: PostgresEngine) -> list[tuple[tuple[int, int], str]]:
            position = dict(start)
            got: list[tuple[tuple[int, int], str]] = []
            while True:
                finished = done.is_set()
                batch = await reader.read_events(["q"], since=position, count=5, block_ms=20)
                for event in batch:
                    pos, _, row = event.id.partition("-")
                    got.append(((int(pos), int(row)), event.job_id))
                if batch:
                    position = {"q": batch[-1].id}
                elif finished:
                    return got

        task = asyncio.create_task(writers_run())
        tails = await asyncio.gather(*(tail(r) for r in readers))
        await task
        for got in tails:
            keys = [k for k, _ in got]
            assert sorted(j for _, j in got) == sorted(made)
            assert keys == sorted(keys) and len(set(keys)) == len(keys)
        assert tails[0] == tails[1] == tails[2]
    finally:
        for reader in readers:
            await reader.close()


async def test_a_stamp_waits_for_the_stamp_before_it_to_commit(
    engine: PostgresEngine, app: Conveyor, postgres_url: str
) -> None:
    """Two readers stamping at once (migration 0010). Timeline without the lock:
    A stamps X1 -> pos 7 (not committed); X2 commits; B stamps X2 -> pos 8, commits, a
    reader passes 8; A commits 7: behind the reader, skipped. With it, B waits for A's
    COMMIT, so what B stamps sorts after what A stamped."""
    [first] = await engine.enqueue([app.build("t", {"n": "first"})])
    async with (
        await psycopg.AsyncConnection.connect(conninfo(postgres_url)) as stamper,
        await psycopg.AsyncConnection.connect(conninfo(postgres_url), autocommit=True) as mon,
    ):
        await stamper.execute(engine.q["stamp_events"])  # A: stamps `first`, holds the lock
        [second] = await engine.enqueue([app.build("t", {"n": "second"})])
        reading = asyncio.create_task(
            engine.read_events(["q"], since={"q": "0"}, count=10, block_ms=0)
        )

        async def waits_on_the_lock() -> bool:
            cur = await mon.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                " AND wait_event_type = 'Lock' AND wait_event = 'advisory'"
            )
            row = await cur.fetchone()
            return row is not None and row[0] >= 1

        await eventually(waits_on_the_lock, message="the second stamp waits for the first")
        assert not reading.done()
        await stamper.commit()
        events = await reading
    assert [e.job_id for e in events] == [first.id, second.id]
    assert int(events[0].id.partition("-")[0]) < int(events[1].id.partition("-")[0])


async def test_writers_draw_no_commit_position_until_someone_reads(
    engine: PostgresEngine, app: Conveyor, postgres_url: str
) -> None:
    """An enqueue writes its event row and nothing else for the event order (no
    `event_commits` row, no lock at COMMIT, migration 0010); the first read stamps
    every transaction it finds, one position each, in one go."""

    async def positions() -> int:
        async with await psycopg.AsyncConnection.connect(conninfo(postgres_url)) as conn:
            cur = await conn.execute(f"SELECT count(*) FROM {engine.schema_sql}.event_commits")
            row = await cur.fetchone()
            assert row is not None
            return int(row[0])

    before = await positions()
    for i in range(5):
        await engine.enqueue([app.build("t", {"i": i})])
    assert await positions() == before
    events = await engine.read_events(["q"], since={"q": "0"}, count=10, block_ms=0)
    assert len(events) == 5 and len({e.id.partition("-")[0] for e in events}) == 5
    assert await positions() == before + 5


async def test_commit_positions_are_trimmed_with_the_events_they_order(
    postgres_url: str, app: Conveyor
) -> None:
    """One commit position per event-writing transaction; trimming the events trims the
    positions no remaining event needs, and readers keep reading from the start."""
    eng = PostgresEngine(postgres_url, events_maxlen=10)
    await eng.connect()
    try:
        for i in range(150):  # 150 transactions, one event each
            await eng.enqueue([app.build("t", {"i": i})])
        await claim(eng, 1)  # an exchange starts a trim once enough events were added
        assert eng._trimmer is not None  # beside the exchange, not inside its round trip
        await eng._trimmer
        async with await psycopg.AsyncConnection.connect(conninfo(postgres_url)) as conn:
            cur = await conn.execute(f"SELECT count(*) FROM {eng.schema_sql}.event_commits")
            row = await cur.fetchone()
            assert row is not None and row[0] <= 12
        events = await eng.read_events(["q"], since={"q": "0"}, count=100, block_ms=0)
        assert 10 <= len(events) <= 12 and events[-1].kind == "started"
    finally:
        await eng.close()


async def test_events_written_after_a_rolled_back_savepoint_are_read(
    engine: PostgresEngine, app: Conveyor, postgres_url: str
) -> None:
    """Events written after a rolled-back savepoint are read (their transaction is
    stamped like any other once it commits; the undone event never shows)."""
    await engine.enqueue([app.build("t", {"n": "first"})])
    start = await engine.last_event_ids(["q"])
    conn = await psycopg.AsyncConnection.connect(conninfo(postgres_url))
    async with conn, conn.transaction():
        async with conn.transaction():  # a savepoint, rolled back
            await engine.enqueue_in(conn, [app.build("t", {"n": "undone"})])
            raise psycopg.Rollback()
        [kept] = await engine.enqueue_in(conn, [app.build("t", {"n": "kept"})])
    events = await engine.read_events(["q"], since=start, count=10, block_ms=2000)
    assert [(e.kind, e.job_id) for e in events] == [("enqueued", kept.id)]


async def test_events_from_before_commit_order_keep_their_positions(
    engine: PostgresEngine, app: Conveyor, postgres_url: str
) -> None:
    """Upgrading from before migration 0005 to now (0005, then 0010): events already
    written get their transaction id as commit position (what their old "xid-id" ids
    named), and new ones sort after them."""
    [old] = await engine.enqueue([app.build("t", {"n": "old"})])
    await engine.close()
    async with await psycopg.AsyncConnection.connect(
        conninfo(postgres_url), autocommit=True
    ) as conn:  # back to a schema 0005 never touched: no commit positions
        await conn.execute(f"DROP TABLE {engine.schema_sql}.event_commits")
        await conn.execute(f"DROP SEQUENCE {engine.schema_sql}.event_pos")
        await conn.execute(
            f"DELETE FROM {engine.schema_sql}.schema_migrations WHERE version IN (5, 10)"
        )
        cur = await conn.execute(f"SELECT xid::text, id FROM {engine.schema_sql}.events")
        [(xid, row_id)] = await cur.fetchall()
    again = PostgresEngine(postgres_url)
    await again.connect()
    try:
        [new] = await again.enqueue([app.build("t", {"n": "new"})])
        events = await again.read_events(["q"], since={"q": "0"}, count=10, block_ms=0)
        assert (events[0].job_id, events[0].id) == (old.id, f"{xid}-{row_id}")
        assert [e.job_id for e in events] == [old.id, new.id]
        later = await again.read_events(["q"], since={"q": events[0].id}, count=10, block_ms=0)
        assert [e.job_id for e in later] == [new.id]
    finally:
        await again.close()
