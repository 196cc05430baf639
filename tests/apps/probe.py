"""The probe app of Conveyor's own tests: a scripted `probe` task.

Its payload says what to do — `{"action": "ok" | "fail" | "sleep" | "crash" |
"crash_once" | "fail_until" | "unrecoverable" | "retry" | "progress" | "rate_limited" |
"dependency"}` — and, with `"mark": "/path/file"`, appends a line
`<phase> <job id> <attempt> <pid> <unix time> <tenant or ->` to that file when it starts
and finishes, so a test in another process can see every execution (at-least-once
checks) and when it ran (fairness and rate checks). "dependency" calls a fake
dependency through the app's breaker "probe-dependency" (5 failures open it, 0.5 s
reset): it fails while the payload's `down_until` (unix time) is in the future.

It lives in tests/, never in the installed package: whoever can enqueue to a worker
running it can make that worker append to any file it may write, or kill itself.
Worker processes load it as `tests.apps.probe:app` from the repository root.
"""

from __future__ import annotations

import asyncio
import collections
import os
import signal
import time
from typing import Any

from conveyor import Conveyor, Job, RateLimited, Retry, Unrecoverable

PROBE_QUEUE = "probe"


def _mark(job: Job, phase: str) -> None:
    path = job.payload.get("mark")
    if path:
        # O_APPEND writes of one short line are atomic, so processes can share the file.
        fd = os.open(str(path), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        line = f"{phase} {job.id} {job.attempt} {os.getpid()} {time.time():.6f} {job.tenant or '-'}"
        try:
            os.write(fd, (line + "\n").encode())
        finally:
            os.close(fd)


def mark_lines(path: str | os.PathLike[str]) -> list[list[str]]:
    """The fields of each complete line the probe has written to `path` so far.

    A reader can catch a write half-copied (appends are atomic against each other, not
    against a concurrent read), so a last line without its newline is left for later."""
    try:
        with open(path, "rb") as f:
            text = f.read().decode()
    except FileNotFoundError:
        return []
    complete, _, _partial = text.rpartition("\n")
    return [line.split() for line in complete.splitlines() if line]


def mark_counts(path: str | os.PathLike[str]) -> collections.Counter[tuple[str, str]]:
    """(phase, job id) -> how many times the probe wrote it."""
    return collections.Counter((fields[0], fields[1]) for fields in mark_lines(path))


def register_probe(app: Conveyor, *, queue: str = PROBE_QUEUE, max_attempts: int = 3) -> None:
    """Register the scripted `probe` task on `app`."""
    dependency = app.breaker("probe-dependency", failure_threshold=5, reset_timeout=0.5)

    @app.task("probe", queue=queue, max_attempts=max_attempts, backoff=0)
    async def probe(job: Job) -> Any:
        action = job.payload.get("action", "ok")
        _mark(job, "start")
        if action == "sleep":
            await asyncio.sleep(float(job.payload.get("seconds", 1)))
        elif action == "crash" or (
            action == "crash_once" and job.attempt == 1
        ):  # kill our own worker process, every time
            os.kill(os.getpid(), signal.SIGKILL)
        elif action == "fail":
            raise RuntimeError(job.payload.get("message", "probe failure"))
        elif action == "fail_until" and job.attempt < int(job.payload["attempt"]):
            raise RuntimeError(f"failing attempt {job.attempt}")
        elif action == "unrecoverable":
            raise Unrecoverable(job.payload.get("message", "cannot do this"))
        elif action == "retry":
            raise Retry(delay=float(job.payload.get("delay", 0)))
        elif action == "progress":
            for pct in (25, 50, 100):
                await job.progress(pct)
        elif action == "rate_limited":
            raise RateLimited(float(job.payload.get("retry_after", 1)), "probe: 429")
        elif action == "dependency":
            async with dependency:
                if time.time() < float(job.payload.get("down_until", 0)):
                    raise ConnectionError("probe dependency is down")
        _mark(job, "done")
        return {"action": action, "attempt": job.attempt}

    @app.task("probe.sync", queue=queue, max_attempts=max_attempts, backoff=0)
    def probe_sync(job: Job) -> Any:
        _mark(job, "start")
        if job.payload.get("action") == "sleep":
            time.sleep(float(job.payload.get("seconds", 1)))
        elif job.payload.get("action") == "fail":
            raise RuntimeError("sync probe failure")
        _mark(job, "done")
        return "sync-ok"


def probe_app(url: str | None = None, **kwargs: Any) -> Conveyor:
    """A fresh app with the probe task registered."""
    app = Conveyor(url, **kwargs)
    register_probe(app)
    return app


# What `conveyor worker tests.apps.probe:app` runs (tests pass --url; run it from the
# repository root, or with it on PYTHONPATH).
app = probe_app()
