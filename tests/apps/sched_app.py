"""An app with one `every 1s` schedule, for scheduler processes started by tests.

Tests run `conveyor scheduler tests.apps.sched_app:app --url ...` with the repository
root on PYTHONPATH. Nothing runs the task: tests count the jobs the scheduler enqueues.
"""

from __future__ import annotations

from datetime import timedelta

from conveyor import Conveyor, Job

app = Conveyor()


@app.every(timedelta(seconds=1), name="every-second")
@app.task("sched.tick", queue="sched")
async def tick(job: Job) -> None:
    return None
