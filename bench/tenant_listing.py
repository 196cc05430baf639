"""How long one page of a tenant-filtered listing takes when other tenants dominate.

    .venv/bin/python bench/tenant_listing.py [--engine redis|sqlite] [--jobs 20000]

Fills one queue with `--jobs` completed jobs of tenant "big" and, spread among them,
`--jobs / 200` of tenant "small" (through the engine, as workers would: bulk enqueue,
then claim and complete), then times one page (50 jobs) of tenant "small"'s completed
jobs, of its pending jobs, and of the admin listing, through the app facade (as the
API does). Redis runs on a private redis-server on a free 127.0.0.1 port (never 6379).
Prints the median of `--runs` reads per listing. Not a test: issue 12 item 10.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

from w1_quick import start_redis  # bench/ is on sys.path when run as a script

from conveyor import Conveyor
from conveyor.engines import Outcome
from conveyor.job import JobState

QUEUE = "bench"
BATCH = 1000


async def fill(app: Conveyor, jobs: int) -> None:
    engine = await app.connect()
    for start in range(0, jobs, BATCH):
        n = min(BATCH, jobs - start)
        tenants = ["small" if (start + i) % 200 == 0 else "big" for i in range(n)]
        await engine.enqueue([app.build("t", {}, queue=QUEUE, tenant=t) for t in tenants])
        claimed = await engine.exchange(
            [], queues=[QUEUE], limit=n, worker_id="b", lease_ms=600_000
        )
        done = [Outcome(j.id, str(j.token), "complete", result_json="{}") for j in claimed.jobs]
        await engine.exchange(done, queues=[QUEUE], limit=0, worker_id="b", lease_ms=600_000)
    await engine.enqueue([app.build("t", {}, queue=QUEUE, tenant="small") for _ in range(100)])


async def timed(app: Conveyor, state: JobState, tenant: str | None, runs: int) -> float:
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        page = await app.list_jobs(QUEUE, state, tenant=tenant, limit=50)
        times.append(time.perf_counter() - t0)
        assert page.jobs, "empty page"
    return statistics.median(times)


async def main(url: str, jobs: int, runs: int) -> None:
    app = Conveyor(url)
    try:
        await fill(app, jobs)
        for label, state, tenant in [
            ("tenant 'small', completed", JobState.COMPLETED, "small"),
            ("tenant 'small', pending", JobState.PENDING, "small"),
            ("admin, completed", JobState.COMPLETED, None),
        ]:
            ms = await timed(app, state, tenant, runs) * 1000
            print(f"{label:28} {ms:8.2f} ms per page (median of {runs})")
    finally:
        await app.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engine", choices=["redis", "sqlite"], default="redis")
    parser.add_argument("--jobs", type=int, default=20_000)
    parser.add_argument("--runs", type=int, default=21)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        if args.engine == "redis":
            proc, url = start_redis(Path(tmp))
        else:
            proc, url = None, f"sqlite:///{tmp}/bench.db"
        try:
            asyncio.run(main(url, args.jobs, args.runs))
        finally:
            if proc is not None:
                proc.kill()
                proc.wait()
