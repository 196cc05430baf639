"""The engine contract, job flow: enqueue, claim, outcomes, leases and recovery.

Every test runs on memory, SQLite and Redis (see conftest.py). Time-dependent checks
use the engine's own due times and short leases and wait on conditions with
`eventually`, because Redis decides time with its own clock.
"""

from __future__ import annotations

import asyncio
import dataclasses
from datetime import UTC, datetime, timedelta

import pytest

from conveyor import Conveyor, JobNotFound, JobState, MalformedJob
from conveyor.clock import FakeClock
from conveyor.engines import Engine, Exchange, Outcome
from conveyor.testing import eventually

from .helpers import LEASE_MS, claim, corrupt_payload, err, finish, settled_events


async def test_enqueue_roundtrips_every_field(engine: Engine, app: Conveyor) -> None:
    new = app.build(
        "t",
        {"to": "a@example.com", "n": [1, 2]},
        priority=5,
        tenant="acme",
        dedupe_key="welcome:42",
        timeout=7.5,
        backoff=[1, 5, 30],
        max_attempts=4,
    )
    [res] = await engine.enqueue([new])
    assert res.created and res.id == new.id and res.state == JobState.PENDING
    job = await engine.get_job(new.id)
    assert (job.queue, job.task, job.state) == ("q", "t", JobState.PENDING)
    assert job.payload == {"to": "a@example.com", "n": [1, 2]}
    assert (job.priority, job.tenant, job.dedupe_key, job.timeout) == (5, "acme", "welcome:42", 7.5)
    assert job.backoff == {"kind": "list", "delays": [1.0, 5.0, 30.0]}
    assert (job.attempt, job.max_attempts) == (0, 4)
    assert job.created_at > 0 and job.errors == []
    assert "q" in await engine.queue_names()


async def test_get_job_unknown_id_raises(engine: Engine) -> None:
    with pytest.raises(JobNotFound, match="no job"):
        await engine.get_job("q:doesnotexist")


async def test_enqueue_many_keeps_order_across_queues(engine: Engine, app: Conveyor) -> None:
    jobs = [app.build("t", {"i": i}, queue="q" if i % 2 else "other") for i in range(20)]
    results = await engine.enqueue(jobs)
    assert [r.id for r in results] == [j.id for j in jobs]
    assert (await engine.counts("q")).pending == 10
    assert (await engine.counts("other")).pending == 10


async def test_dedupe_returns_live_job_and_releases_key_when_finished(
    engine: Engine, app: Conveyor
) -> None:
    first = app.build("t", {"v": 1}, dedupe_key="k")
    second = app.build("t", {"v": 2}, dedupe_key="k")
    r1, r2 = await engine.enqueue([first]), await engine.enqueue([second])
    assert r1[0].created and not r2[0].created and r2[0].id == first.id
    assert (await engine.counts("q")).pending == 1
    [job] = await claim(engine)
    again = await engine.enqueue([app.build("t", {"v": 3}, dedupe_key="k")])
    assert again[0].id == first.id  # still running: deduped
    await finish(engine, Outcome(job.id, str(job.token), "complete", result_json="1"))
    after = await engine.enqueue([app.build("t", {"v": 4}, dedupe_key="k")])
    assert after[0].created and after[0].id != first.id


async def test_enqueue_is_idempotent_by_job_id(engine: Engine, app: Conveyor) -> None:
    """Re-enqueueing an id that exists (a producer or outbox relay retrying after a crash,
    a reply lost in a reconnect) returns the stored job and writes nothing, alone or
    inside a batch, whatever state the job reached and whatever the copy says."""
    start = await engine.last_event_ids(["q"])
    first = app.build("t", {"v": 1})
    [res] = await engine.enqueue([first])
    [again] = await engine.enqueue([first])
    assert res.created and not again.created and again.id == first.id
    await claim(engine)
    other, keyed = app.build("t", {"v": 2}), dataclasses.replace(first, dedupe_key="k")
    batch = await engine.enqueue([first, other, keyed])
    assert [(r.id, r.created, r.state) for r in batch] == [
        (first.id, False, JobState.RUNNING),
        (other.id, True, JobState.PENDING),
        (first.id, False, JobState.RUNNING),
    ]
    counts = await engine.counts("q")
    assert (counts.running, counts.pending) == (1, 1)
    assert (await engine.get_job(first.id)).dedupe_key is None  # the copy changed nothing
    events = await settled_events(engine, start, 3)
    assert [e.kind for e in events] == ["enqueued", "started", "enqueued"]


