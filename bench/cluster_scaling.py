"""W1/W4 on Redis Cluster against one Redis (issue 17 point 6).

N no-op jobs (the probe task of tests/apps/probe.py, action "ok") are enqueued, then 1,
2 or 4 `conveyor worker --burst` processes (concurrency 50) drain them. Two shapes:

* `8 queues`: the jobs spread over 8 ordinary queues (each queue lives in one slot);
* `1 queue, 8 partitions`: one queue declared with `partitions=8`
  (tests/apps/partitioned.py), whose partitions spread over the slots. The partitions
  land on masters by the hash of their tags, so each row says how many partitions
  each master holds.

Reported per run: jobs/s from the first worker's start to the last one's exit, and
Redis CPU per job on each master (Δ `used_cpu_user + used_cpu_sys` of INFO, over the
drain), from which the scaling model in bench/README.md follows:

    jobs/s one master can carry  = 1 / (its CPU seconds per job)
    masters for a target rate    = target / (that figure)   (queues spread evenly)

This machine has 2 cores shared by every process here (workers and all Redis servers),
so absolute jobs/s say little; CPU per job per master is what carries over.

    PYTHONPATH=. .venv/bin/python bench/cluster_scaling.py [--jobs 8000] [--procs 1,2,4] \
        [--shapes queues,partitioned]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import redis
from tests.apps.partitioned import PARTITIONS
from tests.apps.probe import PROBE_QUEUE, probe_app
from tests.conftest import RedisServer
from tests.redis_topologies import ClusterServers

from conveyor import Conveyor
from conveyor.partitions import layout

QUEUES = [f"w{i}" for i in range(8)]
ROOT = Path(__file__).resolve().parents[1]
# shape -> (worker app, queues it serves, queue of job i)
SHAPES = {
    "queues": ("tests.apps.probe:app", ",".join(QUEUES), lambda i: QUEUES[i % 8]),
    "partitioned": ("tests.apps.partitioned:app", PROBE_QUEUE, lambda i: PROBE_QUEUE),
}
LABELS = {"queues": "8 queues", "partitioned": f"1 queue, {PARTITIONS} partitions"}


def cpu(port: int) -> float:
    info = redis.Redis(port=port).info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def commands(port: int) -> int:
    """Script calls the server has run (EVALSHA, EVAL, FCALL; the commands a script
    runs inside are not counted): the round trips the hot path pays, which, unlike CPU
    time, the load of other processes on the machine does not skew."""
    stats = redis.Redis(port=port).info("commandstats")
    return sum(
        int(stats.get(f"cmdstat_{name}", {}).get("calls", 0))
        for name in ("evalsha", "eval", "fcall")
    )


async def fill(url: str, jobs: int, shape: str) -> None:
    app = probe_app(url)
    if shape == "partitioned":
        app.limits(PROBE_QUEUE, partitions=PARTITIONS)
    queue_of = SHAPES[shape][2]
    await app.connect()
    for start in range(0, jobs, 800):
        await app.enqueue_many(
            [
                {"task": "probe", "queue": queue_of(i), "payload": {"action": "ok"}}
                for i in range(start, min(jobs, start + 800))
            ]
        )
    await app.close()


def placement(cluster: ClusterServers | None, prefix: str, masters: list[int]) -> str:
    """Partitions per master (in `masters` order) of the partitioned queue."""
    if cluster is None:
        return str(PARTITIONS)
    owners = [cluster.owner(f"{{{prefix}:{name}}}")[0] for name in layout(PROBE_QUEUE, PARTITIONS)]
    return "/".join(str(owners.count(port)) for port in masters)


def drain(url: str, procs: int, shape: str) -> float:
    """Seconds for `procs` burst workers to empty the queues."""
    start = time.perf_counter()
    workers = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "conveyor",
                "worker",
                SHAPES[shape][0],
                "--url",
                url,
                "--queues",
                SHAPES[shape][1],
                "--concurrency",
                "50",
                "--burst",
                "--health-port",
                "0",
                "--log-level",
                "ERROR",
            ],
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for _ in range(procs)
    ]
    for w in workers:
        w.wait(600)
    return time.perf_counter() - start


def run(
    name: str,
    url: str,
    ports: list[int],
    jobs: int,
    procs: int,
    shape: str,
    cluster: ClusterServers | None = None,
) -> None:
    prefix = f"s{uuid.uuid4().hex[:8]}"
    url = f"{url}?prefix={prefix}"
    asyncio.run(fill(url, jobs, shape))
    before = [cpu(p) for p in ports]
    calls_before = sum(commands(p) for p in ports)
    seconds = drain(url, procs, shape)
    used = [cpu(p) - b for p, b in zip(ports, before, strict=True)]
    calls = sum(commands(p) for p in ports) - calls_before
    left = asyncio.run(pending(url))
    per_job_us = [u / jobs * 1e6 for u in used]
    shards = " ".join(f"{us:.0f}" for us in per_job_us)
    spread = placement(cluster, prefix, ports) if shape == "partitioned" else "-"
    print(
        f"| {name} | {LABELS[shape]} | {spread} | {procs} | {jobs / seconds:,.0f} | {shards} "
        f"| {sum(per_job_us):.0f} | {calls / jobs:.2f} |" + (f" {left} LEFT" if left else ""),
        flush=True,
    )


async def pending(url: str) -> int:
    """Jobs not completed after the drain (0, or the run is wrong)."""
    app = Conveyor(url)
    await app.connect()
    try:
        names = await app.queue_names()
        counts = [await app.counts(name) for name in names]
        return sum(c.scheduled + c.pending + c.running + c.failed for c in counts)
    finally:
        await app.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=8000)
    parser.add_argument("--procs", default="1,2,4")
    parser.add_argument("--shapes", default="queues,partitioned")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="conveyor-cluster-scaling-"))
    single = RedisServer(root / "single")
    single.directory.mkdir()
    cluster = ClusterServers(root / "cluster")
    try:
        single.start()
        cluster.start()
        masters = sorted(cluster.master_ports())
        print(f"load average at start: {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")
        print(
            "| engine | shape | partitions per master | worker processes | jobs/s "
            "| Redis CPU µs/job per master | total | script calls/job |"
        )
        print("| --- | --- | --- | ---: | ---: | --- | ---: | ---: |")
        for shape in args.shapes.split(","):
            for procs in (int(p) for p in args.procs.split(",")):
                run("redis (1 server)", single.url, [single.port], args.jobs, procs, shape)
                run(
                    "redis+cluster (3 masters)",
                    cluster.url,
                    masters,
                    args.jobs,
                    procs,
                    shape,
                    cluster,
                )
        print(f"load average at end: {os.getloadavg()[0]:.2f}")
    finally:
        single.kill()
        cluster.stop()


if __name__ == "__main__":
    main()
