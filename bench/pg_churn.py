"""Table size of the Postgres engine under churn, with retention on.

Pushes N jobs through one queue in rounds (enqueue a batch, claim it, complete it,
clean completed jobs, as the scheduler's retention does) and prints the size of the
jobs and events tables (with indexes and TOAST) every 10% and at the end.

    .venv/bin/python bench/pg_churn.py postgresql://postgres@127.0.0.1/db 1000000 [VACUUM_EVERY]

With VACUUM_EVERY, the script runs a plain VACUUM of both tables every that many jobs,
standing in for autovacuum on a server where it is off (check `SHOW autovacuum`).
"""

from __future__ import annotations

import asyncio
import sys
import time
import uuid

import psycopg

from conveyor import Conveyor
from conveyor.engines import Outcome
from conveyor.job import JobState

BATCH = 1000


async def main(base: str, total: int, vacuum_every: int = 0) -> None:
    schema = f"churn{uuid.uuid4().hex[:6]}"
    url = f"{base}?schema={schema}"
    app = Conveyor(url)
    engine = await app.connect()
    jobs = [app.build("t", {"n": i}, queue="churn") for i in range(BATCH)]
    start = time.perf_counter()
    with psycopg.connect(base, autocommit=True) as admin:
        for done in range(0, total, BATCH):
            for job in jobs:
                job.id = f"churn:{uuid.uuid4().hex}"
            await engine.enqueue(jobs)
            got = await engine.exchange([], queues=["churn"], limit=BATCH, worker_id="w",
                                        lease_ms=60_000)  # fmt: skip
            await engine.exchange(
                [Outcome(j.id, str(j.token), "complete", result_json="1") for j in got.jobs],
                queues=["churn"], limit=0, worker_id="w", lease_ms=60_000,
            )  # fmt: skip
            await engine.clean("churn", JobState.COMPLETED, 0, 10 * BATCH)
            if vacuum_every and (done + BATCH) % vacuum_every == 0:
                admin.execute(f'VACUUM "{schema}".jobs, "{schema}".events')
            if (done + BATCH) % max(BATCH, total // 10) == 0:
                row = admin.execute(
                    f"SELECT pg_total_relation_size('{schema}.jobs'), "
                    f"pg_total_relation_size('{schema}.events')"
                ).fetchone()
                assert row is not None
                rate = (done + BATCH) / (time.perf_counter() - start)
                jobs_mib, events_mib = row[0] / 2**20, row[1] / 2**20
                print(
                    f"{done + BATCH:>9} jobs  jobs table {jobs_mib:7.1f} MiB  "
                    f"events {events_mib:6.1f} MiB  {rate:,.0f} jobs/s",
                    flush=True,
                )
        admin.execute(f'DROP SCHEMA "{schema}" CASCADE')
    await app.close()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]) if sys.argv[3:] else 0))
