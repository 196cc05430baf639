"""The sync bridge: the app's async API for synchronous callers (Flask, Django,
scripts), run on a private event loop thread."""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Awaitable, Callable, Coroutine
from concurrent.futures import Future
from typing import Any, Generic, Protocol, TypeVar

R = TypeVar("R")


class _Closable(Protocol):
    def close(self) -> Awaitable[None]: ...


A = TypeVar("A", bound=_Closable)


class SyncBridge(Generic[A]):
    """Runs coroutines of a private app on a private event loop thread.

    Engine connections belong to the loop that made them, so sync callers get a
    separate app instance (made by `make_app`, sharing the task registry) whose engine
    lives on the bridge's loop.

    Args:
        make_app: builds the bridge's own app.
    """

    def __init__(self, make_app: Callable[[], A]) -> None:
        self._make_app = make_app
        self._start()

    def _start(self) -> None:
        self._pid = os.getpid()  # the loop thread exists only in the process that made it
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="conveyor-sync", daemon=True
        )
        self._thread.start()
        self._app = self._make_app()

    def _after_fork(self) -> None:
        """In a forked child (gunicorn --preload, multiprocessing): the loop thread did
        not survive the fork and the engine's connections are the parent's. Abandon them
        without closing anything (closing would talk on the parent's sockets and files)
        and start a loop, thread and app of this process's own."""
        _abandoned.append((self._loop, self._app))
        self._start()

    def run(self, call: Callable[[A], Coroutine[Any, Any, R]]) -> R:
        """Run `call(app)` on the bridge's loop and wait for its result.

        Raises:
            RuntimeError: called from inside a running event loop (it would block it).
        """
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            pass
        else:
            raise RuntimeError(
                "enqueue_sync was called inside a running event loop: use `await app.enqueue`"
            )
        if self._pid != os.getpid():
            self._after_fork()
        future: Future[R] = asyncio.run_coroutine_threadsafe(call(self._app), self._loop)
        return future.result()

    def close(self) -> None:
        """Close the bridge's app, then stop its loop and thread."""
        if self._pid != os.getpid():  # inherited through fork: nothing of ours to close
            _abandoned.append((self._loop, self._app))
            return

        async def close_app() -> None:
            await self._app.close()

        asyncio.run_coroutine_threadsafe(close_app(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)


# What forked children inherited from their parent's bridges. Kept, never used: letting
# the garbage collector finalise them would close sockets and files the parent still uses.
_abandoned: list[tuple[asyncio.AbstractEventLoop, object]] = []
