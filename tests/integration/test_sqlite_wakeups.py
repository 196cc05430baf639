"""SQLite cross-process wake-ups (`engines/sqlite/wakeups.py`): producers poke the Unix
datagram socket of every waiting engine after their commit; stale sockets are cleaned;
without a socket the engine polls.

To show that the *socket* woke a waiter (and not the storage poll), the tests raise the
safety poll to a minute and wait with a long timeout: only a poke can end the wait early.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from conveyor.engines.sqlite import SqliteEngine, connection
from conveyor.engines.sqlite.wakeups import wake_dir
from conveyor.job import NewJob, new_job_id

SRC = str(Path(__file__).resolve().parents[2] / "src")
LEASE_MS = 30_000


def new(queue: str = "q") -> NewJob:
    return NewJob(id=new_job_id(queue), queue=queue, task="t", payload_json="{}", max_attempts=1)


async def claim(eng: SqliteEngine) -> list[str]:
    ex = await eng.exchange([], queues=["q"], limit=10, worker_id="w", lease_ms=LEASE_MS)
    return [j.id for j in ex.jobs]


@pytest.fixture
def no_safety_poll(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(connection, "SAFETY_POLL_S", 60.0)


def sockets(url: str) -> list[str]:
    d = wake_dir(Path(url[len("sqlite:///") :]))
    return sorted(os.listdir(d)) if d.exists() else []


def run_child(code: str, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        env={**os.environ, "PYTHONPATH": SRC},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


ENQUEUE_ONE = """
import asyncio, sys
from conveyor.engines.sqlite import SqliteEngine
from conveyor.job import NewJob
async def main():
    eng = SqliteEngine(sys.argv[1])
    await eng.enqueue([NewJob("q:from-child", "q", "t", "{}", 1)])
    await eng.close()
asyncio.run(main())
"""


async def test_another_process_enqueue_pokes_the_waiting_engine(
    sqlite_url: str, no_safety_poll: None
) -> None:
    waiter_engine = SqliteEngine(sqlite_url)
    assert await claim(waiter_engine) == []
    waiter = asyncio.create_task(waiter_engine.wait_for_jobs(["q"], timeout=50))
    await asyncio.sleep(0.1)  # bound and waiting
    assert len(sockets(sqlite_url)) == 1
    child = run_child(ENQUEUE_ONE, sqlite_url)
    _, err = await asyncio.to_thread(child.communicate, timeout=60)
    assert child.returncode == 0, err
    await asyncio.wait_for(waiter, 20)  # well before the 50 s timeout and 60 s poll
    assert await claim(waiter_engine) == ["q:from-child"]
    await waiter_engine.close()
    assert sockets(sqlite_url) == []  # closing removes the engine's own socket


async def test_engines_of_one_process_poke_each_other(
    sqlite_url: str, no_safety_poll: None
) -> None:
    worker, producer = SqliteEngine(sqlite_url), SqliteEngine(sqlite_url)
    assert await claim(worker) == []
    waiter = asyncio.create_task(worker.wait_for_jobs(["q"], timeout=50))
    await asyncio.sleep(0.1)
    [res] = await producer.enqueue([new()])
    await asyncio.wait_for(waiter, 20)
    assert await claim(worker) == [res.id]
    await asyncio.gather(worker.close(), producer.close())


async def test_a_commit_just_before_the_socket_exists_is_not_missed(
    sqlite_url: str, no_safety_poll: None
) -> None:
    """exchange finds nothing -> another engine commits (nobody is bound, nobody is
    poked) -> the first wait binds: it must look at storage once, not sleep 50 s."""
    worker, producer = SqliteEngine(sqlite_url), SqliteEngine(sqlite_url)
    assert await claim(worker) == []
    [res] = await producer.enqueue([new()])
    assert sockets(sqlite_url) == []
    await asyncio.wait_for(worker.wait_for_jobs(["q"], timeout=50), 20)
    assert await claim(worker) == [res.id]
    await asyncio.gather(worker.close(), producer.close())


WAIT_FOREVER = """
import asyncio, sys
from conveyor.engines.sqlite import SqliteEngine
async def main():
    eng = SqliteEngine(sys.argv[1])
    await eng.exchange([], queues=["q"], limit=1, worker_id="w", lease_ms=1000)
    task = asyncio.ensure_future(eng.wait_for_jobs(["q"], timeout=3600))
    await asyncio.sleep(0.2)
    print("waiting", flush=True)
    await task
