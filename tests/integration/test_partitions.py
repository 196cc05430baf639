"""Partitioned queues (issue 17, point 3) held to one contract on every engine.

A queue declared with N partitions is N physical queues under one name
(`conveyor.partitions`). These tests run the same rules on memory, SQLite, one Redis,
Redis Cluster and Postgres: routing (a tenant's jobs stay in one partition), dedupe
across partitions, workers claiming every partition in turn, operators seeing one
queue, split queue-wide limits, and the refusal to change N under live jobs. The last
test shows the point of it all on a real cluster: the partitions of one queue land on
different masters, and all of them are worked.
"""

from __future__ import annotations

import asyncio
import collections
import uuid
from collections.abc import AsyncIterator

import httpx
import pytest

from conveyor import Conveyor, Job, JobState, Worker
from conveyor.engines import open_engine
from conveyor.errors import ConfigError
from conveyor.job import queue_of
from conveyor.partitions import PartitionsChanged, Rotation, layout
from conveyor.testing import eventually
from tests.conftest import free_port
from tests.redis_topologies import ClusterServers

QUEUE = "mail"
N = 4


def url_for(request: pytest.FixtureRequest) -> str:
    kind = request.param
    if kind == "memory":
        return "memory://"
    fixture = {
        "sqlite": "sqlite_url",
        "redis": "redis_url",
        "redis+cluster": "cluster_url",
        "postgresql": "postgres_url",
    }[kind]
    return str(request.getfixturevalue(fixture))


@pytest.fixture(params=["memory", "sqlite", "redis", "redis+cluster", "postgresql"])
def part_url(request: pytest.FixtureRequest) -> str:
    return url_for(request)


def make_app(url: str, partitions: int | None = N, **limits: object) -> Conveyor:
    """An app whose task `send` on `mail` records the jobs it ran, in order."""
    app = Conveyor(url)
    ran: list[Job] = []
    app.ran = ran  # type: ignore[attr-defined]

    @app.task("send", queue=QUEUE, partitions=partitions)
    async def send(job: Job) -> None:
        if job.payload.get("fail"):
            raise RuntimeError("told to fail")
        ran.append(job)

    if limits:
        app.limits(QUEUE, partitions=partitions, **limits)  # type: ignore[arg-type]
    return app


@pytest.fixture(params=["sqlite", "redis", "redis+cluster", "postgresql"])
def shared_url(request: pytest.FixtureRequest) -> str:
    """Engines that several apps share (memory:// is private to its app)."""
    return url_for(request)


@pytest.fixture
async def app(part_url: str) -> AsyncIterator[Conveyor]:
    app = make_app(part_url)
    await app.connect()
    yield app
    await app.close()


def burst(app: Conveyor, **options: object) -> Worker:
    return Worker(app, queues=(QUEUE,), burst=True, **options)  # type: ignore[arg-type]


async def test_routing_keeps_a_tenant_in_one_partition_and_spreads_the_rest(
    app: Conveyor,
) -> None:
    tenants = [f"t{i}" for i in range(12)]
    by_tenant: dict[str, set[str]] = collections.defaultdict(set)
    for _ in range(3):
        for tenant in tenants:
            job = await app.enqueue("send", {}, tenant=tenant)
            assert job.queue == QUEUE  # operators and callers see the queue
            by_tenant[tenant].add(queue_of(job.id))
    assert all(len(homes) == 1 for homes in by_tenant.values())
    assert {home for homes in by_tenant.values() for home in homes} <= set(layout(QUEUE, N))
    plain = [queue_of((await app.enqueue("send", {})).id) for _ in range(2 * N)]
    assert collections.Counter(plain) == {name: 2 for name in layout(QUEUE, N)}  # round-robin
    assert (await app.get_job((await app.enqueue("send", {})).id)).queue == QUEUE
    # A worker's queue-depth metrics name the queue, summed over its partitions.
    await app.pause(QUEUE)
    worker = Worker(app, queues=(QUEUE,), health_port=free_port(), health_host="127.0.0.1")
    running = asyncio.create_task(worker.run())
    try:

        async def sampled() -> bool:
            return bool(worker.last_counts)

        await eventually(sampled, message="the worker sampled queue depths")
        host, port = worker.health_address  # type: ignore[misc]
        async with httpx.AsyncClient() as http:
            text = (await http.get(f"http://{host}:{port}/metrics")).text
    finally:
        worker.stop()
        await running
    pending = 36 + 2 * N + 1
    assert f'conveyor_queue_depth{{queue="{QUEUE}",state="pending"}} {pending}.0' in text
    assert "~" not in text  # no partition name reaches the metrics