async def test_claims_highest_priority_first_then_fifo(engine: Engine, app: Conveyor) -> None:
    order = [("low1", -5), ("mid1", 0), ("high1", 10), ("mid2", 0), ("high2", 10), ("low2", -5)]
    await engine.enqueue([app.build("t", {"n": n}, priority=p) for n, p in order])
    claimed = [j.payload["n"] for j in await claim(engine, 3)]
    claimed += [j.payload["n"] for j in await claim(engine, 3)]
    assert claimed == ["high1", "high2", "mid1", "mid2", "low1", "low2"]


async def test_extreme_priorities_and_release_position_are_exact(
    engine: Engine, app: Conveyor
) -> None:
    """Priorities -100 and 100 order exactly (Redis scores reach 3.5e15 and must survive
    Lua's number formatting), and a released job goes back to the front of its own
    priority, still behind nothing of a higher one."""
    low, high = app.build("t", {}, priority=-100), app.build("t", {}, priority=100)
    zeros = [app.build("t", {}, priority=0) for _ in range(3)]
    await engine.enqueue([low, *zeros, high])
    got = await claim(engine, 2)
    assert [j.id for j in got] == [high.id, zeros[0].id]
    await finish(engine, Outcome(zeros[0].id, str(got[1].token), "release"))
    page = await engine.list_jobs("q", JobState.PENDING)
    assert [j.id for j in page.jobs] == [zeros[0].id, zeros[1].id, zeros[2].id, low.id]
    assert (await engine.get_job(zeros[0].id)).attempt == 0


async def test_claim_counts_attempt_and_sets_lease(engine: Engine, app: Conveyor) -> None:
    await engine.enqueue([app.build("t", {})])
    [job] = await claim(engine)
    assert job.state == JobState.RUNNING and job.attempt == 1 and job.token
    stored = await engine.get_job(job.id)
    assert stored.state == JobState.RUNNING and stored.attempt == 1 and stored.worker == "w1"
    assert stored.started_at is not None
    assert await claim(engine) == []  # claimed jobs are not claimed twice


async def test_delayed_job_waits_until_due(engine: Engine, app: Conveyor) -> None:
    [res] = await engine.enqueue([app.build("t", {}, delay=0.4)])
    assert res.state == JobState.SCHEDULED
    ex = await engine.exchange([], queues=("q",), limit=5, worker_id="w", lease_ms=LEASE_MS)
    assert ex.jobs == [] and ex.next_due_ms is not None and 0 < ex.next_due_ms <= 400
    job = await engine.get_job(res.id)
    assert job.scheduled_at is not None and 0.35 <= job.scheduled_at - job.created_at <= 0.45
    got: list[object] = []

    async def claimable() -> bool:
        got.extend(await claim(engine))
        return bool(got)

    await eventually(claimable, timeout=5, message="delayed job became claimable")


async def test_run_at_in_past_is_pending_and_future_is_scheduled(
    engine: Engine, app: Conveyor
) -> None:
    past = datetime.now(UTC) - timedelta(seconds=5)
    future = datetime.now(UTC) + timedelta(hours=1)
    r = await engine.enqueue([app.build("t", {}, run_at=past), app.build("t", {}, run_at=future)])
    assert [x.state for x in r] == [JobState.PENDING, JobState.SCHEDULED]
    job = await engine.get_job(r[1].id)
    assert job.scheduled_at == pytest.approx(future.timestamp(), abs=0.01)


