"""W1/W4 on Redis Cluster against one Redis (issue 17 point 6, the 8-queue half).

N no-op jobs (the probe task of tests/apps/probe.py, action "ok") are enqueued over 8
queues, then 1, 2 or 4 `conveyor worker --burst` processes (concurrency 50) drain them.
Reported per run: jobs/s from the first worker's start to the last one's exit, and
Redis CPU per job on each master (Δ `used_cpu_user + used_cpu_sys` of INFO, over the
drain), from which the scaling model in bench/README.md follows:

    jobs/s one master can carry  = 1 / (its CPU seconds per job)
    masters for a target rate    = target / (that figure)   (queues spread evenly)

This machine has 2 cores shared by every process here (workers and all Redis servers),
so absolute jobs/s say little; CPU per job per master is what carries over.

    PYTHONPATH=. .venv/bin/python bench/cluster_scaling.py [--jobs 8000] [--procs 1,2,4]
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
from tests.conftest import RedisServer
from tests.redis_topologies import ClusterServers

from conveyor import Conveyor

QUEUES = [f"w{i}" for i in range(8)]
ROOT = Path(__file__).resolve().parents[1]


def cpu(port: int) -> float:
    info = redis.Redis(port=port).info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


async def fill(url: str, jobs: int) -> None:
    app = Conveyor(url)
    await app.connect()
    for start in range(0, jobs, 800):
        await app.enqueue_many(
            [
                {"task": "probe", "queue": QUEUES[i % 8], "payload": {"action": "ok"}}
                for i in range(start, min(jobs, start + 800))
            ]
        )
    await app.close()


def drain(url: str, procs: int) -> float:
    """Seconds for `procs` burst workers to empty the queues."""
    start = time.perf_counter()
    workers = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "conveyor",
                "worker",
                "tests.apps.probe:app",
                "--url",
                url,
                "--queues",
                ",".join(QUEUES),
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


def run(name: str, url: str, ports: list[int], jobs: int, procs: int) -> None:
    url = f"{url}?prefix=s{uuid.uuid4().hex[:8]}"
    asyncio.run(fill(url, jobs))
    before = [cpu(p) for p in ports]
    seconds = drain(url, procs)
    used = [cpu(p) - b for p, b in zip(ports, before, strict=True)]
    per_job_us = [u / jobs * 1e6 for u in used]
    shards = " ".join(f"{us:.0f}" for us in per_job_us)
    print(
        f"| {name} | {procs} | {jobs / seconds:,.0f} | {shards} | {sum(per_job_us):.0f} |",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=8000)
    parser.add_argument("--procs", default="1,2,4")
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
        print("| engine | worker processes | jobs/s | Redis CPU µs/job per master | total |")
        print("| --- | ---: | ---: | --- | ---: |")
        for procs in (int(p) for p in args.procs.split(",")):
            run("redis (1 server)", single.url, [single.port], args.jobs, procs)
            run("redis+cluster (3 masters)", cluster.url, masters, args.jobs, procs)
        print(f"load average at end: {os.getloadavg()[0]:.2f}")
    finally:
        single.kill()
        cluster.stop()


if __name__ == "__main__":
    main()
