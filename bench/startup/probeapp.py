"""The probe app of bench/startup: one task that writes when it ran (CLOCK_MONOTONIC, which
the parent's perf_counter shares) and the process's CPU time, then, with PROBE_EXIT set,
ends the process so a measure stops at the first job."""

import os
import time
from pathlib import Path

from conveyor import Conveyor, Job

app = Conveyor(os.environ.get("PROBE_URL", "redis://127.0.0.1:6379"))


@app.task("one", queue="q")
async def one(job: Job) -> None:
    # A tiny synchronous write on purpose: the measure ends here.
    Path(  # noqa: ASYNC240
        os.environ["PROBE_OUT"]
    ).write_text(f"{time.perf_counter()} {time.process_time()}")
    if os.environ.get("PROBE_EXIT"):
        os._exit(0)
