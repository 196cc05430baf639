"""Redis Cluster and Sentinel specifics (issue 17), on real deployments on loopback.

The engine contract suite and the differential test run on the session's cluster
(`redis+cluster` in `engine_url`); this file holds what only a cluster has: routing
by hash tag, reads across shards, the URLs' errors, replica acknowledgement
(`?replicas=N`), and the failover and resharding runs (`run_under_load`), which report
how many acknowledged jobs were lost.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from conveyor import Conveyor, EngineUnavailable, JobNotFound, NotReplicated
from conveyor.engines import open_engine
from conveyor.engines.redis.keys import KeyLayout
from conveyor.errors import ConfigError
from conveyor.testing import eventually
from tests.apps.probe import probe_app
from tests.conftest import RedisServer, SpawnWorker
from tests.redis_topologies import ClusterServers, SentinelServers, raw_client

pytestmark = pytest.mark.redis


@pytest.fixture
def own_cluster(tmp_path: Path) -> Iterator[ClusterServers]:
    """A cluster of this test's own (it kills or reshards nodes)."""
    cluster = ClusterServers(tmp_path / "cluster")
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def sentinels(tmp_path: Path) -> Iterator[SentinelServers]:
    deployment = SentinelServers(tmp_path / "sentinel")
    try:
        deployment.start()
        yield deployment
    finally:
        deployment.stop()


def spread_queues(cluster: ClusterServers, prefix: str, n: int) -> list[str]:
    """Queue names whose slots are served by `n` different masters."""
    chosen: dict[int, str] = {}
    for i in range(200):
        name = f"q{i}"
        port, _ = cluster.owner(f"{{{prefix}:{name}}}")
        chosen.setdefault(port, name)
        if len(chosen) == n:
            return list(chosen.values())
    raise AssertionError("could not spread queues over the masters")


async def test_plain_url_at_a_cluster_node_is_a_config_error(
    redis_cluster: ClusterServers,
) -> None:
    port = redis_cluster.nodes[0].port
    engine = open_engine(f"redis://127.0.0.1:{port}/0")
    with pytest.raises(ConfigError, match=r"redis\+cluster://127\.0\.0\.1:\d+/"):
        await engine.connect()
    await engine.close()


@pytest.mark.parametrize(
    ("url", "needle"),
    [
        ("redis+sentinel://127.0.0.1:26379", "MASTER_NAME"),
        ("redis+cluster://127.0.0.1:7000/3", "db 0 only"),
        ("redis+cluster://127.0.0.1:notaport/", "invalid port"),
        ("redis+cluster:///", "names no host"),
        ("redis://127.0.0.1/0?replicas=x", "replicas='x'"),
        ("redis://127.0.0.1/0?replicas=1&replica_timeout=0", "replica_timeout must be > 0"),
        ("redis+cluster://127.0.0.1:7000/?prefix={x}", "prefix"),
    ],
)
def test_bad_urls_are_named_config_errors(url: str, needle: str) -> None:
    with pytest.raises(ConfigError, match=needle.replace("+", r"\+").replace("{", r"\{")):
        open_engine(url)


async def test_a_queue_lives_on_one_master_and_ids_route_to_it(
    redis_cluster: ClusterServers,
) -> None:
    """Every key of a queue is on the master of its tag's slot, and `get_job(id)` reads
    the job there (the id names its queue, so no lookup is needed)."""
    prefix = f"t{uuid.uuid4().hex[:8]}"
    queues = spread_queues(redis_cluster, prefix, 3)
    app = Conveyor(f"{redis_cluster.url}?prefix={prefix}")
    await app.connect()
    raw = raw_client(redis_cluster.url, decode_responses=True)
    await raw.initialize()
    try:
        jobs = await app.enqueue_many(
            [{"task": "t", "queue": q, "payload": {"n": i}} for i, q in enumerate(queues * 5)]
        )
        for job in jobs:
            assert (await app.get_job(job.id)).id == job.id
        for q in queues:
            port, _ = redis_cluster.owner(f"{{{prefix}:{q}}}")
            node = raw.get_node(host="127.0.0.1", port=port)
            keys = await raw.keys(f"{{{prefix}:{q}}}*", target_nodes=node)
            assert any(":job:" in k for k in keys) and any(k.endswith(":pending") for k in keys)
        assert await app.queue_names() == sorted(queues)
        assert {c.queue: c.pending for c in [await app.counts(q) for q in queues]} == {
            q: 5 for q in queues
        }
    finally:
        await raw.aclose()
        await app.close()


