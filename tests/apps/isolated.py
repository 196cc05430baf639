"""A probe-style app for process isolation tests (tests/integration/test_isolation.py).

Every task writes `<phase> <job id> <attempt> <pid>` lines to the payload's `mark` file
(when given), so a test in another process sees which process ran an attempt and can
check that process afterwards (killed? replaced?). Some tasks misbehave on purpose:
they segfault, call `os._exit`, spin past their timeout in a sync loop, leak memory, or
run until they are cancelled.

Like tests/apps/probe.py it lives in tests/, never in the installed package. Workers
load it as `tests.apps.isolated:app` from the repository root.
"""

from __future__ import annotations

import asyncio
import ctypes
import os
import time
from typing import Any

from conveyor import Conveyor, Job

ISO_QUEUE = "iso"
SPIN_TIMEOUT = 1.0  # seconds the `iso.spin` attempt may run

_leaked: list[bytes] = []  # what `iso.leak` keeps alive, per child process


def _mark(job: Job, phase: str) -> None:
    path = job.payload.get("mark")
    if path:
        fd = os.open(str(path), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, f"{phase} {job.id} {job.attempt} {os.getpid()}\n".encode())
        finally:
            os.close(fd)


def register_isolated(app: Conveyor) -> None:
    """Register the `iso.*` tasks on `app`."""

    @app.task("iso.pid", queue=ISO_QUEUE)
    def pid(job: Job) -> Any:
        """Where a sync handler runs, under whatever pool the worker has."""
        _mark(job, "start")
        return {"pid": os.getpid(), "echo": job.payload.get("echo")}

    @app.task("iso.apid", queue=ISO_QUEUE)
    async def apid(job: Job) -> Any:
        """Where an async handler runs; it reports progress on the way."""
        await job.progress(50)
        await asyncio.sleep(0)
        return {"pid": os.getpid(), "echo": job.payload.get("echo")}

    @app.task("iso.enqueue", queue=ISO_QUEUE)
    async def enqueue(job: Job) -> Any:
        """Enqueues from the child: it must reach the worker's engine (its --url)."""
        follow = await app.enqueue("iso.pid", {"echo": "from a child"})
        return {"follow": follow.id}

    @app.task("iso.isolated", queue=ISO_QUEUE, isolation="process")
    def isolated(job: Job) -> Any:
        """Always runs in a child, even in a worker with the thread pool."""
        return {"pid": os.getpid()}

    @app.task("iso.segfault", queue=ISO_QUEUE, max_attempts=2, backoff=0)
    def segfault(job: Job) -> Any:
        _mark(job, "start")
        ctypes.string_at(0)  # reads address 0: SIGSEGV
        return "unreachable"

    @app.task("iso.exit", queue=ISO_QUEUE, max_attempts=1)
    def hard_exit(job: Job) -> Any:
        _mark(job, "start")
        os._exit(int(job.payload.get("code", 3)))

    @app.task("iso.spin", queue=ISO_QUEUE, max_attempts=1, timeout=SPIN_TIMEOUT)
    def spin(job: Job) -> Any:
        """A sync loop past its timeout: a thread cannot be stopped, a child can be killed."""
        _mark(job, "start")
        while True:
            time.sleep(0.01)

    @app.task("iso.forever", queue=ISO_QUEUE, max_attempts=1)
    def forever(job: Job) -> Any:
        """Runs until it is cancelled (or killed)."""
        _mark(job, "start")
        while True:
            time.sleep(0.01)

    @app.task("iso.nap", queue=ISO_QUEUE, max_attempts=1)
    def nap(job: Job) -> Any:
        time.sleep(float(job.payload["seconds"]))
        return {"pid": os.getpid()}

    @app.task("iso.leak", queue=ISO_QUEUE)
    def leak(job: Job) -> Any:
        """Keeps `mb` MiB alive for the life of its process (touched, so it is resident)."""
        _leaked.append(b"x" * (int(job.payload.get("mb", 32)) << 20))
        return {"pid": os.getpid(), "leaked_mb": sum(len(b) for b in _leaked) >> 20}

    @app.task("iso.fail", queue=ISO_QUEUE, max_attempts=1)
    def fail(job: Job) -> Any:
        raise ValueError("bad input in a child")


def isolated_app(url: str | None = None) -> Conveyor:
    """A fresh app with the `iso.*` tasks (producers use it for the tasks' defaults)."""
    app = Conveyor(url)
    register_isolated(app)
    return app


app = isolated_app()
