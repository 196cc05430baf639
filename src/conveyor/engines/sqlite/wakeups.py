"""Cross-process wake-ups for the SQLite engine: a Unix datagram socket per waiting
engine, in a directory beside the database file.

SQLite tells no other process that a commit happened. Without help, an idle worker in
another process learns of a new job only by polling ``PRAGMA data_version`` (every
15 ms: that is the whole of its pickup latency). Instead:

* an engine that waits for jobs binds ``<db file>-wake/<pid>-<random>.sock`` (once, on
  its first wait) and has its event loop read it; a datagram there wakes its waiters;
* after a commit that may make work claimable (anything that notifies the engine's own
  waiters: enqueue, release, retry, resume, ...), the engine sends one empty-ish
  datagram to every other socket in the directory, at most once per event-loop turn
  however many callers a group commit answered;
* a send refused with ``ECONNREFUSED`` means nobody is bound there any more: the worker
  was killed without closing its engine, so the file is unlinked (stale sockets are
  cleaned by whoever pokes them next); a full queue (``EAGAIN``) means that worker has a
  wake-up waiting already, which is all a poke says.

A poke is a hint, not a message: it carries nothing, and the waiter still reads storage.
Waiters keep a slow ``data_version`` poll (`SAFETY_POLL_S`) as a safety net, and fall back
to the 15 ms poll where there is no socket: ``memory://`` (nobody else can commit),
platforms without ``AF_UNIX`` datagrams, a directory that cannot be created, or a path
longer than the 107 bytes a socket address holds.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import socket
import time
from collections.abc import Callable
from pathlib import Path

__all__ = ["SAFETY_POLL_S", "WakeSockets", "wake_dir"]

# With a socket bound, storage is still polled this often: covers a producer that cannot
# poke (an older Conveyor on the same file, a directory it may not write).
SAFETY_POLL_S = 0.5
_SUFFIX = ".sock"
_MAX_SOCKET_PATH = 107  # sun_path is 108 bytes on Linux, NUL included (104 on macOS)
_POKE = b"!"
# A listing of the wake-up directory is reused while its mtime stays the same, but only
# once it was taken this long after that mtime (mtimes tick coarsely: see `_names`).
_RACY_NS = 1_000_000_000


def wake_dir(db_path: Path) -> Path:
    """The directory of wake-up sockets for the database at `db_path`."""
    return db_path.parent / (db_path.name + "-wake")


class WakeSockets:
    """This process's wake-up socket for one database file, and the poking of others.

    Args:
        db_path: the database file (made absolute now: the sockets must be found by
            the same name from every process, whatever its working directory).
    """

    def __init__(self, db_path: Path) -> None:
        self.dir = wake_dir(db_path.absolute())
        self.unavailable: str | None = (
            None if hasattr(socket, "AF_UNIX") else "no AF_UNIX sockets on this platform"
        )
        self._own: socket.socket | None = None
        self._own_name = ""
        self._owner_pid = 0
        self._reader_loop: asyncio.AbstractEventLoop | None = None
        self._sender: socket.socket | None = None
        self._poke_scheduled = False
        # The last listing of `dir` and the mtime it was taken at (see `_names`).
        self._listing: list[str] = []
        self._listing_mtime = -1
        self._listing_at = 0  # time.time_ns() just before that listing

    # --- the waiting side -------------------------------------------------------------------
    def listen(self, on_wake: Callable[[], None]) -> bool | None:
        """Make sure this engine's socket is bound and read by the running event loop,
        calling `on_wake` when a datagram arrives.

        Returns:
            None when sockets are unavailable here (poll instead), True when the socket
            was bound just now (a commit before this moment poked nobody: the caller
            must check storage once), False when it was listening already.
        """
        if self.unavailable is not None:
            return None
        fresh = False
        if self._own is None or self._owner_pid != os.getpid():
            if not self._bind():
                return None
            fresh = True
        loop = asyncio.get_running_loop()
        if self._reader_loop is not loop:
            self._detach()
            own = self._own
            assert own is not None
            loop.add_reader(own.fileno(), self._readable, own, on_wake)
            self._reader_loop = loop
        return fresh

    def _bind(self) -> bool:
        """Bind a fresh socket; on failure record why and return False (poll instead)."""
        if self._own is not None and self._owner_pid != os.getpid():
            # Inherited through fork: the parent still owns that socket and its file.
            self._own.close()
            self._own, self._reader_loop = None, None
        name = f"{os.getpid()}-{secrets.token_hex(4)}{_SUFFIX}"
        path = self.dir / name
        if len(os.fsencode(path)) > _MAX_SOCKET_PATH:
            self.unavailable = f"socket path {path} is longer than {_MAX_SOCKET_PATH} bytes"
            return False
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            self.dir.mkdir(exist_ok=True)
            sock.bind(str(path))
            sock.setblocking(False)
        except OSError as exc:
            sock.close()
            self.unavailable = f"cannot bind a wake-up socket in {self.dir} ({exc})"
            return False
        self._own, self._own_name, self._owner_pid = sock, name, os.getpid()
        return True

    @staticmethod
    def _readable(sock: socket.socket, on_wake: Callable[[], None]) -> None:
        """Drain every queued poke (one wake-up for all of them), then wake."""
        while True:
            try:
                sock.recv(16)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:  # closed under us (engine closing): nothing to wake
                return
        on_wake()

    def _detach(self) -> None:
        """Stop the event loop that read the socket so far from reading it."""
        loop, self._reader_loop = self._reader_loop, None
        if loop is None or self._own is None or loop.is_closed():
            return
        fd = self._own.fileno()
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            loop.remove_reader(fd)
        else:  # another thread's loop: only that thread may touch its selector
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(loop.remove_reader, fd)

    def close(self) -> None:
        """Send a poke still waiting for its loop turn (the process may be about to
        exit), stop listening and remove this engine's socket file."""
        if self._poke_scheduled:
            self._poke_scheduled = False  # the scheduled `_flush` then pokes once more: harmless
            self.poke()
        if self._own is None:
            return
        if self._owner_pid == os.getpid():
            self._detach()
            with contextlib.suppress(OSError):
                (self.dir / self._own_name).unlink()
        self._own.close()
        self._own, self._reader_loop = None, None

    # --- the poking side --------------------------------------------------------------------
    def poke_soon(self) -> None:
        """Poke every other waiting engine, once per event-loop turn (a group commit
        answers many callers, each of which notifies)."""
        if self._poke_scheduled:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # called outside a loop: poke now
            self.poke()
            return
        self._poke_scheduled = True
        loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._poke_scheduled = False
        self.poke()

    def poke(self) -> None:
        """Send one datagram to every socket in the directory except this engine's own;
        unlink the ones nobody is bound to any more."""
        if self.unavailable == "no AF_UNIX sockets on this platform":
            return
        names = self._names()
        if not names:
            return
        if self._sender is None:
            self._sender = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            self._sender.setblocking(False)
        own = self._own_name if self._own is not None else None
        for name in names:
            if name == own or not name.endswith(_SUFFIX):
                continue
            path = os.path.join(self.dir, name)
            try:
                self._sender.sendto(_POKE, path)
            except (BlockingIOError, InterruptedError):
                pass  # its queue is full: that worker has a wake-up waiting already
            except ConnectionRefusedError:
                # Nobody is bound there: a worker killed without closing its engine.
                with contextlib.suppress(OSError):
                    os.unlink(path)
            except OSError:
                pass  # vanished meanwhile, or not ours to write: not our business

    def _names(self) -> list[str]:
        """The directory's entries, listed again only when it may have changed: a
        ``stat`` per poke instead of a listing. Binding, closing or unlinking a socket
        moves the directory's mtime; but mtimes come from a coarse clock, so a listing
        is trusted only when it was taken `_RACY_NS` after that mtime (a socket bound in
        the same tick as the listing cannot hide behind an unchanged mtime)."""
        try:
            mtime = os.stat(self.dir).st_mtime_ns
        except OSError:  # no directory: no worker has waited on this file yet
            return []
        if mtime != self._listing_mtime or self._listing_at - mtime < _RACY_NS:
            now = time.time_ns()  # read before listing: the listing is at least this fresh
            try:
                self._listing = os.listdir(self.dir)
            except OSError:
                return []
            self._listing_mtime, self._listing_at = mtime, now
        return self._listing
