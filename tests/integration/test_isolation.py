"""Process isolation with real worker processes: `conveyor worker tests.apps.isolated:app`
runs against a SQLite file, and its handlers misbehave in child processes.

Each test names the property it proves; run with the thread pool instead, each of them
fails (the handler's pid is the worker's, a spinning or cancelled handler keeps running,
a segfault takes the worker down, nothing is ever recycled).
"""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from conveyor import Conveyor, JobFailed, JobState
from conveyor.testing import eventually
from tests.apps.isolated import ISO_QUEUE, isolated_app
from tests.apps.probe import mark_lines
from tests.conftest import SpawnWorker

pytestmark = pytest.mark.slow

APP = "tests.apps.isolated:app"


@pytest.fixture
async def app(sqlite_url: str) -> AsyncIterator[Conveyor]:
    """The producer: the same tasks as the worker's, so jobs get the tasks' defaults."""
    app = isolated_app(sqlite_url)
    await app.connect()
    yield app
    await app.close()


def start(spawn: SpawnWorker, url: str, *flags: str) -> subprocess.Popen[bytes]:
    return spawn(url, *flags, app_ref=APP, queues=ISO_QUEUE)


async def run(app: Conveyor, task: str, payload: dict[str, object] | None = None) -> object:
    job = await app.enqueue(task, payload or {}, queue=ISO_QUEUE)
    return await app.wait(job.id, timeout=60)


async def failure(app: Conveyor, task: str, payload: dict[str, object]) -> JobFailed:
    job = await app.enqueue(task, payload, queue=ISO_QUEUE)
    with pytest.raises(JobFailed) as info:
        await app.wait(job.id, timeout=60)
    return info.value