async def test_operators_see_one_queue(app: Conveyor) -> None:
    ids = {(await app.enqueue("send", {}, tenant=f"t{i % 5}")).id for i in range(23)}
    assert await app.queue_names() == [QUEUE]
    counts = await app.counts(QUEUE)
    assert (counts.queue, counts.pending, counts.paused) == (QUEUE, 23, False)
    seen: list[str] = []
    cursor = None
    while True:  # pages of 7 cross partition boundaries; sealed cursors as the API uses
        page = await app.list_jobs(QUEUE, JobState.PENDING, limit=7, cursor=cursor)
        assert len(page.jobs) <= 7 and all(j.queue == QUEUE for j in page.jobs)
        seen.extend(j.id for j in page.jobs)
        if page.cursor is None:
            break
        cursor = page.cursor
    assert sorted(seen) == sorted(ids)
    tenant_page = await app.list_jobs(QUEUE, JobState.PENDING, tenant="t1", limit=50)
    assert len(tenant_page.jobs) == 5

    await app.pause(QUEUE)
    assert (await app.counts(QUEUE)).paused
    await asyncio.wait_for(burst(app).run(), 30)
    assert (await app.counts(QUEUE)).pending == 23  # no partition was claimed from
    await app.resume(QUEUE)
    assert not (await app.counts(QUEUE)).paused
    await asyncio.wait_for(burst(app).run(), 30)
    assert (await app.counts(QUEUE)).completed == 23
    [history] = await app.throughput([QUEUE], 5)
    assert history.queue == QUEUE and sum(history.completed) == 23
    # app.events() over the queue reads every partition's log.
    stream = app.events([QUEUE], since=dict.fromkeys(layout(QUEUE, N), "0"), block_ms=0)
    completed: dict[str, str] = {}
    async for event in stream:
        if event.kind == "completed":
            completed[event.job_id] = event.queue
            if len(completed) == 23:
                break
    assert set(completed) == ids
    assert set(completed.values()) == {queue_of(job_id) for job_id in ids}  # all partitions used


async def test_retry_all_clean_and_purge_act_on_every_partition(app: Conveyor) -> None:
    for i in range(10):
        await app.enqueue("send", {"fail": True}, max_attempts=1, tenant=f"t{i}")
    await asyncio.wait_for(burst(app).run(), 30)
    assert (await app.counts(QUEUE)).failed == 10
    one = (await app.list_jobs(QUEUE, JobState.FAILED, limit=1)).jobs[0]
    assert (await app.retry_job(one.id)).queue == QUEUE
    assert await app.retry_all(QUEUE) == 9
    assert (await app.counts(QUEUE)).pending == 10
    await asyncio.wait_for(burst(app).run(), 30)
    assert await app.clean(QUEUE, JobState.FAILED, 0, limit=4) == 4
    assert (await app.counts(QUEUE)).failed == 6
    await app.enqueue("send", {})
    assert await app.purge(QUEUE) == 7
    assert (await app.counts(QUEUE)).failed == 0


async def test_dedupe_holds_across_partitions(app: Conveyor) -> None:
    """Without a tenant the dedupe key picks the partition, so a repeat always meets the
    job that holds the key; with a tenant the tenant does, so keys are per tenant."""
    first = await app.enqueue("send", {}, dedupe_key="welcome-42")
    for _ in range(2 * N):
        assert (await app.enqueue("send", {}, dedupe_key="welcome-42")).id == first.id
    mine = await app.enqueue("send", {}, tenant="acme", dedupe_key="k")
    assert (await app.enqueue("send", {}, tenant="acme", dedupe_key="k")).id == mine.id
    assert mine.dedupe_key == "tenant:4:acme:k"  # stored scoped to its tenant
    for tenant in ("globex", "initech", "umbrella", "hooli", "wonka"):
        other = await app.enqueue("send", {}, tenant=tenant, dedupe_key="k")
        assert other.id != mine.id  # another tenant's key: its own, in any partition
    assert (await app.counts(QUEUE)).pending == 7


async def test_workers_claim_every_partition_in_turn(app: Conveyor) -> None:
    """One slot, a claim of one job per exchange: the partitions take turns (a turn is
    `Rotation.stick` claims), so the first N turns' jobs come from all N partitions
    (none waits for another to empty), and every job runs."""
    for i in range(6 * N):
        await app.enqueue("send", {"i": i})
    await asyncio.wait_for(burst(app, concurrency=1).run(), 60)
    ran: list[Job] = app.ran  # type: ignore[attr-defined]
    assert len(ran) == 6 * N
    assert all(job.queue == QUEUE for job in ran)  # the handler sees the queue
    homes = [queue_of(job.id) for job in ran]
    stick = Rotation((QUEUE,), app.partitions).stick
    assert stick < 6 and len(set(homes[: N * stick])) == N
    assert collections.Counter(homes) == {name: 6 for name in layout(QUEUE, N)}


