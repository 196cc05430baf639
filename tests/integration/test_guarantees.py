"""The guarantees of docs/DESIGN.md ("Guarantees"), tested with real worker processes
and real signals.

Each test runs `conveyor worker tests.apps.probe:app` as a subprocess against a real
SQLite file or a private redis-server, and kills it the way production does.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from conveyor import Conveyor, JobState
from conveyor.testing import eventually
from tests.apps.probe import mark_counts
from tests.conftest import ROOT

pytestmark = [pytest.mark.slow, pytest.mark.fault]  # the fault suite: docs/reliability.md


class WorkerProcess:
    def __init__(self, url: str, *args: str) -> None:
        cmd = [
            sys.executable,
            "-m",
            "conveyor",
            "worker",
            "tests.apps.probe:app",
            "--url",
            url,
            "--queues",
            "probe",
            "--health-port",
            "0",  # several workers run at once: no fixed port
            *args,
        ]
        # Output goes to a file, not a pipe: a pipe nobody reads can fill and stall it.
        self.log = tempfile.NamedTemporaryFile(prefix="worker-", suffix=".log", delete=False)  # noqa: SIM115
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, cwd=ROOT)

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def wait(self, timeout: float = 30) -> int:
        return self.proc.wait(timeout)

    def output(self) -> str:
        return Path(self.log.name).read_text(errors="replace")

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


@pytest.fixture
def workers() -> Iterator[list[WorkerProcess]]:
    started: list[WorkerProcess] = []
    yield started
    for w in started:
        w.kill()
        print(f"--- worker pid {w.proc.pid} exit {w.proc.returncode}:\n{w.output()}")


marks = mark_counts


async def state_counts(app: Conveyor) -> dict[str, int]:
    c = await app.counts("probe")
    return {
        "pending": c.pending,
        "running": c.running,
        "completed": c.completed,
        "failed": c.failed,
        "scheduled": c.scheduled,
    }


async def test_sigkilled_worker_loses_no_job(
    app: Conveyor, durable_url: str, tmp_path: Path, workers: list[WorkerProcess]
) -> None:
    """Guarantees 1 and 2: 1,000 jobs, kill -9 mid-run, a second worker finishes all."""
    mark = tmp_path / "marks"
    jobs = await app.enqueue_many(
        [
            {"task": "probe", "payload": {"action": "sleep", "seconds": 0.02, "mark": str(mark)}}
            for _ in range(1000)
        ]
    )
    ids = {j.id for j in jobs}
    first = WorkerProcess(durable_url, "--concurrency", "20", "--lease-timeout", "2")
    workers.append(first)

    async def some_done() -> bool:
        return (await state_counts(app))["completed"] >= 200

    await eventually(some_done, timeout=60, message="first worker completed 200 jobs")
    first.kill()  # SIGKILL: no cleanup, its leases are left behind
    killed_at = time.monotonic()
    held = (await state_counts(app))["running"]
    assert held > 0, "the worker was killed mid-run, holding jobs"

    second = WorkerProcess(durable_url, "--concurrency", "20", "--lease-timeout", "2")
    workers.append(second)
    recovered_at: list[float] = []

    async def all_done() -> bool:
        counts = await state_counts(app)
        if not recovered_at and counts["running"] <= 20 and counts["pending"] == 0:
            recovered_at.append(time.monotonic())
        return counts["completed"] == 1000

    await eventually(all_done, timeout=120, interval=0.1, message="all 1,000 jobs completed")
    seen = marks(mark)
    assert all(seen[("done", job_id)] >= 1 for job_id in ids), "every side effect happened"
    stalled = [j for j in ids if seen[("start", j)] > 1]
    assert len(stalled) >= 1, "the killed worker's jobs ran again"
    for job_id in stalled[:50]:
        job = await app.get_job(job_id)
        assert job.state == JobState.COMPLETED and job.attempt >= 2
    second.signal(signal.SIGTERM)
    assert second.wait() == 0
    print(
        f"\nkilled worker held {held} jobs; {len(stalled)} re-run; all recovered within "
        f"{(recovered_at or [time.monotonic()])[0] - killed_at:.1f}s (lease 2s)"
    )


async def test_sigterm_lets_in_flight_jobs_finish(
    app: Conveyor, durable_url: str, tmp_path: Path, workers: list[WorkerProcess]
) -> None:
    """Guarantee 4: SIGTERM waits for in-flight jobs, then exits 0."""
    mark = tmp_path / "marks"
    jobs = await app.enqueue_many(
        [
            {"task": "probe", "payload": {"action": "sleep", "seconds": 1, "mark": str(mark)}}
            for _ in range(4)
        ]
    )
    w = WorkerProcess(durable_url, "--concurrency", "4", "--shutdown-timeout", "20")
    workers.append(w)

    async def all_started() -> bool:
        return sum(1 for (phase, _), n in marks(mark).items() if phase == "start") == 4

    await eventually(all_started, timeout=30, message="4 jobs started")
    w.signal(signal.SIGTERM)
    assert w.wait(30) == 0, w.output()
    for job in jobs:
        assert (await app.get_job(job.id)).state == JobState.COMPLETED


async def test_sigterm_past_timeout_hands_jobs_back_unspent(
    app: Conveyor, durable_url: str, tmp_path: Path, workers: list[WorkerProcess]
) -> None:
    """Guarantee 4: past the shutdown timeout, jobs go back to pending, attempt not spent."""
    mark = tmp_path / "marks"
    jobs = await app.enqueue_many(
        [
            {"task": "probe", "payload": {"action": "sleep", "seconds": 60, "mark": str(mark)}}
            for _ in range(3)
        ]
    )
    w = WorkerProcess(durable_url, "--concurrency", "3", "--shutdown-timeout", "0.5")
    workers.append(w)

    async def all_started() -> bool:
        return sum(1 for (phase, _), n in marks(mark).items() if phase == "start") == 3

    await eventually(all_started, timeout=30, message="3 jobs started")
    t0 = time.monotonic()
    w.signal(signal.SIGTERM)
    assert w.wait(30) == 0, w.output()
    assert time.monotonic() - t0 < 10
    for job in jobs:
        stored = await app.get_job(job.id)
        assert stored.state == JobState.PENDING and stored.attempt == 0 and stored.errors == []


async def test_second_signal_exits_at_once(
    app: Conveyor, durable_url: str, tmp_path: Path, workers: list[WorkerProcess]
) -> None:
    mark = tmp_path / "marks"
    await app.enqueue("probe", {"action": "sleep", "seconds": 60, "mark": str(mark)})
    w = WorkerProcess(durable_url, "--shutdown-timeout", "60")
    workers.append(w)

    async def started() -> bool:
        return bool(marks(mark))

    await eventually(started, timeout=30, message="job started")
    w.signal(signal.SIGTERM)

    async def draining() -> bool:  # the first signal was handled: it logs that it stops
        return "stopping: no new claims" in w.output()

    await eventually(draining, timeout=30, message="worker began its graceful shutdown")
    w.signal(signal.SIGINT)
    assert w.wait(5) != 0  # exited at once, without waiting 60 s


async def test_job_that_kills_its_worker_every_time_ends_failed(
    app: Conveyor, durable_url: str, tmp_path: Path, workers: list[WorkerProcess]
) -> None:
    """Guarantee 3: attempts are counted at claim, so a crash loop ends."""
    mark = tmp_path / "marks"
    ok = await app.enqueue("probe", {"action": "ok", "mark": str(mark)})
    bomb = await app.enqueue("probe", {"action": "crash", "mark": str(mark)}, max_attempts=3)
    crashes = 0
    deadline = time.monotonic() + 90
    while (await app.get_job(bomb.id)).state != JobState.FAILED:
        assert time.monotonic() < deadline, "crash loop did not end"
        w = WorkerProcess(durable_url, "--lease-timeout", "0.5", "--concurrency", "1")
        workers.append(w)
        try:
            code = w.wait(10)
        except subprocess.TimeoutExpired:  # it found nothing to crash on: stop it
            w.signal(signal.SIGTERM)
            code = w.wait(10)
        if code == -signal.SIGKILL:
            crashes += 1
    job = await app.get_job(bomb.id)
    assert crashes == 3 and job.attempt == 3
    assert job.last_error is not None and job.last_error.type == "LeaseExpired"
    assert "worker lost while running attempt 3" in job.last_error.message
    assert (await app.get_job(ok.id)).state == JobState.COMPLETED  # others unaffected
    assert mark.exists()
