"""`enqueue_sync` in a forked child (gunicorn --preload, multiprocessing; issue 14.7).

The parent uses the sync bridge first, so the child inherits a bridge whose loop thread
did not survive the fork: before the fix the child's `enqueue_sync` waited forever.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
import warnings

from conveyor import JobState
from tests.apps.probe import probe_app

CHILD_DEADLINE_S = 30.0  # generous on a loaded machine; a hang is killed, not awaited


def test_enqueue_sync_after_fork_uses_a_bridge_of_the_childs_own(durable_url: str) -> None:
    app = probe_app(durable_url)
    app.enqueue_sync("probe", {"action": "ok"})  # the parent's bridge is live now
    read_end, write_end = os.pipe()
    with warnings.catch_warnings():  # "fork() in a multi-threaded process": the point here
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:  # the child: report the job id (or the error) and leave at once
        code = 1
        try:
            job = app.enqueue_sync("probe", {"action": "ok", "from": "child"})
            os.write(write_end, job.id.encode())
            code = 0
        except BaseException as exc:
            os.write(write_end, f"error {exc!r}".encode())
        finally:
            os._exit(code)
    os.close(write_end)
    deadline = time.monotonic() + CHILD_DEADLINE_S
    status = None
    while status is None:
        done, raw = os.waitpid(pid, os.WNOHANG)
        if done:
            status = raw
        elif time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            raise AssertionError("enqueue_sync in the forked child hung")
        else:
            time.sleep(0.02)
    reply = os.read(read_end, 4096).decode()
    os.close(read_end)
    assert os.waitstatus_to_exitcode(status) == 0, reply
    # The child's job is really stored, and the parent's bridge still works.
    child_job = app.get_job_sync(reply)
    assert child_job.state == JobState.PENDING and child_job.payload["from"] == "child"
    assert app.enqueue_sync("probe", {"action": "ok"}).state == JobState.PENDING
    asyncio.run(app.close())