async def test_complete_stores_result(engine: Engine, app: Conveyor) -> None:
    await engine.enqueue([app.build("t", {})])
    [job] = await claim(engine)
    lost = await finish(engine, Outcome(job.id, str(job.token), "complete", result_json='{"ok":1}'))
    assert lost == []
    done = await engine.get_job(job.id)
    assert done.state == JobState.COMPLETED and done.result == {"ok": 1}
    assert done.finished_at is not None and done.token is None
    assert (await engine.counts("q")).completed == 1


async def test_retry_schedules_after_delay_and_records_error(engine: Engine, app: Conveyor) -> None:
    await engine.enqueue([app.build("t", {})])
    [job] = await claim(engine)
    await finish(engine, Outcome(job.id, str(job.token), "retry", error_json=err(1), delay_ms=5000))
    stored = await engine.get_job(job.id)
    assert stored.state == JobState.SCHEDULED and stored.attempt == 1
    assert stored.scheduled_at is not None
    # due = the engine's now + 5 s; the engine's now is within a second of ours
    assert stored.scheduled_at - datetime.now(UTC).timestamp() == pytest.approx(5.0, abs=1.0)
    assert [(e.attempt, e.type, e.message) for e in stored.errors] == [(1, "RuntimeError", "boom")]
    assert await claim(engine) == []


async def test_retry_without_delay_is_pending_again(engine: Engine, app: Conveyor) -> None:
    await engine.enqueue([app.build("t", {})])
    [job] = await claim(engine)
    await finish(engine, Outcome(job.id, str(job.token), "retry", error_json=err(1), delay_ms=0))
    [again] = await claim(engine)
    assert again.id == job.id and again.attempt == 2 and again.token != job.token


async def test_fail_is_dead_letter_with_every_error(engine: Engine, app: Conveyor) -> None:
    await engine.enqueue([app.build("t", {})])
    [job] = await claim(engine)
    await finish(engine, Outcome(job.id, str(job.token), "retry", error_json=err(1, "a")))
    [job] = await claim(engine)
    await finish(engine, Outcome(job.id, str(job.token), "fail", error_json=err(2, "b")))
    stored = await engine.get_job(job.id)
    assert stored.state == JobState.FAILED
    assert [e.message for e in stored.errors] == ["a", "b"]
    assert (await engine.counts("q")).failed == 1


async def test_release_gives_attempt_back_and_goes_first(engine: Engine, app: Conveyor) -> None:
    await engine.enqueue([app.build("t", {"n": i}) for i in range(3)])
    first, *_ = await claim(engine, 1)
    await finish(engine, Outcome(first.id, str(first.token), "release"))
    stored = await engine.get_job(first.id)
    assert stored.state == JobState.PENDING and stored.attempt == 0
    [again] = await claim(engine, 1)
    assert again.id == first.id and again.attempt == 1


async def test_wrong_token_changes_nothing(engine: Engine, app: Conveyor) -> None:
    await engine.enqueue([app.build("t", {})])
    [job] = await claim(engine)
    lost = await finish(engine, Outcome(job.id, "not-the-token", "complete", result_json="1"))
    assert lost == [job.id]
    assert (await engine.get_job(job.id)).state == JobState.RUNNING
    assert await engine.heartbeat([(job.id, "nope")], lease_ms=LEASE_MS) == [job.id]
    assert await engine.heartbeat([(job.id, str(job.token))], lease_ms=LEASE_MS) == []


async def test_expired_lease_goes_back_to_pending_and_old_holder_is_fenced(
    engine: Engine, app: Conveyor
) -> None:
    await engine.enqueue([app.build("t", {}, max_attempts=3)])
    [job] = await claim(engine, lease_ms=50)

    async def recovered() -> bool:
        await engine.recover_expired(["q"])
        return (await engine.get_job(job.id)).state == JobState.PENDING

    await eventually(recovered, timeout=5, message="expired lease recovered")
    stored = await engine.get_job(job.id)
    assert stored.attempt == 1  # the crashed attempt counts
    [again] = await claim(engine)
    assert again.attempt == 2
    # the first holder comes back from a long pause: it is fenced off
    assert await finish(engine, Outcome(job.id, str(job.token), "complete", result_json="1")) == [
        job.id
    ]
    assert (
        await finish(engine, Outcome(again.id, str(again.token), "complete", result_json="2")) == []
    )
    assert (await engine.get_job(job.id)).result == 2


