"""The scheduler as processes: leader election, takeover after SIGKILL, release on SIGTERM,
exactly one job per occurrence, and the `conveyor schedules` commands.

Three `conveyor scheduler tests.apps.sched_app:app` processes share a real SQLite file or
a private redis-server; the app has one `every 1s` schedule and nothing runs its jobs, so
the pending jobs are exactly what the schedulers enqueued.
"""

from __future__ import annotations

import collections
import itertools
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import orjson
import pytest

from conveyor import Conveyor, JobState
from conveyor.engines.sqlite import SqliteEngine
from conveyor.engines.sqlite import engine as sqlite_engine
from conveyor.engines.sqlite import migrations as sqlite_migrations
from conveyor.testing import eventually

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
LEASE = 2.0  # seconds; followers try every min(LEASE / 3, 1 s)
TAKEOVER_BOUND = LEASE + LEASE / 3 + 0.75  # lease + one follower try + process slack
SCHEDULE = "every-second"


class SchedulerProcess:
    def __init__(self, url: str, log_dir: Path, n: int) -> None:
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        self.log_path = log_dir / f"scheduler-{n}.log"
        # Output goes to a file, not a pipe: a pipe nobody reads can fill and stall it.
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "conveyor",
                    "scheduler",
                    "tests.apps.sched_app:app",
                    "--url",
                    url,
                    "--lease-timeout",
                    str(LEASE),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=ROOT,
                env=env,
            )

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


@pytest.fixture
def schedulers(tmp_path: Path) -> Iterator[list[SchedulerProcess]]:
    started: list[SchedulerProcess] = []
    yield started
    for s in started:
        s.kill()
        print(f"--- scheduler pid {s.proc.pid} exit {s.proc.returncode}:\n{s.output()}")


@pytest.fixture
async def app(durable_url: str) -> AsyncIterator[Conveyor]:
    app = Conveyor(durable_url)
    await app.connect()
    yield app
    await app.close()


async def leader_pid(app: Conveyor) -> int | None:
    lease = await app.scheduler_leader()
    return None if lease is None else int(lease.holder.split(":")[1])


def led_by_other(app: Conveyor, old: int) -> Callable[[], Awaitable[bool]]:
    """A check for `eventually`: some scheduler other than pid `old` leads."""

    async def check() -> bool:
        return (await leader_pid(app)) not in (None, old)

    return check


async def occurrences(app: Conveyor) -> list[int]:
    """Occurrence time (ms) of every job the schedule enqueued, read from the job ids."""
    out: list[int] = []
    cursor = None
    while True:
        page = await app.list_jobs("sched", JobState.PENDING, limit=500, cursor=cursor)
        out += [int(job.id.rsplit("-", 1)[1]) for job in page.jobs]
        if page.cursor is None:
            return out
        cursor = page.cursor


async def test_one_leader_takeover_after_sigkill_and_each_occurrence_once(
    app: Conveyor, schedulers: list[SchedulerProcess], tmp_path: Path, durable_url: str
) -> None:
    schedulers += [SchedulerProcess(durable_url, tmp_path, n) for n in range(3)]
    by_pid = {s.proc.pid: s for s in schedulers}

    async def leading_with_jobs() -> bool:
        return await leader_pid(app) in by_pid and len(await occurrences(app)) >= 3

    await eventually(leading_with_jobs, timeout=30, message="a leader enqueues occurrences")
    first = await leader_pid(app)
    assert first is not None
    stray = [pid for pid in by_pid if pid != first and "is now the leader" in by_pid[pid].output()]
    assert not stray, "only one process ever led"

    # SIGKILL the leader: no release, so a follower must wait out the lease.
    by_pid[first].proc.kill()
    killed_at = time.monotonic()

    await eventually(led_by_other(app, first), timeout=LEASE * 5, interval=0.01, message="takeover")
    takeover = time.monotonic() - killed_at
    print(f"\nmeasured takeover after SIGKILL: {takeover:.2f}s (lease {LEASE}s)")
    assert takeover <= TAKEOVER_BOUND, f"takeover took {takeover:.2f}s"
    second = await leader_pid(app)
    assert second is not None
    count = len(await occurrences(app))

    async def more_jobs() -> bool:
        return len(await occurrences(app)) >= count + 3

    await eventually(more_jobs, timeout=10, message="the new leader enqueues")

    # SIGTERM the new leader: it releases the lease, so the last one leads at its next try.
    by_pid[second].proc.send_signal(signal.SIGTERM)
    stopped_at = time.monotonic()
    assert by_pid[second].proc.wait(10) == 0
    await eventually(led_by_other(app, second), timeout=5, interval=0.01, message="handover")
    handover = time.monotonic() - stopped_at
    print(f"measured handover after SIGTERM: {handover:.2f}s")
    assert handover < LEASE, "a released lease is taken without waiting for it to expire"
    assert "released leadership" in by_pid[second].output()
    count = len(await occurrences(app))

    async def still_more() -> bool:
        return len(await occurrences(app)) >= count + 2

    await eventually(still_more, timeout=10, message="the third leader enqueues")
    [last] = [s for s in schedulers if s.proc.poll() is None]
    last.proc.send_signal(signal.SIGTERM)
    assert last.proc.wait(10) == 0

    seen = await occurrences(app)
    per_occurrence = collections.Counter(seen)
    assert max(per_occurrence.values()) == 1, "an occurrence was enqueued twice"
    ordered = sorted(per_occurrence)
    gaps = [(a, b) for a, b in itertools.pairwise(ordered) if b - a != 1000]
    # Policy: occurrences within the grace window (2 x lease) of a new leader's first tick
    # are on time, so a takeover that fits in the lease loses none.
    assert gaps == [], f"occurrences lost between {gaps}"
    print(f"{len(ordered)} occurrences, each enqueued once, no gaps")


