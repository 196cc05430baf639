"""Redis faults with real processes: a restart with data to load, and maxmemory reached.

Each test runs a private redis-server (DEBUG enabled, AOF on) and `conveyor worker`
processes, then breaks Redis the way an operator's worst day does (issue 13, item 1).

The load time of the restart test is `FAULT_LOAD_SECONDS` (default 3, the CI run); the
release run uses 30 (docs/reliability.md has the command).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from conveyor import Conveyor, EngineFull, EngineUnavailable, JobState
from conveyor.testing import eventually
from tests.apps.probe import mark_counts, probe_app
from tests.conftest import REDIS_SERVER, RedisServer, SpawnWorker

pytestmark = [pytest.mark.fault, pytest.mark.redis, pytest.mark.slow]

LOAD_S = float(os.environ.get("FAULT_LOAD_SECONDS", "3"))
_KEY_DELAY_US = 100  # redis-server --key-load-delay: microseconds spent per key loaded


@pytest.fixture
def debug_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A private redis-server with AOF on and DEBUG allowed (POPULATE fills it)."""
    if not REDIS_SERVER:
        pytest.fail("redis-server is not installed; run scripts/test, which installs it")
    server = RedisServer(tmp_path, appendonly=True, extra_args=["--enable-debug-command", "yes"])
    server.start()
    yield server
    server.kill()


marks = mark_counts


async def enqueue_probes(app: Conveyor, n: int, mark: Path, **payload: object) -> set[str]:
    jobs = await app.enqueue_many(
        [{"task": "probe", "payload": {"mark": str(mark), **payload}} for _ in range(n)]
    )
    return {job.id for job in jobs}


def wait_loaded(admin: redis.Redis) -> None:
    deadline = time.monotonic() + LOAD_S * 4 + 30
    while True:
        try:
            admin.ping()
            return
        except redis.exceptions.BusyLoadingError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


async def test_workers_ride_out_a_restart_with_data_to_load(
    debug_redis: RedisServer, spawn_worker: SpawnWorker, tmp_path: Path
) -> None:
    """Redis restarts and spends LOAD_S seconds loading: producers get EngineUnavailable
    (not a raw LOADING reply), both workers stay up and finish every job without a
    restart of the fleet."""
    url = f"{debug_redis.url}?prefix=fault"
    mark = tmp_path / "marks"
    app = probe_app(url)
    await app.connect()
    workers = [
        spawn_worker(url, "--concurrency", "10", "--lease-timeout", "3", queues="probe")
        for _ in range(2)
    ]

    async def both_registered() -> bool:  # a worker still starting would meet LOADING at
        return len(await app.workers()) == 2  # start-up, which fails fast by design

    await eventually(both_registered, timeout=60, message="both workers registered")
    before = await enqueue_probes(app, 100, mark)

    async def finished(ids: set[str]) -> bool:
        seen = marks(mark)
        return all(seen[("done", job_id)] >= 1 for job_id in ids)

    await eventually(lambda: finished(before), timeout=60, message="100 jobs before restart")
    admin = redis.Redis(port=debug_redis.port)
    # Data to load: filler keys (another prefix) written into the AOF's RDB base.
    admin.execute_command("DEBUG", "POPULATE", int(LOAD_S * 1e6 / _KEY_DELAY_US), "filler", 32)
    admin.bgrewriteaof()
    while admin.info("persistence")["aof_rewrite_in_progress"]:
        time.sleep(0.05)
    during = await enqueue_probes(app, 300, mark, action="sleep", seconds=0.05)
    debug_redis.stop()  # SIGTERM: Redis flushes its AOF; the workers hold running jobs
    debug_redis.extra_args += [
        *("--key-load-delay", str(_KEY_DELAY_US)),
        *("--loading-process-events-interval-bytes", "1024"),  # answer LOADING while loading
    ]
    debug_redis.start(loaded=False)
    restarted = time.monotonic()
    refused: list[str] = []  # the first call may find its connection closed by the stop
    while not any("LOADING" in text for text in refused) and len(refused) < 3:
        with pytest.raises(EngineUnavailable) as info:
            await app.enqueue("probe", {"mark": str(mark)})
        refused.append(str(info.value))
    assert "LOADING" in refused[-1], refused
    wait_loaded(admin)
    loading_s = time.monotonic() - restarted
    for w in workers:
        assert w.poll() is None, f"a worker exited: {w.stderr.read().decode()[-3000:]}"
    after = await enqueue_probes(app, 100, mark)
    await eventually(
        lambda: finished(before | during | after),
        timeout=60 + LOAD_S,
        interval=0.1,
        message="every acknowledged job ran after the restart",
    )

    async def acknowledged() -> bool:  # a job's "done" mark is written before its ack
        counts = await app.counts("probe")
        return counts.completed == 500 and counts.pending == counts.running == 0

    await eventually(acknowledged, timeout=30, message="all 500 jobs completed")
    seen = marks(mark)
    ids = before | during | after
    print(
        f"\nfault=redis-restart-loading engine=redis jobs={len(ids)} lost=0 "
        f"duplicated={sum(1 for j in ids if seen[('done', j)] > 1)} stalled=0 "
        f"(LOADING for {loading_s:.1f}s; {sum(1 for j in ids if seen[('start', j)] > 1)} re-run)"
    )
    assert [w.poll() for w in workers] == [None, None]
    await app.close()


async def test_maxmemory_refuses_producers_but_workers_keep_their_leases(
    debug_redis: RedisServer, spawn_worker: SpawnWorker, tmp_path: Path
) -> None:
    """Redis at maxmemory (noeviction): enqueue raises EngineFull; the worker keeps
    renewing leases (no job runs twice though each outlives its lease), stays in
    `workers()`, and its completions get through."""
    url = f"{debug_redis.url}?prefix=fault"
    mark = tmp_path / "marks"
    app = probe_app(url)
    await app.connect()
    worker = spawn_worker(url, "--concurrency", "10", "--lease-timeout", "1.5", queues="probe")
    ids = await enqueue_probes(app, 10, mark, action="sleep", seconds=4)

    async def all_started() -> bool:
        seen = marks(mark)
        return all(seen[("start", job_id)] >= 1 for job_id in ids)

    await eventually(all_started, timeout=30, message="10 long jobs started")
    admin = redis.Redis(port=debug_redis.port)
    admin.execute_command("DEBUG", "POPULATE", 20_000, "filler", 100)
    admin.config_set("maxmemory", admin.info("memory")["used_memory"] // 2)
    with pytest.raises(EngineFull, match="maxmemory"):
        await app.enqueue("probe", {"mark": str(mark)})

    async def all_completed() -> bool:
        assert worker.poll() is None, "the worker stays up"
        assert [w["id"] for w in await app.workers()], "the worker stays registered"
        return (await app.counts("probe")).completed == 10

    await eventually(all_completed, timeout=30, interval=0.2, message="10 jobs completed")
    seen = marks(mark)
    assert [seen[("start", job_id)] for job_id in ids] == [1] * 10, "no lease was lost"
    for job_id in ids:
        job = await app.get_job(job_id)
        assert job.state is JobState.COMPLETED and job.attempt == 1
    print(
        f"\nfault=maxmemory-oom engine=redis jobs={len(ids)} lost=0 duplicated=0 stalled=0 "
        "(no lease lost, each job ran once)"
    )
    admin.config_set("maxmemory", 0)
    await app.enqueue("probe", {"mark": str(mark)})  # producers resume once memory frees
    await app.close()
