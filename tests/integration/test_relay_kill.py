"""The relay SIGKILLed again and again while rows are written and relayed: every row
still becomes exactly one job.

The issue's must-show run is 10,000 rows and 20 kills; the suite runs 3,000 rows and 8
kills to stay quick. Run the full one with
``RELAY_KILL_ROWS=10000 RELAY_KILLS=20 .venv/bin/pytest tests/integration/test_relay_kill.py``.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

from conveyor import Conveyor, JobState
from conveyor.engines import open_engine
from conveyor.engines.postgres import PostgresEngine, parse_postgres_url
from conveyor.testing import eventually

pytestmark = [pytest.mark.redis, pytest.mark.slow]

ROWS = int(os.environ.get("RELAY_KILL_ROWS", "3000"))
KILLS = int(os.environ.get("RELAY_KILLS", "8"))
ROOT = Path(__file__).resolve().parents[2]


def start_relay(source: str, target: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "conveyor", "relay", "tests.apps.sched_app:app",
         "--from", source, "--to", target, "--health-port", "0", "--log-level", "ERROR"],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip


async def test_sigkilled_relays_turn_every_row_into_exactly_one_job(
    postgres_url: str, redis_url: str
) -> None:
    app = Conveyor(redis_url)

    @app.task("mail", queue="q")
    async def mail(job: object) -> None:
        return None

    source = open_engine(postgres_url)
    assert isinstance(source, PostgresEngine)
    await source.connect()
    await app.connect()

    async def write_rows() -> None:
        async with await psycopg.AsyncConnection.connect(parse_postgres_url(postgres_url)[0]) as c:
            for start in range(0, ROWS, 100):
                await source.outbox_add_in(
                    c, [app.build("mail", {"i": i}) for i in range(start, min(ROWS, start + 100))]
                )
                await c.commit()
                await asyncio.sleep(0.01)  # spread the writes over the kills

    writer = asyncio.create_task(write_rows())
    procs = []
    try:
        for _ in range(KILLS):
            before = (await app.counts("q")).pending
            proc = start_relay(postgres_url, redis_url)
            procs.append(proc)

            async def progressed(before: int = before) -> bool:
                return (await app.counts("q")).pending > before or (
                    writer.done() and await source.outbox_lag_ms() is None
                )

            await eventually(progressed, timeout=60)
            proc.send_signal(signal.SIGKILL)  # mid-stream: between any two steps
            proc.wait(10)
        await writer
        procs.append(start_relay(postgres_url, redis_url))

        async def drained() -> bool:
            return await source.outbox_lag_ms() is None

        await eventually(drained, timeout=120)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.terminate()
                proc.wait(10)
        await source.close()
    counts = await app.counts("q")
    page = await app.list_jobs("q", JobState.PENDING, limit=ROWS + 10)
    seen = [job.payload["i"] for job in page.jobs]
    await app.close()
    assert counts.pending == ROWS and sorted(seen) == list(range(ROWS)), "each row, once"
