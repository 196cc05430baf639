"""The engine contract, coordination: the worker registry, wake-ups, leadership leases and
the schedule store. Every test runs on memory, SQLite and Redis (conftest.py).

A wake-up test starts its waiter with `blocked_waiter` (seen blocking first), so it
proves the enqueue woke it; `asyncio.wait_for(waiter, 5)` on a 30 s wait proves it was
the wake-up and not the timeout, without timing anything.
"""

from __future__ import annotations

import asyncio

import pytest

from conveyor import Conveyor
from conveyor.engines import Engine, open_engine
from conveyor.testing import eventually

from .helpers import blocked_waiter, claim, engine_time_passes


async def test_ping_durable_flag_and_close_twice(engine_url: str) -> None:
    """`ping` answers with a round-trip time, `durable` says whether acknowledged jobs
    survive a crash (memory: never, readiness reports it; a SQLite file: always; Redis:
    only with AOF on, read from the server at connect), and `close` is safe twice."""
    eng = open_engine(engine_url)
    await eng.connect()
    assert await eng.ping() >= 0
    if engine_url.startswith("redis"):
        from tests.redis_topologies import raw_client

        raw = raw_client(engine_url, decode_responses=True)
        try:
            reply = await raw.config_get("appendonly")
            # A cluster client answers per node ({node: {...}}): every node must have AOF.
            values = [reply["appendonly"]] if "appendonly" in reply else [
                v["appendonly"] for v in reply.values()]  # fmt: skip
            aof = all(v == "yes" for v in values)
        finally:
            await raw.aclose()
        assert eng.durable is aof
    else:
        assert eng.durable is (not engine_url.startswith("memory://"))
    await eng.close()
    await eng.close()


async def test_workers_registry_expires(engine: Engine) -> None:
    await engine.register_worker("w-a", '{"queues": ["q"], "in_flight": 2}', ttl_ms=60_000)
    await engine.register_worker("w-b", '{"queues": ["q"]}', ttl_ms=60_000)
    assert sorted(w["id"] for w in await engine.workers()) == ["w-a", "w-b"]
    await engine.register_worker("w-b", '{"queues": ["q"]}', ttl_ms=1)  # stops heartbeating

    async def only_a() -> bool:
        return [w["id"] for w in await engine.workers()] == ["w-a"]

    await eventually(only_a, timeout=5, message="w-b's registration expired")
    assert (await engine.workers())[0]["in_flight"] == 2
    await engine.unregister_worker("w-a")
    assert await engine.workers() == []


# --- wake-ups: wait_for_jobs ------------------------------------------------------------------
@pytest.mark.parametrize("source", ["own", "peer"])
async def test_wait_for_jobs_wakes_on_enqueue(
    engine: Engine, peer: Engine, app: Conveyor, source: str
) -> None:
    """Woken by another connection's enqueue (another process) and by its own."""
    assert await claim(engine) == []
    waiter = await blocked_waiter(engine)
    await (peer if source == "peer" else engine).enqueue([app.build("t", {})])
    await asyncio.wait_for(waiter, 5)
    assert len(await claim(engine)) == 1


async def test_enqueue_between_empty_claim_and_wait_is_not_missed(
    engine: Engine, peer: Engine, app: Conveyor
) -> None:
    await engine.wait_for_jobs(["q"], timeout=0.05)  # Redis: subscribed from here on
    assert await claim(engine) == []
    await peer.enqueue([app.build("t", {})])  # lands after the claim, before the wait starts
    await asyncio.wait_for(engine.wait_for_jobs(["q"], timeout=30), 5)
    assert len(await claim(engine)) == 1


async def test_wait_for_jobs_returns_after_its_timeout(engine: Engine) -> None:
    assert await claim(engine) == []
    waiter = await blocked_waiter(engine, timeout=0.5)
    await asyncio.wait_for(waiter, 5)


async def test_resume_wakes_idle_workers(engine: Engine, peer: Engine, app: Conveyor) -> None:
    await peer.pause("q")
    await peer.enqueue([app.build("t", {})])
    assert await claim(engine) == []  # paused
    waiter = await blocked_waiter(engine)
    await peer.resume("q")
    await asyncio.wait_for(waiter, 5)
    assert len(await claim(engine)) == 1


async def test_a_cancelled_wait_leaves_waiting_usable(
    engine: Engine, peer: Engine, app: Conveyor
) -> None:
    """The worker cancels wait_for_jobs whenever local work arrives."""
    for _ in range(5):
        cancelled = asyncio.ensure_future(engine.wait_for_jobs(["q"], 10))
        await asyncio.sleep(0)  # the wait has started
        cancelled.cancel()
        with pytest.raises(asyncio.CancelledError):
            await cancelled
    waiter = await blocked_waiter(engine)
    await peer.enqueue([app.build("t", {})])
    await asyncio.wait_for(waiter, 5)


# --- scheduler primitives: leadership leases, the schedule store, fenced last run -----------
async def test_lease_acquire_renew_release(engine: Engine) -> None:
    assert await engine.lease_info("lead") is None
    assert await engine.acquire_lease("lead", "a", 30_000)
    assert await engine.acquire_lease("lead", "a", 30_000)  # already ours: extended
    assert not await engine.acquire_lease("lead", "b", 30_000)  # a's lease is live
    info = await engine.lease_info("lead")
    assert info is not None and info.holder == "a" and 0 < info.ttl_ms <= 30_000
    assert await engine.renew_lease("lead", "a", 30_000)
    assert not await engine.renew_lease("lead", "b", 30_000)  # compare-and-set
    assert not await engine.release_lease("lead", "b")  # b cannot drop a's lease
    assert (await engine.lease_info("lead")) is not None
    assert await engine.release_lease("lead", "a")
    assert await engine.lease_info("lead") is None
    assert await engine.acquire_lease("lead", "b", 30_000)  # free at once after a release
    assert await engine.acquire_lease("other", "a", 30_000)  # leases are independent


