"""Operators see a partitioned queue as ONE queue (issue 17, point 3), without the
application's code: the CLI with only `--url`, and the HTTP API and dashboard of an app
that does not declare the partitions (the dashboard's tables read the same endpoints).
Jobs are set up in-process by an app that does.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from conveyor import Conveyor, Job
from conveyor.engines import open_engine
from conveyor.job import queue_of
from conveyor.partitions import layout
from tests.acceptance.test_api import StartApi, api_server  # noqa: F401 (a fixture)
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

    purged = await conveyor(durable_url, "purge", QUEUE, "--yes")
    assert purged.code == 0 and "10 job(s) deleted" in purged.out, purged


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
