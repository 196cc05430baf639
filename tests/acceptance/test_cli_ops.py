"""Every runbook procedure, run as an operator runs it: `conveyor ...` in a subprocess.

Each test is parametrised over both durable engines (`durable_url`: a SQLite file and a
private redis-server with a per-test prefix). Jobs are set up in-process through the
app (fast); every operation under test goes through the CLI. docs/runbook.md maps each
runbook step to the test here that covers it.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
import traceback
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import orjson
import pytest

from conveyor import AttemptError, Conveyor, JobState
from conveyor.engines import Outcome
from conveyor.engines.base import OutcomeKind
from conveyor.testing import eventually
from tests.apps.probe import PROBE_QUEUE
from tests.conftest import ROOT

Q = PROBE_QUEUE


@dataclass
class Result:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        return orjson.loads(self.out)


async def conveyor(url: str, *args: str, timeout: float = 60) -> Result:
    """Run `python -m conveyor ARGS --url URL` without blocking the event loop (so an
    in-process worker keeps heartbeating while the CLI runs)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "conveyor",
        *args,
        "--url",
        url,
        cwd=ROOT,  # so `tests.apps.probe:app` imports
        stdin=asyncio.subprocess.DEVNULL,  # not a terminal: confirmations must be explicit
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "COLUMNS": "200"},  # wide tables: no ellipsis in what we assert
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout)
    assert proc.returncode is not None
    return Result(proc.returncode, out.decode(), err.decode())


def assert_one_line_error(result: Result, kind: str) -> None:
    """User mistakes: exit 2, one `error: Kind: ...` line, never a traceback."""
    assert result.code == 2, result
    assert result.err.startswith(f"error: {kind}"), result.err
    assert "Traceback" not in result.err + result.out


async def enqueue(app: Conveyor, n: int = 1, **payload: Any) -> list[str]:
    items = [{"task": "probe", "payload": {"action": "ok", **payload}} for _ in range(n)]
    return [job.id for job in await app.enqueue_many(items)]


async def finish(app: Conveyor, n: int, kind: OutcomeKind, message: str = "smtp down") -> list[str]:
    """Enqueue `n` jobs, claim them and finish them as a worker does (`fail`: straight to
    the dead-letter state with a real traceback; `complete`).

    Setup talks to the engine directly: it is deterministic and fast, and keeps these
    tests about the CLI rather than about worker start-up and shutdown.
    """
    ids = [
        job.id
        for job in await app.enqueue_many(
            [{"task": "probe", "payload": {"action": kind}, "max_attempts": 1}] * n
        )
    ]
    engine = app.engine
    claimed = await engine.exchange([], queues=[Q], limit=n, worker_id="t", lease_ms=60_000)
    assert sorted(j.id for j in claimed.jobs) == sorted(ids)
    try:
        raise RuntimeError(message)
    except RuntimeError as exc:
        error = AttemptError(1, type(exc).__name__, str(exc), traceback.format_exc(), time.time())
    outcomes = [
        Outcome(
            j.id,
            str(j.token),
            kind,
            result_json="{}" if kind == "complete" else None,
            error_json=error.to_json() if kind == "fail" else None,
        )
        for j in claimed.jobs
    ]
    await engine.exchange(outcomes, queues=[Q], limit=0, worker_id="t", lease_ms=60_000)
    return ids