async def test_lease_can_be_taken_after_it_expires_and_the_old_holder_is_fenced(
    engine: Engine,
) -> None:
    assert await engine.acquire_lease("lead", "a", 150)

    async def taken_by_b() -> bool:
        return await engine.acquire_lease("lead", "b", 30_000)

    await eventually(taken_by_b, timeout=5, message="b takes the expired lease")
    assert not await engine.renew_lease("lead", "a", 30_000)  # a learns it lost
    assert not await engine.release_lease("lead", "a")
    info = await engine.lease_info("lead")
    assert info is not None and info.holder == "b"


async def test_schedule_store_crud(engine: Engine) -> None:
    assert await engine.schedules() == []
    await engine.put_schedule("b-sched", '{"v": 1}', "runtime")
    await engine.put_schedule("a-sched", '{"v": 1}', "code")
    [a, b] = await engine.schedules()
    assert (a.name, a.spec_json, a.source, a.paused, a.last_run_ms) == (
        "a-sched", '{"v": 1}', "code", False, None,
    )  # fmt: skip
    assert b.name == "b-sched" and b.source == "runtime" and b.since_ms > 0
    await engine.acquire_lease("scheduler", "me", 30_000)
    assert await engine.advance_schedule("a-sched", 1_000, lease="scheduler", holder="me")
    # an update keeps paused, baseline and last run
    assert await engine.set_schedule_paused("a-sched", True)
    since = (await engine.schedules())[0].since_ms
    await engine.put_schedule("a-sched", '{"v": 2}', "code")
    [a, _] = await engine.schedules()
    assert (a.spec_json, a.paused, a.since_ms, a.last_run_ms) == ('{"v": 2}', True, since, 1000)
    assert await engine.set_schedule_paused("a-sched", True)  # pausing twice keeps since
    assert (await engine.schedules())[0].since_ms == since
    await engine_time_passes(engine)  # so "now" is later than `since` on the engine's clock
    assert await engine.set_schedule_paused("a-sched", False)  # resume: baseline moves to now
    [a, _] = await engine.schedules()
    assert not a.paused and a.since_ms > since and a.last_run_ms == 1000
    assert not await engine.set_schedule_paused("missing", True)
    assert await engine.delete_schedule("b-sched")
    assert not await engine.delete_schedule("b-sched")
    assert [s.name for s in await engine.schedules()] == ["a-sched"]


async def test_advance_schedule_is_fenced_by_the_lease_and_monotonic(engine: Engine) -> None:
    await engine.put_schedule("s", "{}", "code")
    # nobody leads: refused
    assert not await engine.advance_schedule("s", 1_000, lease="scheduler", holder="a")
    assert await engine.acquire_lease("scheduler", "a", 30_000)
    assert not await engine.advance_schedule("s", 1_000, lease="scheduler", holder="b")
    assert await engine.advance_schedule("s", 1_000, lease="scheduler", holder="a")
    assert not await engine.advance_schedule("s", 1_000, lease="scheduler", holder="a")
    assert not await engine.advance_schedule("s", 500, lease="scheduler", holder="a")  # never back
    assert await engine.advance_schedule("s", 2_000, lease="scheduler", holder="a")
    assert not await engine.advance_schedule("gone", 3_000, lease="scheduler", holder="a")
    assert await engine.release_lease("scheduler", "a")
    assert await engine.acquire_lease("scheduler", "b", 30_000)
    assert not await engine.advance_schedule("s", 3_000, lease="scheduler", holder="a")  # stale
    assert await engine.advance_schedule("s", 3_000, lease="scheduler", holder="b")
    assert [s.last_run_ms for s in await engine.schedules()] == [3_000]


async def test_schedule_error_is_stored_fenced_and_cleared_by_the_next_run(
    engine: Engine,
) -> None:
    await engine.put_schedule("s", "{}", "code")
    await engine.put_schedule("t", "{}", "code")
    error = '{"message": "task \'x\' is not registered", "type": "UnknownTask"}'
    # nobody leads: refused, nothing stored
    assert not await engine.record_schedule_error("s", error, lease="scheduler", holder="a")
    assert [s.last_error for s in await engine.schedules()] == [None, None]
    assert await engine.acquire_lease("scheduler", "a", 30_000)
    assert not await engine.record_schedule_error("s", error, lease="scheduler", holder="b")
    assert await engine.record_schedule_error("s", error, lease="scheduler", holder="a")
    assert not await engine.record_schedule_error("gone", error, lease="scheduler", holder="a")
    assert [s.last_error for s in await engine.schedules()] == [error, None]  # only "s"
    # an update of the definition keeps it; the next error replaces it
    await engine.put_schedule("s", '{"v": 2}', "code")
    assert (await engine.schedules())[0].last_error == error
    newer = '{"message": "payload is invalid", "type": "InvalidPayload"}'
    assert await engine.record_schedule_error("s", newer, lease="scheduler", holder="a")
    assert (await engine.schedules())[0].last_error == newer
    # a deposed leader can neither write nor clear it
    assert await engine.release_lease("scheduler", "a")
    assert await engine.acquire_lease("scheduler", "b", 30_000)
    assert not await engine.record_schedule_error("s", error, lease="scheduler", holder="a")
    assert not await engine.advance_schedule("s", 1_000, lease="scheduler", holder="a")
    assert (await engine.schedules())[0].last_error == newer
    # the next recorded run clears it
    assert await engine.advance_schedule("s", 1_000, lease="scheduler", holder="b")
    [s, _] = await engine.schedules()
    assert (s.last_run_ms, s.last_error) == (1_000, None)
