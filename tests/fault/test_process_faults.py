"""Process faults on every durable engine: kill -9 chaos, a zombie worker, a full disk.

Bounded for CI by default; the release run scales them with FAULT_CHAOS_JOBS and
FAULT_CHAOS_SECONDS (docs/reliability.md has the commands and the measured table). Each
test prints one line `fault=<name> engine=<engine> jobs=.. lost=.. duplicated=..
stalled=..` that the table is made of.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
import random
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from conveyor import Conveyor, EngineUnavailable, JobState, Worker
from conveyor.testing import eventually
from tests.apps.probe import mark_counts, probe_app
from tests.conftest import SpawnWorker

pytestmark = [pytest.mark.fault, pytest.mark.slow]

CHAOS_JOBS = int(os.environ.get("FAULT_CHAOS_JOBS", "600"))
CHAOS_SECONDS = float(os.environ.get("FAULT_CHAOS_SECONDS", "8"))


marks = mark_counts


def report(
    fault: str, url: str, ids: set[str], seen: collections.Counter[tuple[str, str]], stalled: int
) -> dict[str, int]:
    engine = url.split(":", 1)[0]
    lost = sum(1 for j in ids if seen[("done", j)] == 0)
    duplicated = sum(1 for j in ids if seen[("done", j)] > 1)
    print(
        f"\nfault={fault} engine={engine} jobs={len(ids)} lost={lost} "
        f"duplicated={duplicated} stalled={stalled}"
    )
    return {"lost": lost, "duplicated": duplicated, "stalled": stalled}


async def test_kill_9_chaos_loses_no_job(
    app: Conveyor, durable_url: str, spawn_worker: SpawnWorker, tmp_path: Path
) -> None:
    """Three workers SIGKILLed at random every 1-2 s (each replaced at once) while they
    run CHAOS_JOBS jobs: every job completes (at least once), none is lost."""
    mark = tmp_path / "marks"
    flags = ("--concurrency", "10", "--lease-timeout", "1")
    # Enough work to outlast the chaos: 30 slots busy for about 80% of CHAOS_SECONDS.
    seconds = min(0.5, CHAOS_SECONDS * 24 / CHAOS_JOBS)
    payload = {"action": "sleep", "seconds": seconds, "mark": str(mark)}
    jobs = await app.enqueue_many([{"task": "probe", "payload": payload}] * CHAOS_JOBS)
    ids = {j.id for j in jobs}
    workers = [spawn_worker(durable_url, *flags, queues="probe") for _ in range(3)]
    rng = random.Random(13)
    kills = 0
    deadline = time.monotonic() + CHAOS_SECONDS
    while time.monotonic() < deadline:
        await asyncio.sleep(rng.uniform(1.0, 2.0))
        victim = rng.randrange(len(workers))
        workers[victim].kill()  # SIGKILL: no cleanup, its leases are left behind
        workers[victim].wait()
        kills += 1
        workers[victim] = spawn_worker(durable_url, *flags, queues="probe")

    async def all_completed() -> bool:
        return (await app.counts("probe")).completed == CHAOS_JOBS

    with contextlib.suppress(AssertionError):
        await eventually(all_completed, timeout=60 + CHAOS_JOBS / 50, interval=0.2)
    counts = await app.counts("probe")
    stalled = CHAOS_JOBS - counts.completed  # not completed within the wait
    result = report("kill-9-chaos", durable_url, ids, marks(mark), stalled)
    print(f"  {kills} SIGKILLs over {CHAOS_SECONDS:g}s")
    assert kills >= 3
    assert result["lost"] == 0 and result["stalled"] == 0, result


async def test_a_zombie_worker_is_fenced(
    app: Conveyor, durable_url: str, spawn_worker: SpawnWorker, tmp_path: Path
) -> None:
    """A worker SIGSTOPped past its lease: its job is recovered and run by another
    worker; when the zombie wakes up, its result is rejected (the token fences it)."""
    mark = tmp_path / "marks"
    job = await app.enqueue("probe", {"action": "sleep", "seconds": 3, "mark": str(mark)})
    zombie = spawn_worker(durable_url, "--concurrency", "1", "--lease-timeout", "1", queues="probe")

    async def started() -> bool:
        return marks(mark)[("start", job.id)] == 1

    await eventually(started, timeout=30, message="the job started on the first worker")
    zombie.send_signal(signal.SIGSTOP)
    try:
        spawn_worker(durable_url, "--concurrency", "1", "--lease-timeout", "1", queues="probe")

        async def completed() -> bool:
            return (await app.get_job(job.id)).state is JobState.COMPLETED

        await eventually(completed, timeout=30, message="another worker completed the job")
    finally:
        zombie.send_signal(signal.SIGCONT)
    done = await app.get_job(job.id)
    assert done.attempt == 2 and done.result == {"action": "sleep", "attempt": 2}
    await asyncio.sleep(0)  # the zombie's late outcome, if any, arrives after this point

    async def zombie_heard_back() -> bool:  # it logs the lost lease once it runs again
        return zombie.poll() is None

    await eventually(zombie_heard_back, message="the zombie is still running")
    stored = await app.get_job(job.id)
    assert (stored.state, stored.attempt, stored.result) == (
        JobState.COMPLETED,
        2,
        {"action": "sleep", "attempt": 2},
    ), "the zombie's result was fenced"
    report("zombie", durable_url, {job.id}, marks(mark), 0)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 4 MB tmpfs (root only: skipped elsewhere)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    made = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)], capture_output=True
    )
    if made.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {made.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


async def test_sqlite_disk_full_is_engine_unavailable_then_drains(small_disk: Path) -> None:
    """The disk fills up: producers get EngineUnavailable (nothing half-written); once
    space is freed, enqueueing resumes and every accepted job runs."""
    app = probe_app(f"sqlite:///{small_disk / 'conveyor.db'}")
    await app.connect()
    filler = small_disk / "filler"
    accepted: set[str] = set()
    with filler.open("wb") as f:
        f.write(b"\0" * (3 * 1024 * 1024))

    async def fill() -> None:
        for _ in range(10_000):
            accepted.add((await app.enqueue("probe", {"blob": "x" * 2000})).id)

    with pytest.raises(EngineUnavailable):
        await fill()
    assert accepted, "some jobs fit before the disk filled"
    filler.unlink()
    accepted.add((await app.enqueue("probe", {})).id)  # space again: accepted
    await asyncio.wait_for(Worker(app, queues=("probe",), burst=True).run(), 60)
    counts = await app.counts("probe")
    assert counts.completed == len(accepted) and counts.pending == 0
    report(
        "disk-full", app.url, accepted, collections.Counter({("done", j): 1 for j in accepted}), 0
    )
    await app.close()