@asynccontextmanager
async def worker_process(url: str, *args: str) -> AsyncIterator[asyncio.subprocess.Process]:
    """`conveyor worker tests.apps.probe:app` on the probe queue, killed afterwards (the
    tests using it are about what operators see while it runs, not about its shutdown)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "conveyor",
        "worker",
        "tests.apps.probe:app",
        "--url",
        url,
        "--queues",
        Q,
        "--health-port",
        "0",
        *args,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
        cwd=ROOT,
    )
    try:
        yield proc
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()


async def state_of(app: Conveyor, job_id: str) -> JobState:
    return (await app.get_job(job_id)).state


# --- read model ------------------------------------------------------------------------------
async def test_queues_shows_depth_per_state(app: Conveyor, durable_url: str) -> None:
    await finish(app, 1, "fail")
    await enqueue(app, 2)
    await app.enqueue("probe", {"action": "ok"}, delay=3600)

    listed = await conveyor(durable_url, "queues", "--json")
    assert listed.code == 0, listed
    (row,) = listed.json()
    assert (row["queue"], row["scheduled"], row["pending"], row["running"], row["failed"]) == (
        Q,
        1,
        2,
        0,
        1,
    )
    assert row["paused"] is False and row["oldest_pending_age_seconds"] >= 0

    table = await conveyor(durable_url, "queues")
    assert table.code == 0
    assert "oldest pending" in table.out and Q in table.out


async def test_jobs_listing_filters_and_pages(app: Conveyor, durable_url: str) -> None:
    (failed,) = await finish(app, 1, "fail", "probe failure")
    acme = await app.enqueue("probe", {"action": "ok"}, tenant="acme")
    await enqueue(app, 2)

    dead = (await conveyor(durable_url, "jobs", Q, "--state", "failed", "--json")).json()
    assert [j["id"] for j in dead["jobs"]] == [failed] and dead["cursor"] is None

    tenant = await conveyor(durable_url, "jobs", Q, "--tenant", "acme", "--json")
    assert [j["id"] for j in tenant.json()["jobs"]] == [acme.id]

    first = (await conveyor(durable_url, "jobs", Q, "--limit", "2", "--json")).json()
    assert len(first["jobs"]) == 2 and first["cursor"]
    rest = await conveyor(durable_url, "jobs", Q, "--limit", "2", "--cursor", first["cursor"])
    assert rest.code == 0 and "probe" in rest.out
    seen = {j["id"] for j in first["jobs"]}
    assert not any(job_id in rest.out for job_id in seen), "the next page repeats jobs"

    table = await conveyor(durable_url, "jobs", Q, "--state", "failed")
    assert failed in table.out and "RuntimeError: probe failure" in table.out

    typo = await conveyor(durable_url, "jobs", "prob")
    assert typo.code == 0 and "no pending jobs in queue prob" in typo.out
    assert "queue 'prob' has never held a job (did you mean 'probe'?)" in typo.err

    bad_state = await conveyor(durable_url, "jobs", Q, "--state", "waiting")
    assert bad_state.code == 2 and "Traceback" not in bad_state.err


async def test_job_inspect_shows_every_attempt(app: Conveyor, durable_url: str) -> None:
    (job_id,) = await finish(app, 1, "fail", "smtp down")

    doc = (await conveyor(durable_url, "job", job_id, "--json")).json()
    assert (doc["state"], doc["payload"], doc["attempt"]) == ("failed", {"action": "fail"}, 1)
    (error,) = doc["errors"]
    assert error["message"] == "smtp down" and "Traceback" in error["traceback"]
    assert doc["created_at"] and doc["started_at"] and doc["finished_at"]

    shown = await conveyor(durable_url, "job", job_id)
    assert shown.code == 0
    for text in (
        "payload",
        "timeline",
        "started",
        "attempt 1 failed",
        "RuntimeError: smtp down",
        "Traceback (most recent call last)",
    ):
        assert text in shown.out, text

    assert_one_line_error(await conveyor(durable_url, "job", f"{Q}:nope"), "JobNotFound")


async def test_job_shows_its_flow_parent_and_children(app: Conveyor, durable_url: str) -> None:
    parent = await app.flow(
        {"task": "probe"},
        [{"task": "probe", "payload": {"action": "ok"}},
         {"task": "probe", "on_failure": "ignore", "children": [{"task": "probe"}]}],
    )  # fmt: skip
    kids = (await app.flow_links(parent.id)).children
    doc = (await conveyor(durable_url, "job", parent.id, "--json")).json()
    assert doc["state"] == "waiting-children" and doc["flow"]["parent"] is None
    assert [k["id"] for k in doc["flow"]["children"]] == list(kids)
    assert [k["state"] for k in doc["flow"]["children"]] == ["pending", "waiting-children"]
    shown = await conveyor(durable_url, "job", kids[1])
    assert shown.code == 0
    for text in ("flow", "parent", parent.id, "waiting-children", "on failure", "ignore",
                 "children"):  # fmt: skip
        assert text in shown.out, text
    plain = (await conveyor(durable_url, "job", (await enqueue(app))[0], "--json")).json()
    assert plain["flow"] is None


# --- job operations ----------------------------------------------------------------------------
async def test_retry_one_then_retry_all(app: Conveyor, durable_url: str) -> None:
    one, *others = await finish(app, 3, "fail")

    retried = await conveyor(durable_url, "retry", one)
    assert retried.code == 0 and f"retried {one}: now pending" in retried.out
    assert await state_of(app, one) == JobState.PENDING
    assert_one_line_error(await conveyor(durable_url, "retry", one), "InvalidState")

    everything = await conveyor(durable_url, "retry-all", Q, "--json")
    assert everything.json() == {"queue": Q, "state": "failed", "retried": 2}
    assert {await state_of(app, job_id) for job_id in others} == {JobState.PENDING}

    await app.cancel_job(one)
    cancelled = await conveyor(durable_url, "retry-all", Q, "--state", "cancelled")
    assert "retried 1 cancelled job(s)" in cancelled.out
    assert_one_line_error(
        await conveyor(durable_url, "retry-all", Q, "--state", "pending"), "InvalidState"
    )


async def test_promote_and_cancel(app: Conveyor, durable_url: str) -> None:
    delayed = await app.enqueue("probe", {"action": "ok"}, delay=3600)
    promoted = await conveyor(durable_url, "promote", delayed.id, "--json")
    assert promoted.json()["state"] == "pending"
    assert await state_of(app, delayed.id) == JobState.PENDING
    assert_one_line_error(await conveyor(durable_url, "promote", delayed.id), "InvalidState")

    cancelled = await conveyor(durable_url, "cancel", delayed.id)
    assert cancelled.code == 0 and "now cancelled" in cancelled.out
    assert await state_of(app, delayed.id) == JobState.CANCELLED


async def test_enqueue_from_the_command_line(app: Conveyor, durable_url: str) -> None:
    made = await conveyor(
        durable_url,
        "enqueue",
        "probe",
        "--queue",
        Q,
        "--payload",
        '{"action": "ok", "to": "a@example.com"}',
        "--priority",
        "5",
        "--tenant",
        "acme",
        "--dedupe-key",
        "welcome-a",
    )
    assert made.code == 0, made
    job = await app.get_job(made.out.strip())
    assert (job.payload["to"], job.priority, job.tenant, job.state) == (
        "a@example.com",
        5,
        "acme",
        JobState.PENDING,
    )
    again = await conveyor(
        durable_url, "enqueue", "probe", "--queue", Q, "--dedupe-key", "welcome-a", "--json"
    )
    assert again.json()["id"] == job.id, "a live dedupe key returns the existing job"

    delayed = await conveyor(durable_url, "enqueue", "probe", "--queue", Q, "--delay", "1h")
    assert await state_of(app, delayed.out.strip()) == JobState.SCHEDULED

    before = (await app.counts(Q)).pending + (await app.counts(Q)).scheduled
    bad = await conveyor(durable_url, "enqueue", "probe", "--queue", Q, "--payload", "{oops")
    assert_one_line_error(bad, "InvalidPayload")
    assert len(bad.err.strip().splitlines()) == 1
    not_object = await conveyor(durable_url, "enqueue", "probe", "--queue", Q, "--payload", "[1]")
    assert_one_line_error(not_object, "InvalidPayload")
    assert (await app.counts(Q)).pending + (await app.counts(Q)).scheduled == before


# --- queue operations ----------------------------------------------------------------------------
async def test_clean_by_state_and_age(app: Conveyor, durable_url: str) -> None:
    await finish(app, 3, "complete")

    young = await conveyor(durable_url, "clean", Q, "--state", "completed", "--older-than", "7d")
    assert young.code == 0 and "removed 0 completed job(s) older than 7d" in young.out
    old = await conveyor(
        durable_url, "clean", Q, "--state", "completed", "--older-than", "0", "--json"
    )
    assert old.json()["removed"] == 3
    assert (await app.counts(Q)).completed == 0

    assert_one_line_error(
        await conveyor(durable_url, "clean", Q, "--state", "completed", "--older-than", "7x"),
        "ConfigError",
    )
    assert_one_line_error(
        await conveyor(durable_url, "clean", Q, "--state", "pending", "--older-than", "1d"),
        "InvalidState",
    )


async def test_purge_needs_confirmation(app: Conveyor, durable_url: str) -> None:
    await finish(app, 1, "fail")
    await enqueue(app, 3)

    refused = await conveyor(durable_url, "purge", Q)
    assert refused.code == 2 and "pass --yes" in refused.err and "Traceback" not in refused.err
    assert (await app.counts(Q)).pending == 3, "a refused purge deleted jobs"

    purged = await conveyor(durable_url, "purge", Q, "--yes")
    assert purged.code == 0 and "4 job(s) deleted" in purged.out
    counts = await app.counts(Q)
    assert counts.pending == counts.failed == 0


async def test_pause_keeps_jobs_pending_until_resume(app: Conveyor, durable_url: str) -> None:
    ids = await enqueue(app, 3)
    paused = await conveyor(durable_url, "pause", Q)
    assert paused.code == 0 and "paused queue probe" in paused.out

    # A real worker process: it must exit in burst mode without claiming anything.
    worker = ("worker", "tests.apps.probe:app", "--queues", Q, "--burst", "--health-port", "0")
    ran = await conveyor(durable_url, *worker, timeout=30)
    assert ran.code == 0, ran
    row = (await conveyor(durable_url, "queues", "--json")).json()[0]
    assert (row["paused"], row["pending"], row["completed"]) == (True, 3, 0)

    resumed = await conveyor(durable_url, "resume", Q, "--json")
    assert resumed.json()["paused"] is False
    assert (await conveyor(durable_url, *worker, timeout=30)).code == 0
    assert {await state_of(app, job_id) for job_id in ids} == {JobState.COMPLETED}


async def test_status_document_for_incident_polling(app: Conveyor, durable_url: str) -> None:
    await enqueue(app, 2, action="sleep", seconds=60)
    async with worker_process(durable_url, "--concurrency", "4"):

        async def registered() -> bool:
            live = await app.workers()
            return bool(live) and live[0].get("in_flight") == 2

        await eventually(registered, timeout=20, message="worker registered with 2 in flight")
        status = await conveyor(durable_url, "status", "--json")
    assert status.code == 0, status
    doc = status.json()
    assert doc["engine"]["status"] == "ok"
    # The shared test Redis runs with AOF off: not durable, and the status says why.
    redis = durable_url.startswith("redis")
    assert doc["engine"]["durable"] is not redis
    if redis:
        assert doc["engine"]["server"]["appendonly"] == "no"
        assert "appendonly yes" in doc["engine"]["server"]["problems"][0]
    assert isinstance(doc["engine"]["latency_ms"], float)
    assert [(q["queue"], q["running"]) for q in doc["queues"]] == [(Q, 2)]
    (w,) = doc["workers"]
    assert (w["in_flight"], w["concurrency"], w["queues"]) == (2, 4, [Q])
    assert 0 <= w["last_heartbeat_age_seconds"] < 30
    assert doc["totals"]["running"] == 2 and doc["totals"]["workers"] == 1
    assert doc["generated_at"]


async def test_status_when_the_engine_is_down() -> None:
    down = await conveyor("redis://127.0.0.1:1/0", "status", "--json")
    assert down.code == 1, "status must exit non-zero while the engine is unavailable"
    doc = down.json()
    assert doc["engine"]["status"] == "unavailable" and "127.0.0.1:1" in doc["engine"]["error"]
    assert_one_line_error(await conveyor("redis://127.0.0.1:1/0", "queues"), "EngineUnavailable")


# --- drain ---------------------------------------------------------------------------------------
@pytest.mark.slow
async def test_drain_waits_until_workers_empty_the_queue(app: Conveyor, durable_url: str) -> None:
    await enqueue(app, 2000)
    async with worker_process(durable_url, "--concurrency", "50"):
        drained = await conveyor(
            durable_url, "drain", Q, "--timeout", "120", "--interval", "0.2", timeout=150
        )
    assert drained.code == 0, drained
    assert f"drained {Q}" in drained.out
    counts = await app.counts(Q)
    assert (counts.pending, counts.running, counts.completed) == (0, 0, 2000)


async def test_drain_times_out_naming_what_is_left(app: Conveyor, durable_url: str) -> None:
    await enqueue(app, 20)
    await app.enqueue("probe", {"action": "ok"}, delay=3600)
    left = await conveyor(durable_url, "drain", Q, "--timeout", "2", "--interval", "0.5")
    assert left.code == 1
    assert f"drain timed out after 2s: {Q}: 20 pending, 0 running (1 scheduled)" in left.err
    assert "no live worker consumes probe" in left.err, "the likely cause is named"

    as_json = await conveyor(durable_url, "drain", Q, "--timeout", "0", "--json")
    assert as_json.code == 1 and as_json.json()["drained"] is False