async def test_heartbeat_keeps_lease_alive(engine: Engine, app: Conveyor) -> None:
    """A job whose lease is renewed outlives a job claimed with the same lease that is not:
    the unrenewed one's recovery shows the engine's clock passed the first deadline."""
    await engine.enqueue([app.build("t", {"n": "kept"}), app.build("t", {"n": "control"})])
    kept, control = await claim(engine, 2, lease_ms=300)
    assert (kept.payload["n"], control.payload["n"]) == ("kept", "control")

    async def control_expired() -> bool:
        assert await engine.heartbeat([(kept.id, str(kept.token))], lease_ms=300) == []
        await engine.recover_expired(["q"])
        return (await engine.get_job(control.id)).state == JobState.PENDING

    await eventually(control_expired, timeout=5, message="the unrenewed lease expired")
    stored = await engine.get_job(kept.id)
    assert stored.state == JobState.RUNNING and stored.attempt == 1
    assert await engine.heartbeat([(kept.id, str(kept.token))], lease_ms=LEASE_MS) == []


async def test_crash_loop_ends_failed_with_reason(engine: Engine, app: Conveyor) -> None:
    await engine.enqueue([app.build("t", {}, max_attempts=2)])
    for attempt in (1, 2):
        [job] = await claim(engine, lease_ms=30)
        assert job.attempt == attempt

        async def expired(job_id: str = job.id) -> bool:
            await engine.recover_expired(["q"])
            return (await engine.get_job(job_id)).state != JobState.RUNNING

        await eventually(expired, timeout=5, message="lease expiry")
    stored = await engine.get_job(job.id)
    assert stored.state == JobState.FAILED
    assert stored.last_error is not None and stored.last_error.type == "LeaseExpired"
    assert "worker lost" in stored.last_error.message
    assert stored.dedupe_key is None


async def test_claim_also_recovers_expired_leases(engine: Engine, app: Conveyor) -> None:
    """Running workers recover crashed peers' jobs themselves: no extra process. The
    exchange that did it says how many it recovered (the stalled-jobs metric)."""
    await engine.enqueue([app.build("t", {})])
    [job] = await claim(engine, lease_ms=30)
    got: list[Exchange] = []

    async def reclaimed() -> bool:
        ex = await engine.exchange([], queues=("q",), limit=10, worker_id="w2", lease_ms=LEASE_MS)
        got.append(ex)
        return bool(ex.jobs)

    await eventually(reclaimed, timeout=5, message="reclaim after expiry")
    [again] = got[-1].jobs
    assert again.id == job.id and again.attempt == 2 and got[-1].recovered == 1
    assert all(ex.recovered == 0 for ex in got[:-1])


async def test_defer_gives_the_attempt_back_without_an_error(engine: Engine, app: Conveyor) -> None:
    start = await engine.last_event_ids(["q"])
    await engine.enqueue([app.build("t", {}, tenant="a")])
    [job] = await claim(engine)
    lost = await finish(
        engine, Outcome(job.id, str(job.token), "defer", delay_ms=60_000, reason="429")
    )
    assert lost == []
    stored = await engine.get_job(job.id)
    assert stored.state == JobState.SCHEDULED and stored.attempt == 0 and stored.errors == []
    assert stored.scheduled_at is not None
    assert stored.scheduled_at - datetime.now(UTC).timestamp() == pytest.approx(60, abs=2)
    assert await engine.tenant_running("q") == {}
    await engine.promote_job(job.id)
    [again] = await claim(engine)
    await finish(engine, Outcome(again.id, str(again.token), "defer", delay_ms=0, reason="x"))
    assert (await engine.get_job(job.id)).state == JobState.PENDING
    events = await settled_events(engine, start, 6)
    deferred = [e for e in events if e.kind == "deferred"]
    assert [e.data.get("reason") for e in deferred] == ["429", "x"]
    assert deferred[0].data.get("delay_ms") == 60_000


