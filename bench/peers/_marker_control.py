"""Marker-only control for the Python runtime: the completion marker with no queue library.

    python -m peers._marker_control      (BENCH_MARKER_N jobs, BENCH_CONCURRENCY tasks)

`BENCH_CONCURRENCY` asyncio tasks each call `mark_done_async(0, 0)` — the very code every
async Python peer's handler ends with — until `BENCH_MARKER_N` markers are done, then the
process waits to be killed like a worker. Its rate is the most a Python worker could reach at
that concurrency if its own queue work were free: the ceiling the marker puts on every
Python row (`bench/protocol.py`, "marker-only control"). peers/bullmq_node/marker.js is the
same for Node.
"""

from __future__ import annotations

import asyncio
import os

from peers._common import concurrency, mark_done_async


async def main() -> None:
    total = int(os.environ["BENCH_MARKER_N"])
    left = total

    async def loop() -> None:
        nonlocal left
        while left > 0:
            left -= 1  # claimed before the await: the tasks share one counter
            await mark_done_async(0, 0)

    await asyncio.gather(*(loop() for _ in range(concurrency())))
    await asyncio.Event().wait()  # stay up like a worker; the harness kills the group


if __name__ == "__main__":
    asyncio.run(main())