asyncio.run(main())
"""


async def test_the_socket_of_a_killed_worker_is_cleaned_by_the_next_poke(
    sqlite_url: str,
) -> None:
    child = run_child(WAIT_FOREVER, sqlite_url)
    assert child.stdout is not None
    line = await asyncio.to_thread(child.stdout.readline)
    assert line.strip() == "waiting", child.stderr.read() if child.stderr else ""
    [stale] = sockets(sqlite_url)
    child.send_signal(signal.SIGKILL)  # no close(): its socket file stays behind
    await asyncio.to_thread(child.wait, 30)
    assert sockets(sqlite_url) == [stale]
    producer = SqliteEngine(sqlite_url)
    await producer.enqueue([new()])  # pokes the dead socket: refused, so unlinked
    await asyncio.sleep(0)  # the poke runs on the next turn of the event loop
    assert sockets(sqlite_url) == []
    await producer.close()


async def test_without_a_socket_the_engine_polls(tmp_path: Path) -> None:
    """A path too long for a socket address: no socket, and other processes' commits
    are still seen (by the 15 ms data_version poll)."""
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    url = f"sqlite:///{deep}/conveyor.db"
    worker = SqliteEngine(url)
    assert await claim(worker) == []
    waiter = asyncio.create_task(worker.wait_for_jobs(["q"], timeout=50))
    await asyncio.sleep(0.1)
    assert worker._wakeups is not None and "longer than" in (worker._wakeups.unavailable or "")
    assert sockets(url) == []
    child = run_child(ENQUEUE_ONE, url)
    _, err = await asyncio.to_thread(child.communicate, timeout=60)
    assert child.returncode == 0, err
    await asyncio.wait_for(waiter, 20)
    assert await claim(worker) == ["q:from-child"]
    await worker.close()


async def test_memory_engine_has_no_sockets() -> None:
    eng = SqliteEngine("memory://")
    assert eng._wakeups is None
    await eng.wait_for_jobs(["q"], timeout=0.01)
    await eng.close()


def test_a_socket_bound_in_the_same_mtime_tick_as_the_last_listing_is_poked(
    tmp_path: Path,
) -> None:
    """Pokes reuse the directory listing while its mtime holds; a socket bound without
    moving the mtime (coarse clock: same tick) must still be found."""
    import socket as socket_mod
    import time

    from conveyor.engines.sqlite.wakeups import WakeSockets

    poker = WakeSockets(tmp_path / "conveyor.db")
    poker.dir.mkdir()
    first = socket_mod.socket(socket_mod.AF_UNIX, socket_mod.SOCK_DGRAM)
    first.bind(str(poker.dir / "1-a.sock"))
    poker.poke()
    assert first.recv(16) == b"!"
    stat = os.stat(poker.dir)
    second = socket_mod.socket(socket_mod.AF_UNIX, socket_mod.SOCK_DGRAM)
    second.bind(str(poker.dir / "2-b.sock"))
    os.utime(poker.dir, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # as if the same tick
    poker.poke()
    assert second.recv(16) == b"!"
    # A listing taken long after the directory's last change is reused: a socket file
    # appearing without moving the mtime (only possible by hand, as here) is not seen.
    old = time.time_ns() - 10_000_000_000
    os.utime(poker.dir, ns=(old, old))
    poker.poke()  # lists again (the mtime moved), now trusted
    third = socket_mod.socket(socket_mod.AF_UNIX, socket_mod.SOCK_DGRAM)
    third.bind(str(poker.dir / "3-c.sock"))
    third.setblocking(False)
    os.utime(poker.dir, ns=(old, old))
    poker.poke()
    with pytest.raises(BlockingIOError):
        third.recv(16)
    for s in (first, second, third):
        s.close()
