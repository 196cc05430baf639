"""Guarantee 5: bad input gets a named error, a readable message, and changes nothing."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import redis.asyncio as redis_asyncio

from conveyor import Conveyor, EngineUnavailable, InvalidPayload, JobState, MalformedJob, Worker
from conveyor.engines.postgres import PostgresEngine
from conveyor.engines.redis import RedisEngine
from conveyor.testing import probe_app

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
    )


def test_worker_cli_unreachable_engine_is_one_line_no_traceback() -> None:
    result = run_cli("worker", "conveyor.testing:app", "--url", UNREACHABLE, "--health-port", "0")
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
        "conveyor.testing:app",
        "--health-port",
        "0",
        *(["--url", f"sqlite:///{tmp_path}/x.db"] if "--url" not in args else []),
        *args,
        env=env,
    )
    assert result.returncode == 2, result.stderr
    assert needle in result.stderr and "Traceback" not in result.stderr