async def test_events_across_queues_on_different_masters(redis_cluster: ClusterServers) -> None:
    """One read over queues on three masters sees each queue's events (one XREAD per
    master; a single XREAD would be refused as CROSSSLOT), blocking until one comes."""
    prefix = f"t{uuid.uuid4().hex[:8]}"
    queues = spread_queues(redis_cluster, prefix, 3)
    engine = open_engine(f"{redis_cluster.url}?prefix={prefix}")
    app = Conveyor(f"{redis_cluster.url}?prefix={prefix}")
    await engine.connect()
    await app.connect()
    try:
        start = await engine.last_event_ids(queues)
        reader = asyncio.ensure_future(
            engine.read_events(queues, since=None, count=100, block_ms=3000)
        )
        await asyncio.sleep(0.3)  # the reader has resolved "$" and is polling
        await app.enqueue("t", {}, queue=queues[2])
        first = await asyncio.wait_for(reader, 5)
        assert [(e.queue, e.kind) for e in first] == [(queues[2], "enqueued")]
        await app.enqueue_many([{"task": "t", "queue": q, "payload": {}} for q in queues])
        events = await engine.read_events(queues, since=start, count=100, block_ms=0)
        assert collections.Counter(e.queue for e in events) == {
            queues[0]: 1,
            queues[1]: 1,
            queues[2]: 2,
        }
    finally:
        await app.close()
        await engine.close()


async def test_replicas_option_waits_for_a_replica(redis_cluster: ClusterServers) -> None:
    """`?replicas=1`: enqueue and outcomes wait for the replica and succeed; asking for
    more replicas than exist is a named error once `replica_timeout` passes."""
    prefix = f"t{uuid.uuid4().hex[:8]}"
    app = probe_app(f"{redis_cluster.url}?prefix={prefix}&replicas=1")
    await app.connect()
    job = await app.enqueue("probe", {})
    from conveyor.worker import Worker

    await asyncio.wait_for(Worker(app, queues=("probe",), burst=True).run(), 30)
    assert (await app.get_job(job.id)).state.value == "completed"
    await app.close()
    greedy = probe_app(f"{redis_cluster.url}?prefix={prefix}&replicas=2&replica_timeout=0.2")
    await greedy.connect()
    with pytest.raises(NotReplicated, match="only 1 of 2 replica"):
        await greedy.enqueue("probe", {})
    await greedy.close()


async def test_replicas_option_on_a_server_without_replicas(redis_server: RedisServer) -> None:
    app = probe_app(
        f"{redis_server.url}?prefix=t{uuid.uuid4().hex[:8]}&replicas=1&replica_timeout=0.1"
    )
    await app.connect()
    with pytest.raises(NotReplicated, match="only 0 of 1 replica"):
        await app.enqueue("probe", {})
    await app.close()


# --- failover and resharding under load -------------------------------------------------


@dataclass
class LoadReport:
    acknowledged: int
    lost: int  # acknowledged, then gone from the store
    unfinished: int  # acknowledged, still there, not completed within the wait
    refused: int  # enqueue calls that raised (not acknowledged: not counted as lost)


def marks(path: Path) -> set[str]:
    if not path.exists():
        return set()
    return {ln.split()[1] for ln in path.read_text().splitlines() if ln.startswith("done ")}


async def run_under_load(
    url: str,
    disrupt: Callable[[], object],
    spawn_worker: SpawnWorker,
    tmp_path: Path,
    *,
    before_s: float = 1.0,
    after_s: float = 2.0,
) -> LoadReport:
    """2 producers and 3 worker processes run; `disrupt()` runs (in a thread) while they
    do; then every acknowledged job must be found and completed, without restarting
    anything. Returns what was lost."""
    mark = tmp_path / "marks"
    app = probe_app(url)
    await app.connect()
    workers = [
        spawn_worker(url, "--concurrency", "10", "--lease-timeout", "2", queues="probe")
        for _ in range(3)
    ]

    async def registered() -> bool:
        return len(await app.workers()) == 3

    await eventually(registered, timeout=60, message="3 workers registered")
    acked: set[str] = set()
    refused = 0
    stop = asyncio.Event()

    async def produce() -> None:
        nonlocal refused
        while not stop.is_set():
            try:
                jobs = await app.enqueue_many(
                    [{"task": "probe", "payload": {"mark": str(mark)}} for _ in range(10)]
                )
                acked.update(j.id for j in jobs)
            except EngineUnavailable:
                refused += 1
                await asyncio.sleep(0.1)
            await asyncio.sleep(0.005)

    producers = [asyncio.ensure_future(produce()) for _ in range(2)]
    await asyncio.sleep(before_s)
    await asyncio.to_thread(disrupt)
    await asyncio.sleep(after_s)
    stop.set()
    await asyncio.gather(*producers)
    lost: set[str] = set()

    async def settled() -> bool:
        todo = acked - marks(mark) - lost
        for job_id in list(todo)[:200]:
            with contextlib.suppress(EngineUnavailable):
                try:
                    job = await app.get_job(job_id)
                except JobNotFound:
                    lost.add(job_id)
                    continue
                if job.state.value == "completed":
                    todo.discard(job_id)
        return not (acked - marks(mark) - lost)

    with contextlib.suppress(AssertionError, TimeoutError):
        await eventually(settled, timeout=60, message="every acknowledged job completed")
    left = acked - marks(mark) - lost
    unfinished = len(left)
    states = collections.Counter(
        [(await app.get_job(job_id)).state.value for job_id in list(left)[:50]]
    )
    print(f"\nunfinished by state: {dict(states)}")
    assert all(w.poll() is None for w in workers), "a worker exited"
    await app.close()
    report = LoadReport(len(acked), len(lost), unfinished, refused)
    print(f"\n{report}")
    return report