async def test_malformed_stored_job_is_reported_and_can_be_failed(
    engine: Engine, engine_url: str, app: Conveyor
) -> None:
    """A stored job that no longer decodes is a named error for readers, and a worker
    still gets it (with the reason and a lease) so it can fail it instead of looping."""
    bad, fine = app.build("t", {"n": "bad"}), app.build("t", {"n": "fine"})
    await engine.enqueue([bad, fine])
    await corrupt_payload(engine, engine_url, bad.id)
    with pytest.raises(MalformedJob, match=bad.id):
        await engine.get_job(bad.id)
    jobs = {j.id: j for j in await claim(engine)}
    assert set(jobs) == {bad.id, fine.id}
    claimed = jobs[bad.id]
    assert claimed.decode_error and claimed.token and claimed.attempt == 1
    assert not jobs[fine.id].decode_error  # one bad row spoils nothing else
    assert await finish(engine, Outcome(bad.id, str(claimed.token), "fail", error_json=None)) == []
    counts = await engine.counts("q")
    assert (counts.failed, counts.running) == (1, 1)


async def test_concurrent_claimers_never_claim_the_same_job(
    engine: Engine, peer: Engine, app: Conveyor
) -> None:
    """Two connections to one storage (two processes, as far as it can tell) claiming at
    once share the jobs: each is claimed exactly once."""
    await engine.enqueue([app.build("t", {"i": i}) for i in range(200)])
    seen: list[str] = []

    async def drain(eng: Engine, worker_id: str) -> None:
        while got := await claim(eng, 3, worker_id=worker_id):
            seen.extend(j.id for j in got)

    await asyncio.gather(drain(engine, "a"), drain(peer, "b"), drain(engine, "c"), drain(peer, "d"))
    assert len(seen) == len(set(seen)) == 200
    assert (await engine.counts("q")).running == 200


async def test_progress_needs_the_current_lease(engine: Engine, app: Conveyor) -> None:
    await engine.enqueue([app.build("t", {})])
    [job] = await claim(engine)
    assert await engine.set_progress(job.id, str(job.token), "10")
    assert not await engine.set_progress(job.id, "not-the-token", "99")
    assert (await engine.get_job(job.id)).progress_value == 10
    await finish(engine, Outcome(job.id, str(job.token), "complete", result_json="1"))
    assert not await engine.set_progress(job.id, str(job.token), "99")  # finished: lease gone
    assert await engine.heartbeat([(job.id, str(job.token))], lease_ms=LEASE_MS) == [job.id]


@pytest.mark.parametrize("kind", ["retry", "defer"])
async def test_retried_and_deferred_jobs_go_to_the_back_of_their_priority(
    engine: Engine, app: Conveyor, kind: str
) -> None:
    """`Place.BACK`: a job sent back to pending without a delay queues behind the jobs of
    its priority that were waiting, and still ahead of lower priorities."""
    first, second, third = (app.build("t", {"n": n}) for n in range(3))
    low = app.build("t", {"n": "low"}, priority=-1)
    await engine.enqueue([first, second, third, low])
    [job] = await claim(engine, 1)
    assert job.id == first.id
    outcome = (
        Outcome(job.id, str(job.token), "retry", error_json=err(1), delay_ms=0)
        if kind == "retry"
        else Outcome(job.id, str(job.token), "defer", delay_ms=0, reason="busy")
    )
    assert await finish(engine, outcome) == []
    page = await engine.list_jobs("q", JobState.PENDING)
    assert [j.id for j in page.jobs] == [second.id, third.id, first.id, low.id]
    assert [j.id for j in await claim(engine, 4)] == [second.id, third.id, first.id, low.id]