async def test_queue_limits_are_split_across_partitions(part_url: str) -> None:
    app = make_app(part_url, concurrency=6, rate="10/1s", tenant_concurrency=2)
    engine = open_engine(part_url) if not part_url.startswith("memory") else None
    try:
        await app.connect()
        await asyncio.wait_for(burst(app).run(), 30)  # stores the limits at start
        peek = engine or app.engine
        if engine is not None:
            await engine.connect()
        shares = [await peek.get_limits(name) for name in layout(QUEUE, N)]
        assert [s.concurrency for s in shares] == [2, 2, 1, 1]
        assert [s.rate for s in shares] == [3, 3, 2, 2]
        assert {s.tenant_concurrency for s in shares} == {2}  # a tenant lives in one
        total = await app.get_limits(QUEUE)
        assert (total.concurrency, total.rate, total.tenant_concurrency) == (6, 10, 2)
        changed = await app.change_limits(QUEUE, concurrency=9)
        assert changed.concurrency == 9 and changed.rate == 10
        assert (await app.get_limits(QUEUE)).concurrency == 9
        before = [await peek.get_limits(name) for name in layout(QUEUE, N)]
        with pytest.raises(ConfigError, match="below the queue's 4 partitions"):
            await app.change_limits(QUEUE, concurrency=3)
        assert [await peek.get_limits(name) for name in layout(QUEUE, N)] == before
    finally:
        await app.close()
        if engine is not None:
            await engine.close()


def test_declaring_partitions_is_checked() -> None:
    app = Conveyor("memory://")
    with pytest.raises(ConfigError, match="below the queue's 4 partitions"):
        app.limits("q", concurrency=3, partitions=4)
    with pytest.raises(ConfigError, match="partitions=0 is invalid"):
        app.limits("q", partitions=0)
    app.limits("q", partitions=4)
    with pytest.raises(ConfigError, match="partitions=4 and partitions=8"):
        app.task("x", queue="q", partitions=8)(lambda job: None)
    assert app.queue_limits == {}  # only the layout: stored limits are left alone


async def test_changing_the_partition_count_under_live_jobs_is_refused(shared_url: str) -> None:
    four, eight, plain = make_app(shared_url), make_app(shared_url, 8), make_app(shared_url, None)
    try:
        for app in (four, eight, plain):
            await app.connect()
        job = await four.enqueue("send", {})
        with pytest.raises(PartitionsChanged, match=r"1 live job\(s\) stored in 4 partition"):
            await eight.enqueue("send", {})
        with pytest.raises(PartitionsChanged, match="declares partitions=1"):
            await asyncio.wait_for(burst(plain).run(), 30)
        assert (await four.counts(QUEUE)).pending == 1  # nothing changed
        await asyncio.wait_for(burst(four).run(), 30)  # done: the old layout is empty
        assert (await four.get_job(job.id)).state == JobState.COMPLETED
        moved = await eight.enqueue("send", {})
        assert queue_of(moved.id).endswith("of8")
        assert (await eight.counts(QUEUE)).completed == 1  # old layout still visible
        assert (await eight.counts(QUEUE)).pending == 1
    finally:
        for app in (four, eight, plain):
            await app.close()


async def test_partitions_land_on_different_masters_and_all_are_worked(
    redis_cluster: ClusterServers,
) -> None:
    """On a 3-master cluster: a prefix whose 8 partitions of `mail` are served by all
    three masters (found like `spread_queues` finds queues), then a burst of jobs, all
    of which run, from every partition and so from every master."""
    masters = set(redis_cluster.master_ports())
    for _ in range(100):
        prefix = f"t{uuid.uuid4().hex[:10]}"
        owners = {name: redis_cluster.owner(f"{{{prefix}:{name}}}")[0] for name in layout(QUEUE, 8)}
        if set(owners.values()) == masters:
            break
    else:
        raise AssertionError("no prefix spread 8 partitions over the 3 masters")
    app = make_app(f"{redis_cluster.url}?prefix={prefix}", 8)
    await app.connect()
    try:
        await app.enqueue_many([{"task": "send", "payload": {"i": i}} for i in range(80)])
        await asyncio.wait_for(burst(app, concurrency=8).run(), 60)
        ran: list[Job] = app.ran  # type: ignore[attr-defined]
        per_master = collections.Counter(owners[queue_of(job.id)] for job in ran)
        assert len(ran) == 80 and set(per_master) == masters
        assert collections.Counter(queue_of(job.id) for job in ran) == {
            name: 10 for name in layout(QUEUE, 8)
        }
        assert (await app.counts(QUEUE)).completed == 80
    finally:
        await app.close()
