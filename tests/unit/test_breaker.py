"""Circuit breakers with a fake clock, alone and inside a worker (memory engine)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from conveyor import BreakerOpen, ConfigError, Conveyor, Job, JobState, RateLimited, Worker
from conveyor.breaker import CircuitBreaker
from conveyor.clock import FakeClock
from conveyor.health import detailed_document
from conveyor.metrics import Metrics


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def fail(breaker: CircuitBreaker, times: int) -> None:
    for _ in range(times):
        with pytest.raises(OSError, match="smtp down"), breaker:
            raise OSError("smtp down")


def test_opens_after_threshold_then_half_opens_and_closes(clock: FakeClock) -> None:
    b = CircuitBreaker("smtp", failure_threshold=3, reset_timeout=10, clock=clock)
    fail(b, 2)
    assert b.state == "closed"
    with b:  # a success resets the count of consecutive failures
        pass
    fail(b, 3)
    assert b.state == "open" and b.info()["failures"] == 3
    assert b.info()["opened_at"] == clock.now()
    with pytest.raises(BreakerOpen) as caught, b:
        raise AssertionError("never called while open")
    assert caught.value.retry_after == pytest.approx(10) and caught.value.name == "smtp"
    clock.advance(10)
    assert b.state == "half-open"
    b.before()  # the one trial call goes through ...
    with pytest.raises(BreakerOpen), b:  # ... the others still wait for it
        pass
    b.success()
    assert b.state == "closed" and b.info()["failures"] == 0


def test_failed_trial_opens_again_for_a_full_timeout(clock: FakeClock) -> None:
    b = CircuitBreaker("api", failure_threshold=1, reset_timeout=5, clock=clock)
    fail(b, 1)
    clock.advance(5)
    fail(b, 1)  # the trial
    assert b.state == "open" and b.retry_after() == pytest.approx(5)


def test_what_does_not_count_as_a_failure(clock: FakeClock) -> None:
    b = CircuitBreaker(
        "api", failure_threshold=1, reset_timeout=5, exclude=(KeyError,), clock=clock
    )
    with pytest.raises(KeyError), b:
        raise KeyError("no such record")  # excluded: the dependency answered
    with pytest.raises(RateLimited), b:
        raise RateLimited(1.0)  # "not now" is an answer too
    assert b.state == "closed"
    fail(b, 1)
    clock.advance(5)
    with pytest.raises(asyncio.CancelledError), b:  # a cancelled trial gives its slot back
        raise asyncio.CancelledError
    assert b.state == "half-open"
    with b:
        pass
    assert b.state == "closed"


async def test_decorator_for_sync_and_async_functions(clock: FakeClock) -> None:
    b = CircuitBreaker("x", failure_threshold=2, reset_timeout=1, clock=clock)

    @b
    async def call_async(ok: bool) -> str:
        if not ok:
            raise OSError("down")
        return "a"

    @b
    def call_sync(ok: bool) -> str:
        if not ok:
            raise OSError("down")
        return "s"

    assert await call_async(True) == "a" and call_sync(True) == "s"
    with pytest.raises(OSError, match="down"):
        await call_async(False)
    with pytest.raises(OSError, match="down"):
        call_sync(False)
    with pytest.raises(BreakerOpen):
        call_sync(True)


def test_invalid_options_and_one_definition_per_name(clock: FakeClock) -> None:
    app = Conveyor("memory://", clock=clock)
    with pytest.raises(ConfigError, match="failure_threshold"):
        app.breaker("a", failure_threshold=0)
    with pytest.raises(ConfigError, match="reset_timeout"):
        app.breaker("a", reset_timeout=-1)
    first = app.breaker("smtp", failure_threshold=5, reset_timeout=60)
    assert app.breaker("smtp", failure_threshold=5, reset_timeout=60) is first
    with pytest.raises(ConfigError, match="other options"):
        app.breaker("smtp", failure_threshold=3)


async def test_worker_defers_jobs_while_the_breaker_is_open(clock: FakeClock) -> None:
    """Five failures open the breaker; the following jobs are deferred until it
    half-opens (no attempt spent, nothing dead-lettered); then they succeed."""
    app = Conveyor("memory://", clock=clock)
    smtp = app.breaker("smtp", failure_threshold=5, reset_timeout=30)
    down = True
    calls: list[str] = []

    @app.task("send", max_attempts=1)
    async def send(job: Job) -> str:
        async with smtp:
            calls.append(job.id)
            if down:
                raise OSError("connection refused")
        return "sent"

    failing = [await app.enqueue("send", {"n": i}) for i in range(5)]
    worker = Worker(app, queues=("default",), burst=True, concurrency=1)
    await asyncio.wait_for(worker.run(), 10)
    assert smtp.state == "open" and len(calls) == 5
    assert {(await app.get_job(j.id)).state for j in failing} == {JobState.FAILED}

    later = [await app.enqueue("send", {"n": i}) for i in range(3)]
    worker = Worker(app, queues=("default",), burst=True)
    await asyncio.wait_for(worker.run(), 10)
    assert len(calls) == 5, "no call reached the dependency while open"
    assert worker.stats.deferred == 3
    for job in later:
        stored = await app.get_job(job.id)
        assert stored.state == JobState.SCHEDULED and stored.attempt == 0 and stored.errors == []
        assert stored.scheduled_at == pytest.approx(clock.now() + 30)
    doc: dict[str, Any] = detailed_document(worker, True, "ok")
    assert doc["dependencies"]["smtp"]["state"] == "open"
    metrics = Metrics()
    metrics.record_breakers(app.breakers.values())
    assert b'conveyor_circuit_state{name="smtp"} 1.0' in metrics.exposition()

    down = False
    clock.advance(30)
    worker = Worker(app, queues=("default",), burst=True)
    await asyncio.wait_for(worker.run(), 10)
    assert smtp.state == "closed"
    assert {(await app.get_job(j.id)).state for j in later} == {JobState.COMPLETED}
