"""A child process of the worker's process pool: runs one handler at a time.

Started by `conveyor.worker.isolation` as `python -m conveyor.worker.child MODULE:ATTR
PARENT_PID`. It imports the app by that path (the job is never pickled: the task is
looked up by name) and speaks JSON lines with its worker over its stdin and stdout:

    worker -> child   {"configure": {"url": ..., "max_payload_bytes": ...}}  first, once
                      {"job": {...the job's fields...}}
    child  -> worker  {"ready": pid}                      once, after the import
                      {"fatal": "..."}                    instead, if the import failed
                      {"progress": value}                 any number, during a job
                      {"done": "<result JSON>", "rss": n}  or
                      {"raised": {...}, "rss": n}         once per job

The handler's own prints must not corrupt that channel, so the child moves the protocol
to private copies of fds 0 and 1 and points fd 1 at stderr (the worker's log). It ends
when its stdin closes (the worker recycles it) or when it is killed (timeout, cancel).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import inspect
import os
import signal
import sys
import traceback
from collections.abc import Callable
from typing import IO, Any

import orjson

from ..errors import InvalidPayload, RateLimited, Retry, Unrecoverable
from ..job import AttemptError, Job, JobState, encode_result
from ..payloads import decode_payload

_PR_SET_PDEATHSIG = 1  # linux/prctl.h


def _die_with_parent(parent_pid: int) -> None:
    """Ask Linux to SIGKILL this child when its worker dies, so a SIGKILLed worker leaves
    no orphan spinning in a handler (elsewhere, stdin EOF ends an idle child)."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent_pid:  # it died before prctl took effect
        os._exit(1)


def _rss_bytes() -> int:
    """The resident set size now (not the peak), which recycling compares."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):  # not Linux: the peak is the best there is
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak if sys.platform == "darwin" else peak * 1024


def _import_app(target: str) -> Any:
    module_name, _, attr = target.partition(":")
    if os.getcwd() not in sys.path:  # as `conveyor worker` does, from the project dir
        sys.path.insert(0, os.getcwd())
    app = getattr(importlib.import_module(module_name), attr, None)
    if app is None or not hasattr(app, "tasks"):
        raise LookupError(f"{target!r} is not a Conveyor app")
    return app


def _job(fields: dict[str, Any], send: Callable[[dict[str, Any]], None]) -> Job[Any]:
    async def report(job: Job[Any], value: Any) -> None:
        send({"progress": value})

    job: Job[Any] = Job(
        id=fields["id"],
        queue=fields["queue"],
        task=fields["task"],
        payload=fields["payload"],
        state=JobState.RUNNING,
        attempt=fields["attempt"],
        max_attempts=fields["max_attempts"],
        priority=fields["priority"],
        tenant=fields["tenant"],
        dedupe_key=fields["dedupe_key"],
        timeout=fields["timeout"],
        backoff=fields["backoff"],
        created_at=fields["created_at"],
        scheduled_at=fields["scheduled_at"],
        started_at=fields["started_at"],
        progress_value=fields["progress"],
        errors=[AttemptError.from_obj(e) for e in fields["errors"]],
        token=fields["token"],
        worker=fields["worker"],
    )
    job._reporter = report
    return job


def _run(app: Any, loop: asyncio.AbstractEventLoop, job: Job[Any]) -> dict[str, Any]:
    """Run the handler; the reply without "rss"."""
    task = app.tasks.get(job.task)
    try:
        if task is None:
            raise Unrecoverable(f"task {job.task!r} is not registered in this child's app")
        if task.payload_model is not None:
            job.payload = decode_payload(job.payload, task.payload_model)
        if task.is_async:
            result = loop.run_until_complete(task.fn(job))
        else:
            result = task.fn(job)
            if inspect.isawaitable(result):  # a plain function that returned a coroutine
                result = loop.run_until_complete(result)
        return {"done": encode_result(result)}
    except Retry as exc:
        return {"raised": {"control": "retry", "delay": exc.delay, "reason": exc.reason}}
    except RateLimited as exc:
        control = {"control": "defer", "retry_after": exc.retry_after, "reason": exc.reason}
        return {"raised": control}
    except Unrecoverable as exc:
        message = str(exc) or "unrecoverable"
        tb = traceback.format_exc()
        return {"raised": {"control": "unrecoverable", "message": message, "traceback": tb}}
    except InvalidPayload as exc:
        return {"raised": {"control": "unrecoverable", "message": str(exc), "traceback": None}}
    except (Exception, SystemExit) as exc:  # sys.exit() in a handler fails the attempt
        tb = traceback.format_exc()
        return {"raised": {"type": type(exc).__name__, "message": str(exc), "traceback": tb}}


def serve(target: str, proto_in: IO[bytes], proto_out: IO[bytes]) -> int:
    """Import the app, then run jobs read from `proto_in` until it closes.

    Args:
        target: the app as MODULE:ATTR.
        proto_in: where job requests arrive (one JSON line each).
        proto_out: where replies go (one JSON line each).

    Returns:
        The process exit code.
    """

    def send(msg: dict[str, Any]) -> None:
        proto_out.write(orjson.dumps(msg) + b"\n")
        proto_out.flush()

    try:
        app = _import_app(target)
        # The worker's engine (its --url, the environment), not just the URL in code:
        # handlers that enqueue or read jobs must reach the same engine. It comes over the
        # pipe, not argv or the environment, because a URL may hold a password.
        app.configure(**orjson.loads(proto_in.readline())["configure"])
    except Exception as exc:
        send({"fatal": f"cannot import the app {target!r} in a child process: {exc!r}"})
        return 1
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    # The app's start-up hooks prepare what handlers use (a DB pool): each child needs its
    # own, as a forked-off worker would.
    for hook in app.startup_hooks:
        result = hook()
        if inspect.isawaitable(result):
            loop.run_until_complete(result)
    send({"ready": os.getpid()})
    try:
        while line := proto_in.readline():
            job = _job(orjson.loads(line)["job"], send)
            reply = _run(app, loop, job)
            reply["rss"] = _rss_bytes()
            send(reply)
    finally:
        for hook in app.shutdown_hooks:
            with contextlib.suppress(Exception):
                result = hook()
                if inspect.isawaitable(result):
                    loop.run_until_complete(result)
        with contextlib.suppress(Exception):  # connections a handler opened
            loop.run_until_complete(app.close())
        loop.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point: `python -m conveyor.worker.child MODULE:ATTR PARENT_PID`."""
    target, parent_pid = (argv if argv is not None else sys.argv[1:])[:2]
    # Signals to the worker's process group (Ctrl-C, a deploy's SIGTERM) are the worker's
    # to handle: it finishes or releases jobs, then stops its children itself.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    _die_with_parent(int(parent_pid))
    proto_in = os.fdopen(os.dup(0), "rb")
    proto_out = os.fdopen(os.dup(1), "wb")
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    os.dup2(2, 1)  # the handler's prints go to the worker's log, not the protocol
    return serve(target, proto_in, proto_out)


if __name__ == "__main__":
    sys.exit(main())
