"""Helpers shared by the contract suite: drive an engine the way a worker does.

Every helper goes through the `Engine` protocol, except `corrupt_payload`, which must
write bad bytes underneath it (no protocol method stores a malformed job, by design).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import sqlite3

from conveyor.engines import Engine, Event, Outcome
from conveyor.job import AttemptError, Job
from conveyor.testing import eventually

LEASE_MS = 30_000


async def claim(
    engine: Engine,
    n: int = 10,
    queues: tuple[str, ...] = ("q",),
    lease_ms: int = LEASE_MS,
    worker_id: str = "w1",
) -> list[Job]:
    """Claim up to `n` jobs as worker `worker_id` (an exchange with no outcomes)."""
    return (
        await engine.exchange([], queues=queues, limit=n, worker_id=worker_id, lease_ms=lease_ms)
    ).jobs


async def finish(engine: Engine, *outcomes: Outcome) -> list[str]:
    """Report `outcomes` without claiming more; returns the ids whose lease was lost."""
    return (
        await engine.exchange(outcomes, queues=("q",), limit=0, worker_id="w1", lease_ms=LEASE_MS)
    ).lost


async def complete(engine: Engine, *jobs: Job) -> list[str]:
    """Complete each of `jobs` with the result 1; returns the ids whose lease was lost."""
    return await finish(
        engine, *(Outcome(j.id, str(j.token), "complete", result_json="1") for j in jobs)
    )


async def still_waiting(task: asyncio.Future[object], seconds: float = 0.2) -> bool:
    """True if `task` has not finished after `seconds`.

    This is an assertion, not a settle sleep: a blocking call (a wait for jobs, a read of
    events) must be seen to block while nothing happens, and proving that a thing does
    not happen needs a window. Use it as `assert await still_waiting(waiter)`.
    """
    done, _ = await asyncio.wait({task}, timeout=seconds)
    return not done


async def engine_time_passes(engine: Engine, ms: int = 2) -> None:
    """Wait until the engine's own clock (Redis `TIME`, the SQLite engine's clock) has moved
    on by at least `ms` since this call: read through a lease's remaining time, the one
    reading of its clock every engine gives."""
    ttl = 3_600_000
    assert await engine.acquire_lease("contract:clock", "probe", ttl)

    async def moved() -> bool:
        info = await engine.lease_info("contract:clock")
        return info is not None and info.ttl_ms <= ttl - ms

    await eventually(moved, timeout=5, interval=0.002, message=f"the engine clock moved {ms} ms")
    assert await engine.release_lease("contract:clock", "probe")


async def blocked_waiter(engine: Engine, timeout: float = 30) -> asyncio.Future[None]:
    """A `wait_for_jobs(["q"])` call that has been seen to block.

    The first wait may return at once (Redis subscribes in it; spurious wake-ups are
    allowed), so one short wait goes first.
    """
    await engine.wait_for_jobs(["q"], timeout=0.05)
    waiter = asyncio.ensure_future(engine.wait_for_jobs(["q"], timeout))
    assert await still_waiting(waiter), "wait_for_jobs must block while there is no work"
    return waiter


def err(attempt: int, msg: str = "boom") -> str:
    """The stored JSON of a failed attempt's error."""
    return AttemptError(attempt, "RuntimeError", msg, "tb", 1.0).to_json()


def tenants_of(jobs: list[Job]) -> collections.Counter[str | None]:
    """How many of `jobs` each tenant has (None: jobs without a tenant)."""
    return collections.Counter(j.tenant for j in jobs)


async def corrupt_payload(engine: Engine, engine_url: str, job: Job | str) -> None:
    """Overwrite a stored job's payload with bytes that are not JSON, underneath the engine.

    This is the one place the contract suite knows how each engine stores a job: a
    malformed row can only come from outside the protocol (a bad migration, a hand edit,
    another client), so the test has to put it there the same way.
    """
    job_id = job if isinstance(job, str) else job.id
    queue = job_id.split(":", 1)[0]
    if engine_url.startswith("redis"):
        from conveyor.engines.redis.keys import KeyLayout
        from tests.redis_topologies import raw_client

        prefix = engine_url.split("prefix=")[1]
        raw = raw_client(engine_url)
        try:
            await raw.hset(KeyLayout(prefix).queue(queue).job(job_id), "payload", "[not json")
        finally:
            await raw.aclose()
        return
    if engine_url.startswith("postgresql://"):
        import psycopg

        from conveyor.engines.postgres import parse_postgres_url

        dsn, schema = parse_postgres_url(engine_url)
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as pg:
            await pg.execute(
                f"UPDATE \"{schema}\".jobs SET payload = '[not json' WHERE id = %s", (job_id,)
            )
        return
    if engine_url.startswith("sqlite:///"):
        # A second connection to the file, as another process would open it.
        path = engine_url.removeprefix("sqlite:///")
        with contextlib.closing(sqlite3.connect(path, timeout=5, isolation_level=None)) as db:
            db.execute("UPDATE jobs SET payload = '[not json' WHERE id = ?", (job_id,))
        return
    # memory:// is SQLite on a private in-memory database: there is no outside, so the
    # row is written through the engine's own connection.
    call = getattr(engine, "_write", None)
    if call is not None:
        await call(
            lambda c: c.execute("UPDATE jobs SET payload = '[not json' WHERE id = ?", (job_id,))
        )
        return
    raise AssertionError(f"corrupt_payload does not know how {engine_url} stores jobs: teach it")


async def settled_events(
    engine: Engine, start: dict[str, str], n: int, queues: tuple[str, ...] = ("q",)
) -> list[Event]:
    """The events after `start`, read until at least `n` are there (or 10 s passed).

    Postgres shows an event once every older transaction on the server has ended, so a
    reader never passes one that commits late; the other engines show it at once. The
    caller compares what was read, so a shortfall still fails with the full list.
    """
    events: list[Event] = []

    async def enough() -> bool:
        events[:] = await engine.read_events(queues, since=start, count=1000, block_ms=100)
        return len(events) >= n

    with contextlib.suppress(AssertionError):
        await eventually(enough, timeout=10, message="events settled")
    return events
