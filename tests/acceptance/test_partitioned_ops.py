"""Operators see a partitioned queue as ONE queue (issue 17, point 3), without the
application's code: the CLI with only `--url`, and the HTTP API and dashboard of an app
that does not declare the partitions (the dashboard's tables read the same endpoints).
Jobs are set up in-process by an app that does.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
import websockets

from conveyor import Conveyor, Job
from conveyor.engines import open_engine
from conveyor.job import queue_of
from conveyor.partitions import layout
from conveyor.worker import Worker
from tests.acceptance.test_api import (  # noqa: F401 (api_server: a fixture)
    StartApi,
    api_server,
    frames,
    subscribed,
)
from tests.acceptance.test_cli_ops import conveyor

QUEUE, N = "mail", 4


@pytest.fixture
async def producer(durable_url: str) -> AsyncIterator[Conveyor]:
    app = Conveyor(durable_url)

    @app.task("send", queue=QUEUE, partitions=N)
    async def send(job: Job) -> None:
        raise RuntimeError("smtp down")

    await app.connect()
    yield app
    await app.close()


async def test_cli_sees_and_operates_one_queue(producer: Conveyor, durable_url: str) -> None:
    ids = {(await producer.enqueue("send", {}, tenant=f"t{i}")).id for i in range(10)}
    assert len({queue_of(job_id) for job_id in ids}) > 1  # spread over partitions

    rows = (await conveyor(durable_url, "queues", "--json")).json()
    assert [(r["queue"], r["pending"], r["paused"]) for r in rows] == [(QUEUE, 10, False)]

    seen: list[str] = []
    cursor: list[str] = []
    while True:  # the CLI's (unsealed) cursors page across partitions
        page = await conveyor(durable_url, "jobs", QUEUE, "--limit", "3", "--json", *cursor)
        assert page.code == 0, page
        body = page.json()
        assert all(job["queue"] == QUEUE for job in body["jobs"])
        seen += [job["id"] for job in body["jobs"]]
        if body["cursor"] is None:
            break
        cursor = ["--cursor", body["cursor"]]
    assert sorted(seen) == sorted(ids)

    paused = await conveyor(durable_url, "pause", QUEUE, "--json")
    assert paused.code == 0 and paused.json()["paused"] is True
    # Every partition is paused, also one with no jobs yet: a job routed there later
    # must wait too.
    engine = open_engine(durable_url)
    await engine.connect()
    try:
        assert all([(await engine.counts(name)).paused for name in layout(QUEUE, N)])
        resumed = await conveyor(durable_url, "resume", QUEUE, "--json")
        assert resumed.json()["paused"] is False
        assert not any([(await engine.counts(name)).paused for name in layout(QUEUE, N)])
    finally:
        await engine.close()

    limits = await conveyor(durable_url, "limits", QUEUE, "--concurrency", "8", "--json")
    assert limits.code == 0, limits
    assert limits.json()["limits"]["concurrency"] == 8
    too_low = await conveyor(durable_url, "limits", QUEUE, "--concurrency", "2")
    assert too_low.code != 0 and "below the queue's 4 partitions" in too_low.err

    # `conveyor enqueue` without the app's code stores into the partitions it finds,
    # routed by the same rule (here: the tenant's partition).
    added = await conveyor(
        durable_url, "enqueue", "send", "--queue", QUEUE, "--tenant", "t3", "--json"
    )
    assert added.code == 0, added
    same_tenant = await producer.enqueue("send", {}, tenant="t3")
    assert queue_of(added.json()["id"]) == queue_of(same_tenant.id)
    assert added.json()["queue"] == QUEUE

    purged = await conveyor(durable_url, "purge", QUEUE, "--yes")
    assert purged.code == 0 and "12 job(s) deleted" in purged.out, purged


async def test_api_sees_and_operates_one_queue(
    producer: Conveyor,
    durable_url: str,
    api_server: StartApi,  # noqa: F811
) -> None:
    job = await producer.enqueue("send", {}, tenant="acme")
    for i in range(6):
        await producer.enqueue("send", {}, tenant=f"t{i}")
    server = api_server(durable_url, app=Conveyor(durable_url))  # no partitions declared
    async with httpx.AsyncClient(timeout=10) as client:
        queues = (await client.get(f"{server.url}/queues")).json()["queues"]
        assert [(q["queue"], q["pending"]) for q in queues] == [(QUEUE, 7)]
        detail = (await client.get(f"{server.url}/jobs/{job.id}")).json()
        assert detail["queue"] == QUEUE
        listed: list[str] = []
        params: dict[str, str] = {"queue": QUEUE, "limit": "2"}
        while True:
            page = (await client.get(f"{server.url}/jobs", params=params)).json()
            listed += [j["id"] for j in page["jobs"]]
            if page["next_cursor"] is None:
                break
            params["cursor"] = page["next_cursor"]
        assert len(listed) == len(set(listed)) == 7
        r = await client.post(f"{server.url}/queues/{QUEUE}/pause")
        assert r.status_code == 200 and r.json()["paused"] is True
        stats = (await client.get(f"{server.url}/queues/{QUEUE}/stats")).json()
        assert stats["paused"] is True and stats["pending"] == 7
        # The dashboard's sparklines: one row, named for the queue.
        sparks = (await client.get(f"{server.url}/dashboard/api/throughput")).json()
        assert list(sparks["queues"]) == [QUEUE]


async def test_live_updates_cover_every_partition(
    producer: Conveyor,
    durable_url: str,
    api_server: StartApi,  # noqa: F811
) -> None:
    """`WS /ws/jobs?queue=mail` streams the events of every partition (each event names
    its partition: its id is that partition's, so a reconnect's `since` names it too);
    `?job=<id>` follows one job of a partitioned queue."""
    served = Conveyor(durable_url)  # the API's own app (another thread's event loop)
    served.limits(QUEUE, partitions=N)
    server = api_server(durable_url, app=served)
    failed: set[str] = set()

    def all_failed(frame: dict[str, object]) -> bool:
        if frame.get("kind") == "failed":
            failed.add(str(frame["job_id"]))
        return len(failed) == N

    async with websockets.connect(f"{server.ws_url}/ws/jobs?queue={QUEUE}") as broad:
        await subscribed(broad)
        jobs = [await producer.enqueue("send", {}, max_attempts=1) for _ in range(N)]
        async with websockets.connect(f"{server.ws_url}/ws/jobs?job={jobs[0].id}") as one:
            await subscribed(one)
            await Worker(producer, queues=(QUEUE,), burst=True).run()
            mine = [f for _, f in await frames(one, lambda f: f.get("kind") == "failed")]
        assert {f["job_id"] for f in mine} == {jobs[0].id}
        events = [f for _, f in await frames(broad, all_failed)]
    assert {f["queue"] for f in events} == {queue_of(job.id) for job in jobs}
    assert failed == {job.id for job in jobs}
    # Reconnect from the first event of jobs[0]'s partition: the rest of it is replayed.
    first = next(f for f in events if f["queue"] == queue_of(jobs[0].id))
    since = f"{first['queue']}:{first['id']}"
    async with websockets.connect(f"{server.ws_url}/ws/jobs?queue={QUEUE}&since={since}") as ws:
        await subscribed(ws)
        replayed = [f for _, f in await frames(ws, lambda f: f.get("kind") == "failed")]
    assert replayed and all(f["queue"] == first["queue"] for f in replayed)
    assert first["id"] not in {f["id"] for f in replayed}  # after `since`, not from it
    assert replayed[-1]["job_id"] == jobs[0].id
