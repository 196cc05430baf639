"""What Redis Cluster, Sentinel and replica acknowledgement cost (issue 17), in one run.

Starts, on loopback: one redis-server, a 3-master/3-replica cluster and a Sentinel set
(master, replica, 3 sentinels), then measures, rounds interleaved so load drifts hit all
alike:

* single enqueues one after another (latency-bound: what `?replicas=1` adds per call);
* `enqueue_many` of 500 jobs (throughput-bound);
* memory per pending job: `used_memory` before and after 20,000 small jobs on one server.

Figures are ratios against `redis` (one server, no replicas) of the same run: this
machine is shared, so absolute numbers drift; the ratios are what docs/scaling.md uses.

    PYTHONPATH=. .venv/bin/python bench/cluster_costs.py [--rounds 3] [--singles 1000]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
import uuid
from pathlib import Path

import redis
from tests.conftest import RedisServer
from tests.redis_topologies import ClusterServers, SentinelServers

from conveyor import Conveyor


async def rate(url: str, singles: int, batches: int) -> tuple[float, float]:
    """(single enqueues per second, batch-enqueued jobs per second) on `url`."""
    app = Conveyor(url)
    await app.connect()
    try:
        await app.enqueue("t", {"n": 0}, queue="bench")  # registry, scripts, connections
        start = time.perf_counter()
        for i in range(singles):
            await app.enqueue("t", {"n": i}, queue="bench")
        single = singles / (time.perf_counter() - start)
        start = time.perf_counter()
        for _ in range(batches):
            await app.enqueue_many(
                [{"task": "t", "queue": "bench", "payload": {"n": i}} for i in range(500)]
            )
        batch = batches * 500 / (time.perf_counter() - start)
        return single, batch
    finally:
        await app.close()


async def memory_per_job(server: RedisServer, jobs: int) -> float:
    admin = redis.Redis(port=server.port)
    before = int(admin.info("memory")["used_memory"])
    app = Conveyor(f"{server.url}?prefix=mem")
    await app.connect()
    for start in range(0, jobs, 1000):
        await app.enqueue_many(
            [
                {"task": "send_email", "queue": "mail", "payload": {"to": f"u{i}@example.com"}}
                for i in range(start, start + 1000)
            ]
        )
    await app.close()
    after = int(admin.info("memory")["used_memory"])
    return (after - before) / jobs


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--singles", type=int, default=1000)
    parser.add_argument("--batches", type=int, default=20)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="conveyor-cluster-bench-"))
    single = RedisServer(root / "single")
    single.directory.mkdir()
    cluster = ClusterServers(root / "cluster")
    sentinel = SentinelServers(root / "sentinel")
    try:
        single.start()
        cluster.start()
        sentinel.start()
        targets = {
            "redis": single.url + "?",
            "redis+cluster": cluster.url + "?",
            "redis+cluster replicas=1": cluster.url + "?replicas=1&",
            "redis+sentinel": sentinel.url + "?",
            "redis+sentinel replicas=1": sentinel.url + "?replicas=1&",
        }
        results: dict[str, list[tuple[float, float]]] = {name: [] for name in targets}
        for _ in range(args.rounds):
            for name, url in targets.items():
                prefix = f"b{uuid.uuid4().hex[:8]}"
                results[name].append(
                    await rate(f"{url}prefix={prefix}", args.singles, args.batches)
                )
        load = os.getloadavg()[0]
        print(f"load average (1 min) at the end: {load:.2f} on {os.cpu_count()} cores")
        base_single = statistics.median(r[0] for r in results["redis"])
        base_batch = statistics.median(r[1] for r in results["redis"])
        print("| engine URL | single enqueue/s | ratio | enqueue_many jobs/s | ratio |")
        print("| --- | ---: | ---: | ---: | ---: |")
        for name, rows in results.items():
            s = statistics.median(r[0] for r in rows)
            b = statistics.median(r[1] for r in rows)
            print(
                f"| {name} | {s:,.0f} | {s / base_single:.2f} | {b:,.0f} | {b / base_batch:.2f} |"
            )
        per_job = await memory_per_job(single, 20_000)
        print(f"memory per pending job (20,000 jobs, ~40-byte payload): {per_job:,.0f} bytes")
    finally:
        single.kill()
        cluster.stop()
        sentinel.stop()


if __name__ == "__main__":
    asyncio.run(main())
