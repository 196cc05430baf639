"""Redis's own settings, told truthfully (issue 13 item 4, issue 14 item 9): durable only
with AOF on, an evicting maxmemory-policy is an ERROR (or refuses to start), and
`status` / `/health/detailed` show both; on Redis 7 the scripts workers need run past
maxmemory (`allow-oom`). Real redis-server processes."""

from __future__ import annotations

import asyncio
import logging

import pytest
import redis

from conveyor import ConfigError, Worker, lifecycle
from conveyor.engines.redis import RedisEngine
from conveyor.engines.redis.errors import ALLOW_OOM, FLAGS_SINCE
from conveyor.health import detailed_document
from conveyor.scheduler import Scheduler
from conveyor.status import status_document
from tests.apps.probe import probe_app
from tests.conftest import RedisServer, SpawnWorker

pytestmark = pytest.mark.redis


async def test_aof_on_and_noeviction_is_durable_and_quiet(
    private_redis: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    app = probe_app(private_redis.url)
    engine = await app.connect()
    assert engine.durable
    doc = await status_document(app)
    server = doc["engine"]["server"]
    assert doc["engine"]["durable"] is True
    assert (server["maxmemory_policy"], server["appendonly"], server["appendfsync"]) == (
        "noeviction",
        "yes",
        "always",
    )
    assert server["problems"] == []
    with caplog.at_level(logging.WARNING, "conveyor.durability"):
        worker = Worker(app, queues=("probe",), burst=True)
        await asyncio.wait_for(worker.run(), 10)
    assert not caplog.records
    await app.close()


async def test_aof_off_is_not_durable_and_warned(
    redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The shared test server runs with appendonly no."""
    app = probe_app(redis_url)
    with caplog.at_level(logging.WARNING, "conveyor.durability"):
        await asyncio.wait_for(Worker(app, queues=("probe",), burst=True).run(), 10)
    assert app.engine.durable is False
    [record] = caplog.records
    assert record.levelno == logging.WARNING and "appendonly yes" in record.getMessage()
    doc = await status_document(app)
    assert doc["engine"]["durable"] is False and doc["engine"]["server"]["appendonly"] == "no"
    # Not durable, but it serves: readiness stays up (only memory:// is refused).
    assert (await app.readiness()) == (True, "ok")
    await app.close()


async def test_an_evicting_policy_is_an_error_and_can_refuse_to_start(
    private_redis: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    redis.Redis(port=private_redis.port).config_set("maxmemory-policy", "allkeys-lru")
    app = probe_app(private_redis.url)
    with pytest.raises(ConfigError, match=r"allkeys-lru.*noeviction"):
        await Worker(app, queues=("probe",), burst=True, require_noeviction=True).run()
    with pytest.raises(ConfigError, match=r"scheduler refuses to start.*noeviction"):
        await Scheduler(app, require_noeviction=True).run()
    with caplog.at_level(logging.ERROR, "conveyor.durability"):
        worker = Worker(app, queues=("probe",), burst=True)
        await asyncio.wait_for(worker.run(), 10)
    [record] = caplog.records
    assert "maxmemory-policy is allkeys-lru" in record.getMessage()
    assert "CONFIG SET maxmemory-policy noeviction" in record.getMessage()
    detailed = detailed_document(worker, True, "ok")["engine"]["server"]
    assert detailed["maxmemory_policy"] == "allkeys-lru" and detailed["evicting"] is True
    await app.close()


async def test_the_cli_refuses_to_start_a_worker_on_an_evicting_redis(
    private_redis: RedisServer, spawn_worker: SpawnWorker, monkeypatch: pytest.MonkeyPatch
) -> None:
    redis.Redis(port=private_redis.port).config_set("maxmemory-policy", "volatile-lru")
    monkeypatch.setenv("CONVEYOR_REQUIRE_NOEVICTION", "true")
    proc = spawn_worker(private_redis.url, queues="probe")
    assert proc.wait(60) == 2
    assert proc.stderr is not None
    err = proc.stderr.read().decode()
    assert "volatile-lru" in err and "noeviction" in err


async def test_the_api_refuses_to_start_on_an_evicting_redis(
    private_redis: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    import subprocess
    import sys

    redis.Redis(port=private_redis.port).config_set("maxmemory-policy", "allkeys-random")
    monkeypatch.setenv("CONVEYOR_REQUIRE_NOEVICTION", "true")
    done = subprocess.run(
        [sys.executable, "-m", "conveyor", "api", "--url", private_redis.url, "--port", "0"],
        capture_output=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert b"API refuses to start" in done.stderr and b"allkeys-random" in done.stderr


async def test_scripts_load_with_the_lifecycle_prelude_under_their_memory_flag(
    redis_url: str,
) -> None:
    """Both at load: the lifecycle prelude, and (Redis 7+) the `#!lua flags=` line, which
    Redis reads only as a script's first line; then the server holds every script. The
    lease scripts, registered on first use, get their flag too."""
    engine = RedisEngine(redis_url)
    await engine.connect()
    assert engine._version is not None and engine._version >= FLAGS_SINCE
    assert await engine.acquire_lease("l", "me", 1_000)
    assert "lease_acquire" in engine._scripts
    for name, script in engine._scripts.items():
        first = script.script.partition("\n")[0]
        shebang = first if first.startswith("#!") else None  # none: runs on Redis 6.2
        assert shebang == ("#!lua flags=allow-oom" if name in ALLOW_OOM else None), name
        if name == "exchange":  # it applies outcomes: the lifecycle's table, as generated
            prelude = lifecycle.lua_prelude()
            assert prelude[prelude.index("local TRANSITIONS") :] in script.script
    shas = [s.sha for s in engine._scripts.values()]
    assert all(await engine._client.script_exists(*shas))
    await engine.close()
