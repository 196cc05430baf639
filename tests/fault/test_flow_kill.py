"""Flows under kill -9 (issue 18): workers SIGKILLed at random while they run flows of
one parent and FLOWS_CHILDREN children each; every parent is released exactly once,
runs after all of its children, and completes, on every durable engine.

Bounded by default (FAULT_FLOWS=20 flows); the must-show run is 200 flows of 10:

    FAULT_FLOWS=200 .venv/bin/pytest -m fault -p no:cacheprovider -s tests/fault/test_flow_kill.py

(docs/reliability.md). At-least-once still holds for the parent's own execution: a worker
killed while it runs the parent makes the parent run again, as attempt 2. What the flow
adds, and what is asserted, is that the release itself happens once: a parent runs again
only after the worker running it was SIGKILLed (every earlier start was on a killed worker),
and no parent attempt starts before its last child has finished.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import time
from pathlib import Path

import pytest

from conveyor import Conveyor, JobState
from conveyor.testing import eventually
from tests.apps.probe import mark_lines
from tests.conftest import SpawnWorker

pytestmark = [pytest.mark.fault, pytest.mark.slow]

FLOWS = int(os.environ.get("FAULT_FLOWS", "20"))
FLOWS_CHILDREN = int(os.environ.get("FAULT_FLOWS_CHILDREN", "10"))


def runs(path: Path) -> dict[str, list[tuple[str, int, int, float]]]:
    """job id -> its probe marks (phase, attempt, worker pid, unix time), in file order."""
    out: dict[str, list[tuple[str, int, int, float]]] = {}
    for phase, job_id, attempt, pid, at, *_ in mark_lines(path):
        out.setdefault(job_id, []).append((phase, int(attempt), int(pid), float(at)))
    return out


async def test_sigkilled_workers_release_every_parent_once_after_its_children(
    app: Conveyor, durable_url: str, spawn_worker: SpawnWorker, tmp_path: Path
) -> None:
    mark = tmp_path / "marks"
    child = {"task": "probe", "payload": {"action": "sleep", "seconds": 0.1, "mark": str(mark)}}
    parents = [
        await app.flow(
            {"task": "probe", "payload": {"action": "sleep", "seconds": 0.05, "mark": str(mark)}},
            [child] * FLOWS_CHILDREN,
        )
        for _ in range(FLOWS)
    ]
    kids = {p.id: (await (await app.connect()).flow_links(p.id)).children for p in parents}
    flags = ("--concurrency", "10", "--lease-timeout", "1")
    workers = [spawn_worker(durable_url, *flags, queues="probe") for _ in range(3)]
    rng = random.Random(18)
    kills = 0
    killed: set[int] = set()

    async def all_parents_done() -> bool:
        counts = await app.counts("probe")
        return counts.completed == FLOWS * (FLOWS_CHILDREN + 1)

    deadline = time.monotonic() + 120 + FLOWS * FLOWS_CHILDREN / 10
    while time.monotonic() < deadline and not await all_parents_done():
        await asyncio.sleep(rng.uniform(0.3, 1.0))
        victim = rng.randrange(len(workers))
        workers[victim].kill()  # SIGKILL: no cleanup, its leases are left behind
        workers[victim].wait()
        killed.add(workers[victim].pid)
        kills += 1
        workers[victim] = spawn_worker(durable_url, *flags, queues="probe")
    with contextlib.suppress(AssertionError):
        await eventually(all_parents_done, timeout=60, interval=0.2)

    seen = runs(mark)
    reruns = duplicated = early = unexplained = not_done = 0
    for parent in parents:
        job = await app.get_job(parent.id)
        not_done += job.state is not JobState.COMPLETED
        marks = seen.get(parent.id, [])
        starts = [(pid, t) for phase, _, pid, t in marks if phase == "start"]
        reruns += len(starts) > 1
        duplicated += sum(1 for m in marks if m[0] == "done") > 1
        # A parent runs again only because the worker running it was SIGKILLed: every
        # start but the last must be on a killed worker. A second release would show
        # as a rerun on a worker that was never killed.
        unexplained += sum(1 for pid, _ in starts[:-1] if pid not in killed)
        last_child = max(t for k in kids[parent.id] for phase, _, _, t in seen.get(k, [])
                         if phase == "done")  # fmt: skip
        early += any(t < last_child for _, t in starts)
    engine = durable_url.split(":", 1)[0]
    print(
        f"\nfault=flow-kill-9 engine={engine} flows={FLOWS}x{FLOWS_CHILDREN} kills={kills} "
        f"not_completed={not_done} unexplained_rerun={unexplained} early={early} "
        f"parent_reruns_after_kill={reruns} parent_duplicated={duplicated}"
    )
    assert kills >= 2
    assert (not_done, unexplained, early) == (0, 0, 0)
