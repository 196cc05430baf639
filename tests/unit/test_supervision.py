"""No background loop dies silently (issue 13, item 1): the supervisors' backoff and
readiness, and the scheduler's loop going on after an error nobody planned for."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest

from conveyor import Conveyor, EngineUnavailable
from conveyor.scheduler import Scheduler
from conveyor.testing import eventually
from conveyor.worker.supervision import BACKOFF_CAP_S, BACKOFF_START_S, Supervisors


def test_failures_back_off_and_one_success_clears_them(caplog: pytest.LogCaptureFixture) -> None:
    loops = Supervisors()
    beat = loops.add("heartbeat")
    with caplog.at_level(logging.WARNING, "conveyor.worker"):
        waits = [beat.failed(RuntimeError("boom")) for _ in range(8)]
    assert waits[:3] == [BACKOFF_START_S, 2 * BACKOFF_START_S, 4 * BACKOFF_START_S]
    assert max(waits) == BACKOFF_CAP_S
    assert loops.failing() == {"heartbeat": "RuntimeError: boom"}
    assert all(r.exc_info for r in caplog.records), "unexpected errors keep their traceback"
    beat.ok()
    assert loops.failing() == {} and beat.delay == BACKOFF_START_S


def test_an_outage_is_logged_once_without_a_traceback(caplog: pytest.LogCaptureFixture) -> None:
    claim = Supervisors().add("claim")
    with caplog.at_level(logging.WARNING, "conveyor.worker"):
        for _ in range(5):
            claim.failed(EngineUnavailable("Redis at redis://x cannot serve now (LOADING)"))
    [record] = caplog.records
    assert record.exc_info is None and "LOADING" in record.getMessage()


async def test_the_scheduler_loop_goes_on_after_an_unexpected_error() -> None:
    app = Conveyor("memory://")
    scheduler = Scheduler(app, lease_timeout=0.3)
    real_tick = scheduler.tick
    calls = {"n": 0}

    async def tick(now: float | None = None) -> Any:
        calls["n"] += 1
        if calls["n"] <= 2:
            raise RuntimeError("a bug in a tick")
        return await real_tick(now)

    scheduler.tick = tick  # type: ignore[method-assign]
    running = asyncio.create_task(scheduler.run())

    async def led() -> bool:
        return calls["n"] > 2 and scheduler.is_leader

    await eventually(led, message="the scheduler went on and took the lead")
    assert not running.done()
    scheduler.stop()
    await asyncio.wait_for(running, 10)


async def test_the_api_live_reader_goes_on_and_readiness_names_it() -> None:
    """The API's engine reader (conveyor.live) retries after any error, and the API's
    readiness is 503 naming it meanwhile."""
    from conveyor.live import EventHub

    app = Conveyor("memory://")
    real_read = app.read_events
    failures = {"n": 3}

    async def read_events(*args: Any, **kwargs: Any) -> Any:
        if failures["n"]:
            failures["n"] -= 1
            raise RuntimeError("a bug in a read")
        return await real_read(*args, **kwargs)

    app.read_events = read_events  # type: ignore[method-assign]
    hub = EventHub(app)
    sub = await hub.subscribe(["default"])
    seen: list[str] = []

    async def failing_seen() -> bool:
        if hub.failing():
            seen.append((await app.readiness(failing=hub.failing()))[1])
        return bool(seen)

    await eventually(failing_seen, interval=0.005, message="readiness names the reader")
    assert "live events loop failing" in seen[0] and "RuntimeError" in seen[0]

    async def recovered() -> bool:
        return not failures["n"] and not hub.failing()

    await eventually(recovered, message="the reader went on after the errors")
    hub.unsubscribe(sub)
    await hub.close()
    await app.close()
