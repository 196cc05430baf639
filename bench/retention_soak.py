"""Retention soak (issue 13, item 2): does Redis memory stay flat once retention is reached,
with workers cleaning up and no scheduler process?

Not a CI test (it runs for minutes and measures). It starts a private redis-server on a
free port (never 6379), then:

1. Memory per job: used_memory before and after 10,000 pending probe jobs, and after a
   worker completed them (result stored, index entries, events).
2. Soak: WORKERS `conveyor worker` processes with `--keep-completed KEEP` (no scheduler)
   while a producer enqueues at up to RATE jobs/s (it backs off when more than 5,000 are
   pending, so a slow machine measures retention, not a backlog). Every 5 s it prints
   Redis used_memory and the completed jobs still stored.

    .venv/bin/python bench/retention_soak.py --seconds 180 --rate 400 --keep 20
    .venv/bin/python bench/retention_soak.py ... | tee bench/retention_soak.txt

The summary compares memory over the second half of the run (retention long reached):
flat means the slope is about 0 and the completed jobs stay near rate x (keep + pass
interval).
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import redis

from conveyor import Worker

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the probe app lives in tests/ (not installed)
from tests.apps.probe import probe_app  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_redis(directory: Path) -> tuple[subprocess.Popen[bytes], int]:
    server = shutil.which("redis-server")
    if server is None:
        raise SystemExit("redis-server is not on PATH")
    port = free_port()
    proc = subprocess.Popen(
        [
            *(server, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(directory)),
            *("--save", "", "--appendonly", "no"),
        ],
        stdout=subprocess.DEVNULL,
    )
    client = redis.Redis(port=port)
    for _ in range(100):
        try:
            client.ping()
            return proc, port
        except redis.ConnectionError:
            time.sleep(0.05)
    raise SystemExit("redis-server did not start")


def used(client: redis.Redis) -> int:
    return int(client.info("memory")["used_memory"])


async def per_job(url: str, client: redis.Redis, n: int = 10_000) -> tuple[float, float]:
    """(bytes per pending job, bytes per completed job)."""
    app = probe_app(url)
    await app.connect()
    base = used(client)
    await app.enqueue_many([{"task": "probe", "payload": {"action": "ok"}}] * n)
    pending = (used(client) - base) / n
    await Worker(app, queues=("probe",), burst=True, concurrency=50).run()
    completed = (used(client) - base) / n
    await app.purge("probe")
    await app.close()
    return pending, completed


def start_workers(url: str, args: argparse.Namespace) -> list[subprocess.Popen[bytes]]:
    """Worker processes that clean their queue themselves (no scheduler runs)."""
    return [
        subprocess.Popen(
            [
                *(sys.executable, "-m", "conveyor", "worker", "tests.apps.probe:app"),
                *("--url", url, "--queues", "probe", "--concurrency", "50"),
                *("--health-port", "0", "--keep-completed", f"{args.keep}s"),
                *("--log-level", "WARNING"),
            ],
            cwd=ROOT,
        )
        for _ in range(args.workers)
    ]


async def soak(
    url: str, client: redis.Redis, args: argparse.Namespace
) -> list[tuple[float, int, int]]:
    """Run the producer against the workers; returns (t, used_memory, completed) samples."""
    app = probe_app(url)
    await app.connect()
    samples: list[tuple[float, int, int]] = []
    start = time.monotonic()
    next_sample = start
    enqueued = 0
    try:
        while (now := time.monotonic()) - start < args.seconds:
            counts = await app.counts("probe")
            if counts.pending < 5_000:
                batch = max(1, int(args.rate / 10))
                await app.enqueue_many([{"task": "probe", "payload": {"action": "ok"}}] * batch)
                enqueued += batch
            if now >= next_sample:
                samples.append((now - start, used(client), counts.completed))
                print(
                    f"t={now - start:6.1f}s used_memory={used(client) / 1e6:7.2f} MB "
                    f"completed_stored={counts.completed:7d} pending={counts.pending:6d} "
                    f"enqueued={enqueued}",
                    flush=True,
                )
                next_sample += 5
            await asyncio.sleep(max(0.0, 0.1 - (time.monotonic() - now)))
    finally:
        await app.close()
    print(f"enqueued {enqueued} jobs in {args.seconds:g}s ({enqueued / args.seconds:.0f} jobs/s)")
    return samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=180)
    parser.add_argument("--rate", type=float, default=400, help="jobs/s the producer aims at")
    parser.add_argument("--keep", type=float, default=20, help="--keep-completed, seconds")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        proc, port = start_redis(Path(tmp))
        url = f"redis://127.0.0.1:{port}/0"
        client = redis.Redis(port=port)
        try:
            pending, completed = asyncio.run(per_job(url, client))
            print(f"memory per job: {pending:.0f} B pending, {completed:.0f} B completed")
            workers = start_workers(url, args)
            try:
                samples = asyncio.run(soak(url, client, args))
            finally:
                for w in workers:
                    w.terminate()
                for w in workers:
                    w.wait(30)
        finally:
            proc.terminate()
            proc.wait(10)
    late = [s for s in samples if s[0] >= args.seconds / 2]
    if len(late) >= 2:
        mem = [m for _, m, _ in late]
        t0, t1 = late[0][0], late[-1][0]
        slope = (late[-1][1] - late[0][1]) / (t1 - t0) * 60 / 1e6
        print(
            f"second half: used_memory min {min(mem) / 1e6:.2f} MB, max {max(mem) / 1e6:.2f} "
            f"MB, median {statistics.median(mem) / 1e6:.2f} MB, end-to-end slope "
            f"{slope:+.3f} MB/min; completed jobs stored {min(c for *_, c in late)}.."
            f"{max(c for *_, c in late)}"
        )


if __name__ == "__main__":
    main()