def kill_probe_master(cluster: ClusterServers, prefix: str) -> Callable[[], None]:
    """kill -9 the master of the probe queue, wait for its replica to take over, then
    start the killed node again (it rejoins as a replica), as a supervisor would."""

    def disrupt() -> None:
        port, _ = cluster.owner(f"{{{prefix}:probe}}")
        cluster.kill_master_and_wait_failover(port)
        cluster.node(port).start()

    return disrupt


@pytest.mark.slow
@pytest.mark.parametrize("replicas", [0, 1])
async def test_cluster_failover_under_load(
    own_cluster: ClusterServers, spawn_worker: SpawnWorker, tmp_path: Path, replicas: int
) -> None:
    """kill -9 the probe queue's master while producers and 3 workers run: its replica
    is promoted, everyone carries on without restart. Without replica acknowledgement
    some acknowledged jobs may be lost (reported); with `?replicas=1`, none."""
    prefix = f"f{uuid.uuid4().hex[:8]}"
    url = f"{own_cluster.url}?prefix={prefix}&replicas={replicas}"
    report = await run_under_load(
        url, kill_probe_master(own_cluster, prefix), spawn_worker, tmp_path
    )
    assert report.acknowledged > 0
    assert report.unfinished == 0
    if replicas:
        assert report.lost == 0


@pytest.mark.slow
async def test_resharding_under_load_loses_nothing(
    own_cluster: ClusterServers, spawn_worker: SpawnWorker, tmp_path: Path
) -> None:
    """`redis-cli --cluster reshard` moves the probe queue's slot (keys and all) to
    another master while producers and workers run: nothing is lost or left behind."""
    layout_prefix = next(
        p
        for p in (f"r{uuid.uuid4().hex[:8]}" for _ in range(100_000))
        if _low_slot(KeyLayout(p).queue("probe").pending)
    )
    url = f"{own_cluster.url}?prefix={layout_prefix}"
    _, source = own_cluster.owner(KeyLayout(layout_prefix).queue("probe").pending)
    # Slot 16383 is the last master's: its id is another master's than slot 0's.
    _, target = own_cluster.owner(_key_in_slot(16383))

    def disrupt() -> None:
        own_cluster.reshard(source, target, slots=_RESHARD_SLOTS)
        assert own_cluster.owner(KeyLayout(layout_prefix).queue("probe").pending)[1] == target

    report = await run_under_load(url, disrupt, spawn_worker, tmp_path, after_s=1.0)
    assert report.acknowledged > 0
    assert report.lost == 0 and report.unfinished == 0


_RESHARD_SLOTS = 40


def _key_in_slot(slot: int) -> str:
    from redis.crc import key_slot

    return next(k for k in (f"k{i}" for i in range(1_000_000)) if key_slot(k.encode()) == slot)


def _low_slot(key: str) -> bool:
    """The key's slot is among the lowest `_RESHARD_SLOTS` of the first master
    (slots 0..5460), which reshard moves first."""
    from redis.crc import key_slot

    return key_slot(key.encode()) < _RESHARD_SLOTS


@pytest.mark.slow
@pytest.mark.parametrize("replicas", [0, 1])
async def test_sentinel_failover_under_load(
    sentinels: SentinelServers, spawn_worker: SpawnWorker, tmp_path: Path, replicas: int
) -> None:
    """The same run on Sentinel: kill -9 the master, the sentinels promote the replica,
    clients find it through them; the old master comes back as a replica."""
    url = f"{sentinels.url}?prefix=s{uuid.uuid4().hex[:8]}&replicas={replicas}"

    def disrupt() -> None:
        sentinels.kill_master_and_wait_failover()
        sentinels.master.start()

    report = await run_under_load(url, disrupt, spawn_worker, tmp_path)
    assert report.acknowledged > 0
    assert report.unfinished == 0
    if replicas:
        assert report.lost == 0
