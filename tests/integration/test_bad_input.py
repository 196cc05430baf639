"""Guarantee 5: bad input gets a named error, a readable message, and changes nothing."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as redis_asyncio

from conveyor import (
    Conveyor,
    EngineUnavailable,
    InvalidArgument,
    InvalidJob,
    InvalidPayload,
    JobState,
    MalformedJob,
    Worker,
)
from conveyor.engines.postgres import PostgresEngine
from conveyor.engines.redis import RedisEngine
from tests.apps.probe import probe_app
from tests.conftest import ROOT

UNREACHABLE = "redis://127.0.0.1:1/0"


async def corrupt(app: Conveyor, job_id: str) -> None:
    """Write garbage into a stored job's payload, behind Conveyor's back."""
    engine = app.engine
    if isinstance(engine, RedisEngine):
        client = redis_asyncio.Redis.from_url(app.url.split("?")[0])
        key = engine._keys.queue("probe").job(job_id)
        assert await client.hset(key, "payload", "{definitely not json") == 0
        await client.aclose()
    elif isinstance(engine, PostgresEngine):
        import psycopg

        async with await psycopg.AsyncConnection.connect(engine.conninfo) as conn:
            await conn.execute(
                f"UPDATE {engine.schema_sql}.jobs SET payload = '{{definitely not json' "
                "WHERE id = %s",
                (job_id,),
            )
    else:
        path = app.url.removeprefix("sqlite:///")
        with sqlite3.connect(path) as conn:
            conn.execute("UPDATE jobs SET payload = '{definitely not json' WHERE id = ?", (job_id,))


async def test_malformed_stored_job_fails_alone(durable_url: str) -> None:
    app = probe_app(durable_url)
    bad = await app.enqueue("probe", {"action": "ok"})
    good = await app.enqueue("probe", {"action": "ok"})
    await corrupt(app, bad.id)
    with pytest.raises(MalformedJob, match="malformed"):
        await app.get_job(bad.id)
    await Worker(app, queues=("probe",), burst=True).run()
    assert (await app.get_job(good.id)).state == JobState.COMPLETED
    counts = await app.counts("probe")
    assert (counts.failed, counts.completed, counts.pending, counts.running) == (1, 1, 0, 0)
    failed = await app.list_jobs("probe", JobState.FAILED)
    assert failed.jobs == [] or failed.jobs[0].errors[0].type == "MalformedJob"
    await app.close()


async def test_unreachable_redis_is_named_at_startup() -> None:
    app = probe_app(UNREACHABLE)
    with pytest.raises(EngineUnavailable, match=r"127\.0\.0\.1:1") as info:
        await app.enqueue("probe", {})
    assert "redis-server" in str(info.value) or "CONVEYOR_URL" in str(info.value)


async def test_non_json_payload_changes_nothing(durable_url: str) -> None:
    app = probe_app(durable_url)
    with pytest.raises(InvalidPayload, match="never pickles"):
        await app.enqueue("probe", {"when": object()})
    assert (await app.counts("probe")).pending == 0
    await app.close()


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    import os

    return subprocess.run(
        [sys.executable, "-m", "conveyor", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
        cwd=ROOT,  # so `tests.apps.probe:app` imports
    )


def test_worker_cli_unreachable_engine_is_one_line_no_traceback() -> None:
    result = run_cli("worker", "tests.apps.probe:app", "--url", UNREACHABLE, "--health-port", "0")
    assert result.returncode == 2
    assert "EngineUnavailable" in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) <= 3


@pytest.mark.parametrize(
    ("env", "args", "needle"),
    [
        ({"CONVEYOR_CONCURRENCY": "0"}, [], "CONVEYOR_CONCURRENCY"),
        ({"CONVEYOR_CONCURENCY": "4"}, [], "did you mean CONVEYOR_CONCURRENCY"),
        ({}, ["--lease-timeout", "-1"], "lease_timeout"),
        ({}, ["--url", "mysql://x"], "redis://"),
    ],
)
def test_worker_cli_invalid_config_fails_at_startup(
    env: dict[str, str], args: list[str], needle: str, tmp_path: Path
) -> None:
    result = run_cli(
        "worker",
        "tests.apps.probe:app",
        "--health-port",
        "0",
        *(["--url", f"sqlite:///{tmp_path}/x.db"] if "--url" not in args else []),
        *args,
        env=env,
    )
    assert result.returncode == 2, result.stderr
    assert needle in result.stderr and "Traceback" not in result.stderr


# Issue 12 item 9: inputs that used to escape as OverflowError, ValueError, TypeError or
# UnicodeEncodeError, or were silently stored changed. Each must be a named error and
# store nothing, on every engine.
BAD_ENQUEUES: list[tuple[str, dict[str, Any], dict[str, Any]]] = [
    ("delay=inf", {}, {"delay": float("inf")}),
    ("delay=1e16", {}, {"delay": 1e16}),
    ("delay=nan", {}, {"delay": float("nan")}),
    ("timeout=nan", {}, {"timeout": float("nan")}),
    ("timeout=inf", {}, {"timeout": float("inf")}),
    ("priority=True", {}, {"priority": True}),
    ("tenant lone surrogate", {}, {"tenant": "acme\ud800"}),
    ("dedupe_key lone surrogate", {}, {"dedupe_key": "k\udfff"}),
    ("task lone surrogate", {}, {"queue": "probe", "task": "pro\ud800be"}),
    ("payload NaN", {"x": float("nan")}, {}),
    ("payload Infinity", {"x": [1.0, float("-inf")]}, {}),
    ("payload lone surrogate", {"x": "\ud800"}, {}),
    ("queue with a trailing newline", {}, {"queue": "probe\n"}),
]


@pytest.mark.parametrize(
    ("payload", "options"),
    [pytest.param(p, o, id=name) for name, p, o in BAD_ENQUEUES],
)
async def test_bad_enqueue_is_a_named_error_and_stores_nothing(
    engine_url: str, payload: dict[str, Any], options: dict[str, Any]
) -> None:
    app = probe_app(engine_url)
    options = dict(options)
    task = options.pop("task", "probe")
    with pytest.raises(InvalidJob) as info:
        await app.enqueue(task, payload, **options)
    assert "invalid" in str(info.value) or "NaN" in str(info.value) or "JSON" in str(info.value)
    counts = await app.counts("probe")
    assert (counts.pending, counts.scheduled) == (0, 0)
    assert await app.queue_names() in ([], ["probe"])
    await app.close()


FORGED_CURSORS = ["x", "99999999999999999999999", "18446744073709551616", "1:2:3", "a" * 300]


async def test_forged_listing_cursors_are_a_named_error(engine_url: str) -> None:
    app = probe_app(engine_url)
    await app.enqueue("probe", {})
    for state in (JobState.PENDING, JobState.COMPLETED):
        for cursor in FORGED_CURSORS:
            # Sealed (the API's cursors) the facade refuses them; unsealed (the CLI's)
            # the engine must refuse them with the same named error.
            for sealed in (True, False):
                with pytest.raises(InvalidArgument, match="is not one this"):
                    await app.list_jobs("probe", state, cursor=cursor, sealed=sealed)
    await app.close()
