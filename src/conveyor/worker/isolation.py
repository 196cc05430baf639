"""Process isolation: handlers that run in child processes the worker can kill.

`@app.task(isolation="process")` or `conveyor worker --pool process` runs attempts in
children started as `python -m conveyor.worker.child MODULE:ATTR` (see that module for
the protocol). The job goes in and the result comes out as JSON; nothing is pickled.

What the worker gets from a child it could not get from a thread:
- a hard timeout or a cancellation *kills* the child (SIGKILL), so a sync handler stuck
  in a loop stops burning CPU; the attempt fails with `JobTimeout` (or is dropped, for a
  cancel) and a new child replaces the dead one;
- a segfault, `os._exit` or the OOM killer takes only the child: the attempt fails with
  `ChildProcessDied` saying how it died, and is retried as usual;
- recycling: a child is replaced after `max_jobs_per_child` jobs, or once its resident
  memory passes `max_memory_per_child` (checked after each job), so a leak cannot grow
  the worker for ever.

Leases stay the worker's: its heartbeat renews them while children run, and graceful
shutdown works as for threads (a job still running at the shutdown timeout has its
child killed and the job released).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson
from pydantic import BaseModel

from ..errors import ChildProcessDied, ConfigError, RateLimited, Retry, Unrecoverable
from ..job import Job
from ..task import Task

if TYPE_CHECKING:
    from ..app import Conveyor

log = logging.getLogger("conveyor.worker")

_READY_TIMEOUT_S = 120.0  # importing a big app (and its start-up hooks) can be slow
_RETIRE_GRACE_S = 10.0  # a recycled child runs its shutdown hooks, then is killed
_LINE_LIMIT = 64 * 1024 * 1024  # one JSON line: a job or a result (payloads are capped)


@dataclass(frozen=True, slots=True)
class ProcessPoolOptions:
    """How a worker runs isolated handlers.

    Args:
        target: the app as MODULE:ATTR, which each child imports (None: found by
            looking for the app object in the imported modules).
        processes: children running handlers at once (default: the CPU count).
        every_task: run every task in a child (`--pool process`); otherwise only the
            tasks registered with `isolation="process"`.
        max_jobs_per_child: replace a child after this many jobs (None: never).
        max_memory_per_child: replace a child whose resident memory is above this many
            bytes after a job (None: never).
    """

    target: str | None = None
    processes: int | None = None
    every_task: bool = False
    max_jobs_per_child: int | None = None
    max_memory_per_child: int | None = None


class ChildError(Exception):
    """A handler raised in a child: its type name, message and traceback as text (the
    worker records them as the attempt's error, as for a handler run in a thread)."""

    def __init__(self, type_name: str, message: str, remote_traceback: str | None) -> None:
        super().__init__(message)
        self.type_name = type_name
        self.message = message
        self.remote_traceback = remote_traceback


def find_target(app: Conveyor) -> str:
    """The MODULE:ATTR path of `app`, found among the imported modules.

    Raises:
        ConfigError: no importable module holds the app (it lives in `__main__`).
    """
    for name, module in list(sys.modules.items()):
        if name == "__main__" or module is None:
            continue
        for attr, value in list(vars(module).items()):
            if value is app:
                return f"{name}:{attr}"
    raise ConfigError(
        "process isolation needs the app's import path, and this app is not an attribute "
        "of an importable module: define it in a module (myproject/jobs.py) and pass "
        "ProcessPoolOptions(target='myproject.jobs:app'), or run `conveyor worker "
        "myproject.jobs:app`"
    )


def describe_exit(pid: int, returncode: int | None) -> str:
    """How a child ended, in words (the attempt's error message)."""
    if returncode is None:
        return f"child process {pid} closed its pipe and is still running"
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        why = {
            "SIGSEGV": "a segmentation fault, usually in a C extension",
            "SIGKILL": "killed from outside: the kernel's OOM killer, or an operator",
            "SIGABRT": "aborted, usually by a failed assertion in C code",
            "SIGBUS": "a bus error, usually in a C extension",
        }.get(name, "killed by a signal")
        return f"child process {pid} died of {name} ({-returncode}): {why}"
    return f"child process {pid} exited with code {returncode} mid-attempt (os._exit?)"


class _Child:
    """One child process and its pipes."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.jobs = 0
        self.rss = 0

    @property
    def pid(self) -> int:
        return self.proc.pid

    async def read(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = await self.proc.stdout.readline()
        if not line:  # EOF: the child is gone (or closed fd 1 of the protocol)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.proc.wait(), 5.0)
            raise ChildProcessDied(describe_exit(self.pid, self.proc.returncode))
        msg: dict[str, Any] = orjson.loads(line)
        return msg

    async def request(self, job: Job[Any]) -> dict[str, Any]:
        """Send `job`, forward its progress reports, and return the final reply."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(orjson.dumps({"job": _fields(job)}) + b"\n")
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            await self.proc.stdin.drain()  # if it died, the read below says how
        while True:
            msg = await self.read()
            if "progress" not in msg:
                return msg
            await job.progress(msg["progress"])

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.proc.kill()


def _fields(job: Job[Any]) -> dict[str, Any]:
    payload = job.payload
    if isinstance(payload, BaseModel):  # the runtime decoded it; the child does it again
        payload = payload.model_dump(mode="json")
    return {
        "id": job.id,
        "queue": job.queue,
        "task": job.task,
        "payload": payload,
        "attempt": job.attempt,
        "max_attempts": job.max_attempts,
        "priority": job.priority,
        "tenant": job.tenant,
        "dedupe_key": job.dedupe_key,
        "timeout": job.timeout,
        "backoff": job.backoff,
        "created_at": job.created_at,
        "scheduled_at": job.scheduled_at,
        "started_at": job.started_at,
        "progress": job.progress_value,
        "errors": [orjson.loads(e.to_json()) for e in job.errors],
        "token": job.token,
        "worker": job.worker,
    }


def _unwrap(reply: dict[str, Any]) -> Any:
    """The handler's result, or what it raised raised again here."""
    if "done" in reply:
        return orjson.loads(reply["done"])
    raised = reply["raised"]
    control = raised.get("control")
    if control == "retry":
        raise Retry(delay=raised["delay"], reason=raised["reason"])
    if control == "defer":
        raise RateLimited(raised["retry_after"], raised["reason"])
    if control == "unrecoverable":
        raise Unrecoverable(raised["message"])
    raise ChildError(raised["type"], raised["message"], raised["traceback"])


class ProcessPool:
    """Child processes that run handlers, one job per child at a time.

    Args:
        target: the app as MODULE:ATTR.
        processes: children to keep.
        max_jobs_per_child: recycle a child after this many jobs (None: never).
        max_memory_per_child: recycle a child above this many bytes of RSS (None: never).
        every_task: run every task here, not only `isolation="process"` ones.
        app: the worker's app, whose engine URL and payload limit (read when a child
            starts, so after the CLI applied its flags) each child applies to its own
            import of the app: handlers then reach the worker's engine.
    """

    def __init__(
        self,
        target: str,
        *,
        processes: int,
        max_jobs_per_child: int | None = None,
        max_memory_per_child: int | None = None,
        every_task: bool = False,
        app: Conveyor | None = None,
    ) -> None:
        self.target = target
        self.app = app
        self.processes = processes
        self.max_jobs_per_child = max_jobs_per_child
        self.max_memory_per_child = max_memory_per_child
        self.every_task = every_task
        self.recycled = 0  # children replaced by the recycling limits
        self.died = 0  # children killed (timeout, cancel) or crashed mid-job
        self._idle: asyncio.Queue[_Child] = asyncio.Queue()
        self._children: set[_Child] = set()
        self._chores: set[asyncio.Task[None]] = set()  # spawns and reaps in the background
        self._closing = False

    @classmethod
    def for_worker(cls, app: Conveyor, options: ProcessPoolOptions | None) -> ProcessPool | None:
        """The pool a worker of `app` needs: None when no task runs isolated.

        Raises:
            ConfigError: isolation is needed but the app's import path is unknown.
        """
        options = options or ProcessPoolOptions()
        if not options.every_task and not any(t.isolation == "process" for t in app.tasks.values()):
            return None
        return cls(
            options.target or find_target(app),
            processes=options.processes or os.cpu_count() or 1,
            max_jobs_per_child=options.max_jobs_per_child,
            max_memory_per_child=options.max_memory_per_child,
            every_task=options.every_task,
            app=app,
        )

    def handles(self, task: Task) -> bool:
        """Whether `task`'s attempts run in this pool."""
        return self.every_task or task.isolation == "process"

    @property
    def pids(self) -> list[int]:
        """Process ids of the live children."""
        return sorted(c.pid for c in self._children)

    async def start(self) -> None:
        """Start every child and wait until each has imported the app.

        Raises:
            ConfigError: a child could not import the app (the message says why).
        """
        results = await asyncio.gather(
            *(self._spawn() for _ in range(self.processes)), return_exceptions=True
        )
        errors = [r for r in results if isinstance(r, BaseException)]
        if errors:
            await self.close()
            raise errors[0]
        for child in results:
            assert isinstance(child, _Child)
            self._idle.put_nowait(child)
        log.info("process pool: %d children of %s", self.processes, self.target)

    async def run(
        self,
        job: Job[Any],
        deadline: asyncio.Timeout | None = None,
        timeout: float | None = None,
    ) -> Any:
        """Run `job`'s handler in a free child and return its result.

        Cancelling the caller (a timeout, a cancelled job, a lost lease, the shutdown
        timeout) kills the child; a new one takes its place.

        Args:
            job: the claimed job.
            deadline: the attempt's timer, left unarmed by the caller: it is armed for
                `timeout` seconds once a child takes the job, so time spent waiting for
                a free child never counts against the handler.
            timeout: the attempt's timeout in seconds (None: no limit).

        Raises:
            ChildProcessDied: the child died during the attempt.
            ChildError: the handler raised (type, message and traceback as text).
            Retry, RateLimited, Unrecoverable: the handler raised them.
        """
        child = await self._idle.get()
        if deadline is not None and timeout is not None:
            deadline.reschedule(asyncio.get_running_loop().time() + timeout)
        try:
            reply = await child.request(job)
        except BaseException as exc:
            # Cancelled or crashed: the child may be mid-handler, so it is never reused.
            self.died += 1
            if isinstance(exc, asyncio.CancelledError):
                log.info(
                    "killing child %d: job %s was stopped (timeout, cancel, lost lease or "
                    "shutdown)",
                    child.pid,
                    job.id,
                )
            self._discard(child)
            raise
        child.jobs += 1
        child.rss = int(reply.get("rss", 0))
        if self._spent(child):
            self.recycled += 1
            self._discard(child, grace=True)
        else:
            self._idle.put_nowait(child)
        return _unwrap(reply)

    async def close(self) -> None:
        """Stop every child (idle ones end on EOF, busy ones are killed) and wait."""
        self._closing = True
        for child in list(self._children):
            self._discard(child, grace=True)
        while self._chores:
            await asyncio.gather(*self._chores, return_exceptions=True)

    def _spent(self, child: _Child) -> bool:
        if self.max_jobs_per_child is not None and child.jobs >= self.max_jobs_per_child:
            log.info("recycling child %d after %d jobs", child.pid, child.jobs)
            return True
        if self.max_memory_per_child is not None and child.rss > self.max_memory_per_child:
            log.info(
                "recycling child %d: %d MiB resident, over the %d MiB limit",
                child.pid,
                child.rss >> 20,
                self.max_memory_per_child >> 20,
            )
            return True
        return False

    def _discard(self, child: _Child, *, grace: bool = False) -> None:
        """Stop `child` in the background (at once, or after its stdin closes when
        `grace`) and start its replacement. Synchronous: it runs in cancelled tasks."""
        if child not in self._children:
            return
        self._children.discard(child)
        if not grace:
            child.kill()
        self._chore(self._reap(child, grace))
        if not self._closing:
            self._chore(self._replace())

    def _chore(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._chores.add(task)
        task.add_done_callback(self._chores.discard)

    async def _reap(self, child: _Child, grace: bool) -> None:
        if grace and child.proc.stdin is not None:
            child.proc.stdin.close()  # EOF: the child runs its shutdown hooks and exits
            try:
                await asyncio.wait_for(child.proc.wait(), _RETIRE_GRACE_S)
                return
            except TimeoutError:
                child.kill()
        await child.proc.wait()

    async def _replace(self) -> None:
        delay = 0.5
        while not self._closing:
            try:
                child = await self._spawn()
            except ConfigError as exc:  # e.g. the app's module broke since start-up
                log.error("could not replace a child process: %s; retrying", exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)
                continue
            if self._closing:
                self._discard(child, grace=True)
            else:
                self._idle.put_nowait(child)
            return

    async def _spawn(self) -> _Child:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "conveyor.worker.child",
            self.target,
            str(os.getpid()),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            limit=_LINE_LIMIT,
        )
        child = _Child(proc)
        self._children.add(child)
        assert proc.stdin is not None
        configure = {}
        if self.app is not None:
            configure = {"url": self.app.url, "max_payload_bytes": self.app.max_payload_bytes}
        proc.stdin.write(orjson.dumps({"configure": configure}) + b"\n")
        try:
            msg = await asyncio.wait_for(child.read(), _READY_TIMEOUT_S)
        except (ChildProcessDied, TimeoutError) as exc:
            self._children.discard(child)
            child.kill()
            await proc.wait()
            raise ConfigError(f"a child process of the pool did not start: {exc}") from exc
        if "ready" not in msg:
            self._children.discard(child)
            await proc.wait()
            raise ConfigError(str(msg.get("fatal", msg)))
        return child