def parent_of(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("PPid:"):
            return int(line.split()[1])
    raise AssertionError(f"no PPid for {pid}")


def children_of(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if parent_of(int(entry.name)) == pid:
                    found.append(int(entry.name))
            except (FileNotFoundError, ProcessLookupError, AssertionError):
                continue
    return found


def alive(pid: int) -> bool:
    """The process exists and is not a zombie (a reaped child is gone from /proc)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        # ProcessLookupError: the process was reaped between opening its stat and reading it.
        return False
    return state != "Z"


def started_pids(mark: Path) -> list[int]:
    return [int(fields[3]) for fields in mark_lines(mark)]


async def first_start(mark: Path) -> int:
    async def seen() -> bool:
        return bool(started_pids(mark))

    await eventually(seen, timeout=60, message="the handler started")
    return started_pids(mark)[0]


async def gone(pid: int, what: str, timeout: float = 15) -> None:
    async def dead() -> bool:
        return not alive(pid)

    await eventually(dead, timeout=timeout, message=what)


async def test_sync_and_async_handlers_run_in_child_processes(
    app: Conveyor, sqlite_url: str, spawn_worker: SpawnWorker
) -> None:
    worker = start(spawn_worker, sqlite_url, "--pool", "process", "--processes", "2")
    sync = await run(app, "iso.pid", {"echo": "s"})
    job = await app.enqueue("iso.apid", {"echo": "a"}, queue=ISO_QUEUE)
    async_ = await app.wait(job.id, timeout=60)
    assert isinstance(sync, dict) and isinstance(async_, dict)
    assert (sync["echo"], async_["echo"]) == ("s", "a")  # payload in, result out (JSON)
    for result in (sync, async_):
        assert result["pid"] != worker.pid
        assert parent_of(result["pid"]) == worker.pid
    assert (await app.get_job(job.id)).progress_value == 50  # progress crosses the pipe too
    failed = await failure(app, "iso.fail", {})
    assert failed.error_type == "ValueError"  # the handler's own error, not a wrapper
    assert "bad input in a child" in (failed.traceback or "")


async def test_a_child_reaches_the_engine_of_its_worker_not_the_url_in_code(
    app: Conveyor, sqlite_url: str, spawn_worker: SpawnWorker
) -> None:
    # The app's code names no URL (the default would be ./conveyor.db): the worker's --url
    # must reach the child, or the follow-up job lands in another file.
    start(spawn_worker, sqlite_url, "--pool", "process", "--processes", "1")
    result = await run(app, "iso.enqueue")
    assert isinstance(result, dict)
    follow = await app.wait(result["follow"], timeout=60)
    assert isinstance(follow, dict) and follow["echo"] == "from a child"


async def test_task_with_isolation_process_runs_in_a_child_of_a_thread_pool_worker(
    app: Conveyor, sqlite_url: str, spawn_worker: SpawnWorker
) -> None:
    worker = start(spawn_worker, sqlite_url, "--processes", "1")
    isolated = await run(app, "iso.isolated")
    inline = await run(app, "iso.pid")
    assert isinstance(isolated, dict) and isinstance(inline, dict)
    assert inline["pid"] == worker.pid
    assert isolated["pid"] != worker.pid and parent_of(isolated["pid"]) == worker.pid


async def test_hard_timeout_kills_the_child_and_a_new_one_replaces_it(
    app: Conveyor, sqlite_url: str, spawn_worker: SpawnWorker, tmp_path: Path
) -> None:
    worker = start(spawn_worker, sqlite_url, "--pool", "process", "--processes", "1")
    mark = tmp_path / "marks"
    failed = await failure(app, "iso.spin", {"mark": str(mark)})
    assert failed.error_type == "JobTimeout"
    spinner = started_pids(mark)[0]
    assert spinner != worker.pid
    await gone(spinner, "the spinning child was killed")
    after = await run(app, "iso.pid")
    assert isinstance(after, dict) and after["pid"] not in (spinner, worker.pid)
    assert worker.poll() is None


async def test_timeout_counts_from_when_a_child_takes_the_job_not_from_the_claim(
    app: Conveyor, sqlite_url: str, spawn_worker: SpawnWorker
) -> None:
    # Three jobs claimed at once, one child: the third waits ~2 s for it, then naps 1 s.
    # Its 2.5 s timeout must count only the nap, or it fails having barely run.
    start(
        spawn_worker, sqlite_url, "--pool", "process", "--processes", "1",
        "--concurrency", "3",
    )  # fmt: skip
    jobs = [
        await app.enqueue("iso.nap", {"seconds": 1}, queue=ISO_QUEUE, timeout=2.5) for _ in range(3)
    ]
    for job in jobs:
        assert isinstance(await app.wait(job.id, timeout=60), dict)


async def test_segfault_fails_the_attempt_and_is_retried_and_the_worker_lives_on(
    app: Conveyor, sqlite_url: str, spawn_worker: SpawnWorker, tmp_path: Path
) -> None:
    worker = start(spawn_worker, sqlite_url, "--pool", "process", "--processes", "1")
    mark = tmp_path / "marks"
    failed = await failure(app, "iso.segfault", {"mark": str(mark)})
    errors = failed.job.errors
    assert [e.type for e in errors] == ["ChildProcessDied", "ChildProcessDied"]  # retried
    assert "SIGSEGV" in errors[-1].message
    assert len(set(started_pids(mark))) == 2  # each attempt in its own (new) child
    assert worker.poll() is None
    assert isinstance(await run(app, "iso.pid"), dict)


async def test_os_exit_fails_the_attempt_with_the_exit_code(
    app: Conveyor, sqlite_url: str, spawn_worker: SpawnWorker
) -> None:
    worker = start(spawn_worker, sqlite_url, "--pool", "process", "--processes", "1")
    failed = await failure(app, "iso.exit", {"code": 7})
    assert failed.error_type == "ChildProcessDied"
    assert "exited with code 7" in failed.error_message
    assert worker.poll() is None
    assert isinstance(await run(app, "iso.pid"), dict)


async def test_child_killed_from_outside_like_the_oom_killer_fails_the_attempt(
    app: Conveyor, sqlite_url: str, spawn_worker: SpawnWorker, tmp_path: Path
) -> None:
    worker = start(spawn_worker, sqlite_url, "--pool", "process", "--processes", "1")
    mark = tmp_path / "marks"
    job = await app.enqueue("iso.forever", {"mark": str(mark)}, queue=ISO_QUEUE)
    child = await first_start(mark)
    os.kill(child, signal.SIGKILL)  # what the OOM killer sends
    with pytest.raises(JobFailed) as info:
        await app.wait(job.id, timeout=60)
    assert info.value.error_type == "ChildProcessDied"
    assert "SIGKILL" in info.value.error_message and "OOM" in info.value.error_message
    assert worker.poll() is None


async def test_max_jobs_per_child_recycles_children(
    app: Conveyor, sqlite_url: str, spawn_worker: SpawnWorker
) -> None:
    start(
        spawn_worker, sqlite_url, "--pool", "process", "--processes", "1",
        "--max-jobs-per-child", "2",
    )  # fmt: skip
    pids = []
    for _ in range(4):
        result = await run(app, "iso.pid")
        assert isinstance(result, dict)
        pids.append(result["pid"])
    assert pids[0] == pids[1] != pids[2] == pids[3]


async def test_max_memory_per_child_recycles_a_leaking_child(
    app: Conveyor, sqlite_url: str, spawn_worker: SpawnWorker
) -> None:
    # A child starts at ~40-60 MiB; each job leaks 64 MiB, so the second job of a child
    # takes it over 150 MiB and it is replaced. Without recycling one child would hold
    # 256 MiB after four jobs.
    start(
        spawn_worker, sqlite_url, "--pool", "process", "--processes", "1",
        "--max-memory-per-child", "150MB",
    )  # fmt: skip
    results = [await run(app, "iso.leak", {"mb": 64}) for _ in range(4)]
    leaked = [r["leaked_mb"] for r in results if isinstance(r, dict)]
    pids = [r["pid"] for r in results if isinstance(r, dict)]
    assert leaked == [64, 128, 64, 128]
    assert pids[0] == pids[1] != pids[2] == pids[3]


async def test_cancelling_a_running_isolated_job_kills_its_child(
    app: Conveyor, sqlite_url: str, spawn_worker: SpawnWorker, tmp_path: Path
) -> None:
    # Leases of 3 s: heartbeats every second, so the cancel is seen within one.
    worker = start(
        spawn_worker, sqlite_url, "--pool", "process", "--processes", "1",
        "--lease-timeout", "3",
    )  # fmt: skip
    mark = tmp_path / "marks"
    job = await app.enqueue("iso.forever", {"mark": str(mark)}, queue=ISO_QUEUE)
    child = await first_start(mark)
    assert child != worker.pid
    await app.cancel_job(job.id)
    await gone(child, "the cancelled job's child was killed", timeout=10)
    assert (await app.get_job(job.id)).state == JobState.CANCELLED
    result = await run(app, "iso.pid")  # a new child took its place
    assert isinstance(result, dict) and result["pid"] != child


async def test_graceful_shutdown_releases_the_running_job_and_stops_children(
    app: Conveyor, sqlite_url: str, spawn_worker: SpawnWorker, tmp_path: Path
) -> None:
    worker = start(
        spawn_worker, sqlite_url, "--pool", "process", "--processes", "2",
        "--shutdown-timeout", "0.5",
    )  # fmt: skip
    mark = tmp_path / "marks"
    job = await app.enqueue("iso.forever", {"mark": str(mark)}, queue=ISO_QUEUE)
    child = await first_start(mark)
    children = children_of(worker.pid)
    assert child in children and len(children) == 2
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(30) == 0
    released = await app.get_job(job.id)
    assert released.state == JobState.PENDING  # handed back, attempt given back
    assert released.attempt == 0
    for pid in children:
        await gone(pid, f"child {pid} stopped with its worker")
