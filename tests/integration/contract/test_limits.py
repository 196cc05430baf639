"""The engine contract, fairness and limits (docs/DESIGN.md, "Guarantees", 6): queue and
tenant concurrency, rates, tenants taking turns, enforced inside the claim itself.
Every test runs on memory, SQLite and Redis (conftest.py).
"""

from __future__ import annotations

import asyncio

import pytest

from conveyor import ConfigError, Conveyor, Job, JobState
from conveyor.engines import Engine, Outcome
from conveyor.limits import QueueLimits
from conveyor.testing import eventually

from .helpers import LEASE_MS, blocked_waiter, claim, complete, err, finish, tenants_of


async def test_limits_are_stored_and_cleared(engine: Engine) -> None:
    assert (await engine.get_limits("q")).empty
    limits = QueueLimits.build(
        concurrency=5, tenant_concurrency=2, rate="100/1s", tenant_rate="10/500ms"
    )
    await engine.set_limits("q", limits)
    assert await engine.get_limits("q") == limits
    assert limits.to_dict() == {
        "concurrency": 5,
        "tenant_concurrency": 2,
        "rate": "100/1s",
        "tenant_rate": "10/500ms",
    }
    assert (await engine.get_limits("other")).empty  # per queue
    await engine.set_limits("q", None)
    assert (await engine.get_limits("q")).empty


async def test_queue_concurrency_caps_running_jobs(engine: Engine, app: Conveyor) -> None:
    await engine.set_limits("q", QueueLimits(concurrency=2))
    await engine.enqueue([app.build("t", {"i": i}) for i in range(5)])
    first = await claim(engine, 10)
    assert [j.payload["i"] for j in first] == [0, 1]
    assert await claim(engine, 10) == []  # a second worker gets nothing either
    held = await engine.list_jobs("q", JobState.PENDING, limit=10)
    # Held back by the limit: still pending, no attempt spent, order kept.
    assert [(j.payload["i"], j.attempt) for j in held.jobs] == [(2, 0), (3, 0), (4, 0)]
    await complete(engine, first[0])
    assert [j.payload["i"] for j in await claim(engine, 10)] == [2]
    await engine.set_limits("q", None)
    assert len(await claim(engine, 10)) == 2


async def test_tenant_concurrency_and_jobs_without_tenant(engine: Engine, app: Conveyor) -> None:
    await engine.set_limits("q", QueueLimits(tenant_concurrency=2))
    await engine.enqueue(
        [app.build("t", {}, tenant="a") for _ in range(20)]
        + [app.build("t", {}, tenant="b") for _ in range(3)]
        + [app.build("t", {}) for _ in range(3)]
    )
    got = await claim(engine, 10)
    # Jobs without a tenant belong to no tenant: the tenant limit does not apply to them.
    assert tenants_of(got) == {"a": 2, "b": 2, None: 3}
    assert await engine.tenant_running("q") == {"a": 2, "b": 2}
    assert await claim(engine, 10) == []
    a_job = next(j for j in got if j.tenant == "a")
    await complete(engine, a_job)
    assert await engine.tenant_running("q") == {"a": 1, "b": 2}
    assert tenants_of(await claim(engine, 10)) == {"a": 1}
    counts = await engine.counts("q")
    assert (counts.pending, counts.running, counts.completed) == (18, 7, 1)


async def test_tenants_take_turns(engine: Engine, app: Conveyor) -> None:
    """A tenant with a big backlog cannot delay a small one, even without limits."""
    await engine.enqueue([app.build("t", {"n": i}, tenant="big") for i in range(200)])
    await engine.enqueue(
        [app.build("t", {"n": i}, tenant="small", priority=p) for i, p in enumerate([0, 0, 5])]
    )
    got = await claim(engine, 6)
    assert tenants_of(got) == {"big": 3, "small": 3}
    # Within a tenant: priority first, then FIFO.
    assert [j.payload["n"] for j in got if j.tenant == "small"] == [2, 0, 1]
    assert [j.payload["n"] for j in got if j.tenant == "big"] == [0, 1, 2]
    # Listings keep the queue's priority/FIFO order; counts see every bucket.
    page = await engine.list_jobs("q", JobState.PENDING, limit=3)
    assert [(j.tenant, j.payload["n"]) for j in page.jobs] == [("big", 3), ("big", 4), ("big", 5)]
    only_big = await engine.list_jobs("q", JobState.PENDING, tenant="big", limit=500)
    assert [j.payload["n"] for j in only_big.jobs] == list(range(3, 200))
    counts = await engine.counts("q")
    assert (counts.pending, counts.running) == (197, 6)


