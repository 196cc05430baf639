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
import uuid

import pytest

from conveyor import Conveyor, NotReplicated
from conveyor.engines import open_engine
from conveyor.errors import ConfigError
from tests.apps.probe import probe_app
from tests.conftest import RedisServer
from tests.redis_topologies import ClusterServers, raw_client

pytestmark = pytest.mark.redis


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
            assert any(":job:" in k for k in keys) and any(k.endswith(":fifo") for k in keys)
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


async def test_a_queue_moved_to_another_master_mid_call(redis_cluster: ClusterServers) -> None:
    """A slot migration by hand, step by step, with an engine whose slot map is stale.

    While the queue's slot is MIGRATING, its scripts are answered TRYAGAIN (each declares
    key prefixes that never exist, so some declared key is always missing) and the lane
    retries; once the keys moved and the slot belongs to the new master, the old one
    answers MOVED and the call follows it. The enqueue sent mid-migration completes, and
    nothing stored before is lost."""
    from tests.redis_topologies import command

    prefix = f"t{uuid.uuid4().hex[:8]}"
    tag = f"{{{prefix}:mq}}"
    source_port, source_id = redis_cluster.owner(tag)
    target_port = next(p for p in redis_cluster.master_ports() if p != source_port)
    target_id = command(target_port, "CLUSTER", "MYID").strip()
    slot = int(command(source_port, "CLUSTER", "KEYSLOT", tag).strip())
    app = Conveyor(f"{redis_cluster.url}?prefix={prefix}")
    await app.connect()
    try:
        before = [await app.enqueue("t", {"n": i}, queue="mq") for i in range(5)]
        command(target_port, "CLUSTER", "SETSLOT", str(slot), "IMPORTING", source_id)
        command(source_port, "CLUSTER", "SETSLOT", str(slot), "MIGRATING", target_id)
        during = asyncio.ensure_future(app.enqueue("t", {"n": 5}, queue="mq"))
        await asyncio.sleep(0.3)
        assert not during.done()  # held off (TRYAGAIN) while the slot is split
        keys = command(source_port, "CLUSTER", "GETKEYSINSLOT", str(slot), "1000").split()
        command(
            source_port, "MIGRATE", "127.0.0.1", str(target_port), "", "0", "5000",
            "KEYS", *keys,
        )  # fmt: skip
        for port in redis_cluster.master_ports():
            command(port, "CLUSTER", "SETSLOT", str(slot), "NODE", target_id)
        moved = await asyncio.wait_for(during, 10)
        assert redis_cluster.owner(tag)[0] == target_port
        for job in [*before, moved]:
            assert (await app.get_job(job.id)).state.value == "pending"
        assert (await app.counts("mq")).pending == 6
    finally:
        await app.close()
