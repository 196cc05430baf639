"""The job log: one line per outcome at the right level, with the job's facts (issue 14.5)."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import orjson
import pytest

from conveyor import Conveyor, Job, Unrecoverable, Worker
from conveyor.cli.common import JsonFormatter
from conveyor.clock import FakeClock


@pytest.fixture
def app() -> Conveyor:
    return Conveyor("memory://", clock=FakeClock())


async def burst(app: Conveyor) -> None:
    await asyncio.wait_for(Worker(app, burst=True).run(), 10)


def job_lines(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "conveyor.jobs"]


async def test_each_outcome_is_one_line_at_its_level_with_the_job_facts(
    app: Conveyor, caplog: pytest.LogCaptureFixture
) -> None:
    @app.task("ok")
    async def ok(job: Job) -> int:
        return 1

    @app.task("flaky", max_attempts=2, backoff=0)
    async def flaky(job: Job) -> None:
        raise RuntimeError(f"boom {job.attempt}")

    @app.task("bad", max_attempts=5)
    async def bad(job: Job) -> None:
        raise Unrecoverable("account closed")

    @app.task("slow", max_attempts=1, timeout=0.01)
    async def slow(job: Job) -> None:
        await asyncio.sleep(10)

    caplog.set_level(logging.DEBUG, logger="conveyor")
    done = await app.enqueue("ok", {}, tenant="acme corp")
    retried = await app.enqueue("flaky", {})
    unrecoverable = await app.enqueue("bad", {})
    timed_out = await app.enqueue("slow", {})
    await burst(app)

    events = [(r.event, r.job_id, r.levelno, r.attempt) for r in job_lines(caplog)]  # type: ignore[attr-defined]
    finished = [e for e in events if e[0] != "started"]
    assert sorted(finished) == sorted(
        [
            ("completed", done.id, logging.INFO, 1),
            ("retried", retried.id, logging.WARNING, 1),
            ("dead_lettered", retried.id, logging.ERROR, 2),
            ("failed", unrecoverable.id, logging.ERROR, 1),
            ("timed_out", timed_out.id, logging.ERROR, 1),
        ]
    )
    started = [e for e in events if e[0] == "started"]
    assert len(started) == 5 and {e[2] for e in started} == {logging.DEBUG}

    for record in job_lines(caplog):
        text = record.getMessage()
        for key in ("job_id=", "task=", "queue=", "tenant=", "attempt="):
            assert key in text, (key, text)
        if record.event != "started":  # type: ignore[attr-defined]
            assert "duration=" in text and record.duration_s >= 0  # type: ignore[attr-defined]
    by_event = {r.event: r for r in job_lines(caplog)}  # type: ignore[attr-defined]
    assert 'tenant="acme corp"' in by_event["completed"].getMessage()
    assert by_event["completed"].queue == "default"  # type: ignore[attr-defined]
    # ERROR lines carry the handler's exception and traceback; the WARNING names the error.
    assert "RuntimeError: boom 2" in logging.Formatter().format(by_event["dead_lettered"])
    assert "Traceback" in logging.Formatter().format(by_event["dead_lettered"])
    assert "Unrecoverable: account closed" in logging.Formatter().format(by_event["failed"])
    assert "JobTimeout" in by_event["timed_out"].getMessage()
    assert "RuntimeError: boom 1" in by_event["retried"].getMessage()


async def test_json_lines_carry_each_fact_as_a_field(
    app: Conveyor, caplog: pytest.LogCaptureFixture
) -> None:
    @app.task("flaky", max_attempts=1)
    async def flaky(job: Job) -> None:
        raise RuntimeError("line one\nline two")

    caplog.set_level(logging.INFO, logger="conveyor")
    job = await app.enqueue("flaky", {}, tenant="t1")
    await burst(app)
    (record,) = job_lines(caplog)
    line = JsonFormatter().format(record)
    assert "\n" not in line
    doc: dict[str, Any] = orjson.loads(line)
    assert doc["level"] == "ERROR" and doc["event"] == "dead_lettered"
    assert (doc["job_id"], doc["task"], doc["queue"], doc["tenant"]) == (
        job.id,
        "flaky",
        "default",
        "t1",
    )
    assert doc["attempt"] == 1 and doc["max_attempts"] == 1 and doc["duration_s"] >= 0
    assert doc["error_type"] == "RuntimeError" and "Traceback" in doc["exc"]


async def test_nothing_is_formatted_when_the_level_is_off(
    app: Conveyor, caplog: pytest.LogCaptureFixture
) -> None:
    @app.task("ok")
    async def ok(job: Job) -> None:
        return None

    caplog.set_level(logging.WARNING, logger="conveyor")
    await app.enqueue("ok", {})
    await burst(app)
    assert job_lines(caplog) == []