def conveyor_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "conveyor", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "200"},
    )


def test_schedules_cli_add_list_pause_resume_remove(sqlite_url: str) -> None:
    url = ["--url", sqlite_url]
    added = conveyor_cli(
        "schedules", "add", "nightly", "--cron", "30 2 * * *", "--timezone", "Europe/Berlin",
        "--task", "reports.send", "--queue", "reports", "--payload", '{"kind": "daily"}',
        "--missed", "run_once", *url,
    )  # fmt: skip
    assert added.returncode == 0, added.stderr
    assert "added nightly" in added.stdout
    every = conveyor_cli("schedules", "add", "poll", "--every", "5m", "--task", "p", *url)
    assert every.returncode == 0, every.stderr
    assert conveyor_cli("schedules", "pause", "poll", *url).returncode == 0
    listing = conveyor_cli("schedules", "list", "--json", *url)
    assert listing.returncode == 0, listing.stderr
    rows = {row["name"]: row for row in orjson.loads(listing.stdout)}
    assert rows["nightly"]["kind"] == "cron" and rows["nightly"]["expr"] == "30 2 * * *"
    assert rows["nightly"]["timezone"] == "Europe/Berlin" and rows["nightly"]["source"] == "runtime"
    assert rows["nightly"]["next_run"] > time.time() and rows["nightly"]["last_run"] is None
    assert rows["poll"]["paused"] and rows["poll"]["next_run"] is None
    table = conveyor_cli("schedules", "list", *url)
    assert "nightly" in table.stdout and "leader: none" in table.stdout
    assert conveyor_cli("schedules", "resume", "poll", *url).returncode == 0
    assert conveyor_cli("schedules", "remove", "poll", *url).returncode == 0
    listing = conveyor_cli("schedules", "list", "--json", *url)
    assert [row["name"] for row in orjson.loads(listing.stdout)] == ["nightly"]

    # Mistakes: one readable line naming the fix, exit 2, nothing stored.
    for args, fix in [
        (("add", "x", "--cron", "61 * * * *", "--task", "t"), "use 5 fields"),
        (("add", "x", "--cron", "0 3 * * *", "--timezone", "Moon/Base", "--task", "t"), "IANA"),
        (("add", "x", "--every", "0.5", "--task", "t"), "seconds >= 1"),
        (("add", "x", "--every", "5m", "--cron", "0 3 * * *", "--task", "t"), "exactly one"),
        (("add", "x", "--every", "5m", "--task", "t", "--payload", "[1]"), "JSON object"),
        (("remove", "nope"), "no schedule named"),
    ]:
        bad = conveyor_cli("schedules", *args, *url)
        assert bad.returncode == 2 and fix in bad.stderr, (args, bad.stderr)
    listing = conveyor_cli("schedules", "list", "--json", *url)
    assert [row["name"] for row in orjson.loads(listing.stdout)] == ["nightly"]


async def test_sqlite_schema_v1_file_upgrades_in_place(tmp_path: Path) -> None:
    """A file written before the scheduler (schema 1) gains the new tables, keeps its jobs."""
    path = tmp_path / "old.db"
    engine = SqliteEngine(f"sqlite:///{path}")
    raw = sqlite3.connect(path)
    # As schema 1 left it: the job tables of migration 0001 (written to upgrade such a
    # file in place), no scheduler tables, no migration table, one pending job.
    raw.executescript(sqlite_migrations.MIGRATIONS[0].sql)
    raw.executescript(
        "DROP TABLE leases; DROP TABLE schedules; PRAGMA user_version = 1;"
        "INSERT INTO jobs (id, queue, task, payload, state, created_ms, seq)"
        " VALUES ('q:old', 'q', 't', '{}', 'pending', 0, 1);"
    )
    raw.close()
    await engine.connect()
    try:
        assert (await engine.counts("q")).pending == 1
        assert await engine.acquire_lease("scheduler", "me", 1000)
        await engine.put_schedule("s", "{}", "runtime")
        assert [s.name for s in await engine.schedules()] == ["s"]
    finally:
        await engine.close()
    raw = sqlite3.connect(path)
    assert raw.execute("PRAGMA user_version").fetchone()[0] == sqlite_engine.SCHEMA_VERSION
    raw.close()
