"""W1 quick check: 20,000 noop jobs pre-enqueued, then ONE worker (concurrency 50).

Not the peer benchmark (`bench/run`): an in-process worker in burst mode, timed from
`Worker.run()` to the moment the queue is empty, to catch regressions of the hot path
(no limits, no tenant) quickly. Prints jobs/s per run and the median.

    .venv/bin/python bench/w1_quick.py --engine redis --runs 3
    .venv/bin/python bench/w1_quick.py --engine sqlite --runs 3
    # compare against another checkout of the source:
    PYTHONPATH=/tmp/conveyor_base/src .venv/bin/python bench/w1_quick.py --engine redis

`--engine redis` starts a private redis-server on a free port (never 6379).
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import socket
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import conveyor
from conveyor import Conveyor, Job, Worker


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_redis(directory: Path) -> tuple[subprocess.Popen[bytes], str]:
    server = shutil.which("redis-server")
    if server is None:
        raise SystemExit("redis-server is not on PATH")
    port = free_port()
    proc = subprocess.Popen(
        [server, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", str(directory)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return proc, f"redis://127.0.0.1:{port}/0"
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise SystemExit("redis-server did not start")


async def one_run(url: str, jobs: int, concurrency: int) -> float:
    app = Conveyor(url)

    @app.task("noop", queue="bench", max_attempts=1)
    async def noop(job: Job) -> None:
        return None

    await app.purge("bench")
    for start in range(0, jobs, 1000):
        await app.enqueue_many(
            [{"task": "noop", "payload": {"i": i}} for i in range(start, min(jobs, start + 1000))]
        )
    assert (await app.counts("bench")).pending == jobs
    worker = Worker(app, queues=("bench",), concurrency=concurrency, burst=True)
    t0 = time.perf_counter()
    await worker.run()
    elapsed = time.perf_counter() - t0
    done = (await app.counts("bench")).completed
    await app.purge("bench")
    await app.close()
    assert done == jobs, f"only {done} of {jobs} completed"
    return jobs / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engine", choices=("redis", "sqlite"), default="redis")
    parser.add_argument("--jobs", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="w1-") as tmp:
        proc = None
        if args.engine == "redis":
            proc, url = start_redis(Path(tmp))
        else:
            url = f"sqlite:///{tmp}/w1.db"
        try:
            rates = []
            for run in range(args.runs):
                rate = asyncio.run(one_run(url, args.jobs, args.concurrency))
                rates.append(rate)
                print(f"run {run + 1}: {rate:,.0f} jobs/s", flush=True)
        finally:
            if proc is not None:
                proc.kill()
                proc.wait(10)
    print(
        f"W1 {args.engine} ({args.jobs:,} noop jobs, 1 worker, concurrency "
        f"{args.concurrency}; conveyor from {Path(conveyor.__file__).parent}): "
        f"median {statistics.median(rates):,.0f} jobs/s"
    )


if __name__ == "__main__":
    main()
