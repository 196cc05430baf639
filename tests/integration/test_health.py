"""Worker health server, metrics, lifecycle order and cross-process events."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from conveyor import Conveyor, Job, JobState, Worker
from conveyor.testing import eventually
from tests.apps.probe import probe_app

from ..conftest import RedisServer, free_port


@pytest.fixture
async def running() -> AsyncIterator[list[Worker]]:
    """Workers started by a test; stopped at the end."""
    started: list[Worker] = []
    yield started
    for w in started:
        w.stop()


async def start(app: Conveyor, running: list[Worker], **kwargs: object) -> tuple[Worker, str]:
    worker = Worker(
        app,
        queues=("probe",),
        health_port=free_port(),
        health_host="127.0.0.1",
        lease_timeout=3,
        **kwargs,
    )  # type: ignore[arg-type]
    running.append(worker)
    task = asyncio.create_task(worker.run())
    worker.__dict__["_test_task"] = task

    async def serving() -> bool:
        return worker.health_address is not None

    await eventually(serving, message="health server up")
    host, port = worker.health_address  # type: ignore[misc]
    return worker, f"http://{host}:{port}"


async def test_ready_live_detailed_and_metrics(sqlite_url: str, running: list[Worker]) -> None:
    app = probe_app(sqlite_url)
    worker, base = await start(app, running)
    await app.enqueue("probe", {"action": "ok"})
    await app.enqueue("probe", {"action": "fail"}, max_attempts=1)
    async with httpx.AsyncClient(base_url=base) as http:
        assert (await http.get("/health/live")).status_code == 200
        ready = await http.get("/health/ready")
        assert ready.status_code == 200 and ready.json()["status"] == "ready"

        async def both_done() -> bool:
            return worker.stats.processed + worker.stats.failed == 2

        await eventually(both_done, message="two jobs finished")
        detail = (await http.get("/health/detailed")).json()
        assert detail["engine"]["durable"] is True
        assert detail["concurrency"]["limit"] == 10
        assert detail["config"]["queues"] == ["probe"]
        assert "dependencies" in detail
        text = (await http.get("/metrics")).text
    assert 'conveyor_jobs_processed_total{queue="probe",task="probe"} 1.0' in text
    assert 'conveyor_jobs_failed_total{queue="probe",task="probe"} 1.0' in text
    assert "conveyor_job_duration_seconds_bucket" in text
    assert "conveyor_concurrency_limit 10.0" in text
    worker.stop()
    await worker.__dict__["_test_task"]


async def test_memory_engine_is_never_ready(running: list[Worker]) -> None:
    app = probe_app("memory://")
    _, base = await start(app, running)
    async with httpx.AsyncClient(base_url=base) as http:
        ready = await http.get("/health/ready")
    assert ready.status_code == 503 and "not durable" in ready.json()["reason"]


async def test_not_ready_while_shutting_down(sqlite_url: str, running: list[Worker]) -> None:
    app = probe_app(sqlite_url)
    await app.enqueue("probe", {"action": "sleep", "seconds": 2})
    worker, base = await start(app, running, shutdown_timeout=10)

    async def busy() -> bool:
        return worker.in_flight == 1

    await eventually(busy, message="job running")
    worker.stop()
    async with httpx.AsyncClient(base_url=base) as http:
        ready = await http.get("/health/ready")
    assert ready.status_code == 503 and ready.json()["reason"] == "shutting down"
    await worker.__dict__["_test_task"]


async def test_metrics_prefix_is_configurable(sqlite_url: str, running: list[Worker]) -> None:
    app = probe_app(sqlite_url)
    _, base = await start(app, running, metrics_prefix="acme_jobs_")
    async with httpx.AsyncClient(base_url=base) as http:
        text = (await http.get("/metrics")).text
    assert "acme_jobs_concurrency_limit" in text and "conveyor_" not in text


async def test_lifecycle_order_matches_runbook(sqlite_url: str, running: list[Worker]) -> None:
    """Health server is up before on_startup; on_shutdown runs after in-flight jobs end."""
    app = probe_app(sqlite_url)
    order: list[str] = []
    holder: dict[str, str] = {}

    @app.on_startup
    async def startup() -> None:
        host, port = running[-1].health_address  # type: ignore[misc]
        async with httpx.AsyncClient() as http:
            live = await http.get(f"http://{host}:{port}/health/live")
        order.append(f"startup (health {live.status_code})")

    @app.on_shutdown
    def shutdown() -> None:
        order.append("shutdown")

    @app.on("completed")
    async def completed(job: Job) -> None:
        order.append(f"completed {job.id == holder['id']} {job.state.value}")

    job = await app.enqueue("probe", {"action": "sleep", "seconds": 0.3})
    holder["id"] = job.id
    worker, _ = await start(app, running)

    async def started() -> bool:
        return worker.in_flight == 1

    await eventually(started, message="job started")
    worker.stop()
    await worker.__dict__["_test_task"]
    assert order == ["startup (health 200)", "completed True completed", "shutdown"]
    assert worker.health_address is None  # health server down last


async def test_failed_hook_sees_the_error(sqlite_url: str) -> None:
    app = probe_app(sqlite_url)
    seen: list[tuple[str, str]] = []

    @app.on("failed")
    def on_failed(job: Job) -> None:
        assert job.last_error is not None
        seen.append((job.state.value, job.last_error.message))

    await app.enqueue("probe", {"action": "fail", "message": "smtp down"}, max_attempts=1)
    await Worker(app, queues=("probe",), burst=True).run()
    assert seen == [("failed", "smtp down")]


CONSUMER = textwrap.dedent(
    """
    import asyncio, json, sys
    from conveyor import Conveyor

    async def main():
        app = Conveyor(sys.argv[1])
        engine = await app.connect()
        since = await engine.last_event_ids(["probe"])  # pin "now" before saying ready
        print("ready", flush=True)
        seen = 0
        async for event in app.events(["probe"], since=since, block_ms=200):
            print(json.dumps({"kind": event.kind, "job": event.job_id}), flush=True)
            seen += event.kind in ("completed", "failed")
            if seen == 2:
                return

    asyncio.run(main())
    """
)


async def test_events_reach_a_consumer_in_another_process(durable_url: str, tmp_path: Path) -> None:
    script = tmp_path / "consumer.py"
    script.write_text(CONSUMER)
    consumer = subprocess.Popen(
        [sys.executable, str(script), durable_url], stdout=subprocess.PIPE, text=True
    )
    try:
        assert consumer.stdout is not None
        assert consumer.stdout.readline().strip() == "ready"
        app = probe_app(durable_url)
        ok = await app.enqueue("probe", {"action": "ok"})
        bad = await app.enqueue("probe", {"action": "fail"}, max_attempts=1)
        await Worker(app, queues=("probe",), burst=True).run()
        await app.close()
        out, _ = await asyncio.to_thread(consumer.communicate, timeout=20)
    finally:
        consumer.kill()
    events = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    kinds = {(e["job"], e["kind"]) for e in events}
    assert {(ok.id, "enqueued"), (ok.id, "started"), (ok.id, "completed")} <= kinds
    assert {(bad.id, "started"), (bad.id, "failed")} <= kinds


@pytest.mark.slow
@pytest.mark.fault
async def test_ready_flips_when_redis_stops_and_worker_resumes(
    private_redis: RedisServer, running: list[Worker]
) -> None:
    app = probe_app(private_redis.url)
    _, base = await start(app, running)
    first = await app.enqueue("probe", {"action": "ok"})

    async def state_is(job_id: str, state: JobState) -> bool:
        return (await app.get_job(job_id)).state == state

    await eventually(lambda: state_is(first.id, JobState.COMPLETED), message="first job done")
    async with httpx.AsyncClient(base_url=base, timeout=10) as http:
        private_redis.stop()
        loop = asyncio.get_running_loop()
        t0 = loop.time()

        async def not_ready() -> bool:
            return (await http.get("/health/ready")).status_code == 503

        await eventually(not_ready, timeout=10, interval=0.2, message="ready -> 503")
        down_after = loop.time() - t0
        private_redis.start()

        async def ready_again() -> bool:
            return (await http.get("/health/ready")).status_code == 200

        await eventually(ready_again, timeout=15, interval=0.2, message="ready -> 200")
    second = await app.enqueue("probe", {"action": "ok"})
    await eventually(
        lambda: state_is(second.id, JobState.COMPLETED),
        timeout=15,
        message="worker resumed processing without a restart",
    )
    assert down_after < 5
    await app.close()