async def test_a_promoted_job_goes_to_the_back_of_its_priority(
    engine: Engine, app: Conveyor
) -> None:
    later, waiting = app.build("t", {}, delay=3600), app.build("t", {})
    await engine.enqueue([later, waiting])
    await engine.promote_job(later.id)
    assert [j.id for j in await claim(engine, 2)] == [waiting.id, later.id]


async def test_fail_without_an_error_records_none(engine: Engine, app: Conveyor) -> None:
    """A worker fails a job it cannot describe (a malformed payload) with no error JSON:
    the job is failed, records no error, and reads back."""
    await engine.enqueue([app.build("t", {})])
    [job] = await claim(engine)
    assert await finish(engine, Outcome(job.id, str(job.token), "fail", error_json=None)) == []
    stored = await engine.get_job(job.id)
    assert stored.state == JobState.FAILED and stored.errors == []


async def test_jobs_due_at_the_same_moment_become_pending_in_enqueue_order(
    clocked: Engine, clock: FakeClock, app: Conveyor
) -> None:
    """Not in id or row order: ids are random, and SQLite once broke such ties by rowid,
    which put the jobs with a dedupe key first within a batch (found by the differential
    test)."""
    batch = [
        app.build("t", {"n": i}, delay=5, dedupe_key=f"k{i}" if i % 2 else None) for i in range(6)
    ]
    await clocked.enqueue(batch)
    clock.advance(5)
    assert [j.id for j in await claim(clocked, 6)] == [j.id for j in batch]


async def test_mixed_priorities_keep_one_order_through_pages_cancels_and_releases(
    engine: Engine, app: Conveyor
) -> None:
    """Jobs at priority 0 queued at the back and the others (other priorities, released
    to the front) share one claim order, whatever each engine keeps them in (Redis: a
    list for the first kind, a sorted set for the rest): listed in pages, cancelled from
    the middle, released, and claimed in batches."""
    names = ["a0", "b5", "c0", "d-1", "e0", "f5", "g0", "h-1", "i0"]
    jobs = {}
    for n in names:  # one call each, so each takes its own place in line
        jobs[n] = app.build("t", {"n": n}, priority=int(n[1:]))
        await engine.enqueue([jobs[n]])

    async def listed(size: int) -> list[str]:
        out: list[str] = []
        cursor = None
        while True:
            page = await engine.list_jobs("q", JobState.PENDING, limit=size, cursor=cursor)
            out += [j.payload["n"] for j in page.jobs]
            cursor = page.cursor
            if cursor is None:
                return out

    order = ["b5", "f5", "a0", "c0", "e0", "g0", "i0", "d-1", "h-1"]
    assert await listed(2) == order and await listed(100) == order
    await engine.cancel_job(jobs["e0"].id)  # from the middle of the priority-0 line
    got = await claim(engine, 3)
    assert [j.payload["n"] for j in got] == ["b5", "f5", "a0"]
    await finish(engine, Outcome(jobs["a0"].id, str(got[2].token), "release"))
    assert (await engine.counts("q")).pending == 6
    assert await listed(4) == ["a0", "c0", "g0", "i0", "d-1", "h-1"]
    # A tenant job at priority 0 lists in the order it was queued among the others.
    tenant_job = app.build("t", {"n": "t0"}, tenant="acme")
    await engine.enqueue([tenant_job])
    last = app.build("t", {"n": "j0"})
    await engine.enqueue([last])
    assert await listed(3) == ["a0", "c0", "g0", "i0", "t0", "j0", "d-1", "h-1"]
    await engine.cancel_job(tenant_job.id)
    got = await claim(engine, 3)
    got += await claim(engine, 10)
    assert [j.payload["n"] for j in got] == ["a0", "c0", "g0", "i0", "j0", "d-1", "h-1"]
    assert (await engine.counts("q")).pending == 0