async def test_rate_limit_caps_starts_and_says_when_it_reopens(
    engine: Engine, app: Conveyor
) -> None:
    await engine.set_limits("q", QueueLimits.build(rate="3/800ms"))
    await engine.enqueue([app.build("t", {"i": i}) for i in range(5)])
    assert len(await claim(engine, 10)) == 3
    ex = await engine.exchange([], queues=("q",), limit=10, worker_id="w2", lease_ms=LEASE_MS)
    assert ex.jobs == [] and ex.next_due_ms is not None and 0 < ex.next_due_ms <= 800
    assert {j.attempt for j in (await engine.list_jobs("q", JobState.PENDING)).jobs} == {0}
    got: list[Job] = []

    async def reopened() -> bool:
        got.extend(await claim(engine, 10))
        return len(got) >= 2

    await eventually(reopened, timeout=5, message="rate window reopened")
    assert len(got) == 2


async def test_tenant_rate_limit(engine: Engine, app: Conveyor) -> None:
    await engine.set_limits("q", QueueLimits.build(tenant_rate="2/10s"))
    await engine.enqueue(
        [app.build("t", {}, tenant=t) for t in ("a", "b") for _ in range(4)] + [app.build("t", {})]
    )
    got = await claim(engine, 20)
    assert tenants_of(got) == {"a": 2, "b": 2, None: 1}
    ex = await engine.exchange([], queues=("q",), limit=10, worker_id="w", lease_ms=LEASE_MS)
    assert ex.jobs == [] and ex.next_due_ms is not None and 9_000 < ex.next_due_ms <= 10_000


async def test_finished_job_wakes_workers_held_back_by_a_limit(
    engine: Engine, app: Conveyor
) -> None:
    await engine.set_limits("q", QueueLimits(concurrency=1))
    await engine.enqueue([app.build("t", {}) for _ in range(2)])
    [job] = await claim(engine, 5)
    assert await claim(engine, 5) == []  # held back: this worker goes idle
    waiter = await blocked_waiter(engine)  # no wake-up while the limit holds
    await complete(engine, job)
    await asyncio.wait_for(waiter, 5)  # a 30 s wait: woken by the finished job
    assert len(await claim(engine, 5)) == 1


async def test_tenant_jobs_keep_every_operation(engine: Engine, app: Conveyor) -> None:
    """Cancel, fail + retry, release, expiry, promote and purge work on tenant jobs."""
    await engine.set_limits("q", QueueLimits(tenant_concurrency=5))
    a = [app.build("t", {"i": i}, tenant="a", max_attempts=2) for i in range(4)]
    later = app.build("t", {}, tenant="a", delay=3600)
    await engine.enqueue([*a, later])
    await engine.cancel_job(a[0].id)
    j1, j2, j3 = await claim(engine, 3)
    assert [j.id for j in (j1, j2, j3)] == [a[1].id, a[2].id, a[3].id]
    await finish(engine, Outcome(j1.id, str(j1.token), "fail", error_json=err(1)))
    await finish(engine, Outcome(j2.id, str(j2.token), "release"))
    await engine.cancel_job(j3.id)
    assert await engine.tenant_running("q") == {}
    assert await engine.retry_all("q") == 1
    await engine.promote_job(later.id)
    # Released first (front of its bucket), then the retried and the promoted job.
    again = await claim(engine, 5, lease_ms=30)
    assert [j.id for j in again] == [j2.id, j1.id, later.id]
    assert await engine.tenant_running("q") == {"a": 3}

    async def expired() -> bool:
        await engine.recover_expired(["q"])
        return await engine.tenant_running("q") == {}

    await eventually(expired, timeout=5, message="expired tenant leases recovered")
    assert (await engine.counts("q")).pending == 3
    assert await engine.purge("q") == 5
    assert await claim(engine, 5) == []
    await engine.enqueue([app.build("t", {}, tenant="a")])
    assert tenants_of(await claim(engine, 5)) == {"a": 1}


def test_invalid_limits_name_the_fix() -> None:
    with pytest.raises(ConfigError, match="100/1s"):
        QueueLimits.build(rate="fast")
    with pytest.raises(ConfigError, match="concurrency=-1"):
        QueueLimits(concurrency=-1)
    with pytest.raises(ConfigError, match="tenant_rate"):
        QueueLimits.build(tenant_rate="0/1s")
    assert QueueLimits.build(rate="5/250ms").rate_window_ms == 250
    assert QueueLimits.build(rate="100/s").to_dict()["rate"] == "100/1s"
    assert QueueLimits.build(rate="1000/1m").rate_window_ms == 60_000


async def test_a_tenant_that_refills_its_bucket_does_not_jump_the_rotation(
    engine: Engine, app: Conveyor
) -> None:
    """Least recently served first: a bucket that emptied keeps its last turn."""
    await engine.enqueue([app.build("t", {}, tenant="a"), app.build("t", {}, tenant="b")])
    [first] = await claim(engine, 1)  # a's turn ('a' < 'b' on a tie)
    assert first.tenant == "a"
    await engine.enqueue([app.build("t", {}, tenant="a")])  # a's bucket refills at once
    assert [j.tenant for j in await claim(engine, 1)] == ["b"]
    assert [j.tenant for j in await claim(engine, 1)] == ["a"]
