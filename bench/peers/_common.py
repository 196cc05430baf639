"""Shared pieces for the Python peers: the completion rule and the job payload.

Completion rule (the same for every library): the handler does exactly one
``INCR bench:done`` on its own Redis connection when the job's work is finished. A latency job
(``t != 0``) first does ``RPUSH bench:lat <start_ns - t>``. An io job (``s != 0``) first sleeps
``s`` milliseconds (``asyncio.sleep`` in async libraries, ``time.sleep`` in threaded ones).

Every job takes two positional integers: ``t`` (enqueue time in ``time.time_ns()``, 0 when the
workload does not measure latency) and ``s`` (milliseconds to sleep, 0 for noop jobs). A
CPU-bound job (W6) has ``s < 0``: it does ``-s`` milliseconds' worth of pure-Python work
(`burn_cpu`, a fixed amount of work, so every library does exactly the same) instead.
"""

from __future__ import annotations

import asyncio
import collections
import os
import socket
import threading
import time
from typing import cast
from urllib.parse import urlsplit

import redis

DONE_KEY = "bench:done"
LAT_KEY = "bench:lat"
QUEUE = os.environ.get("BENCH_QUEUE", "bench")


# Loop iterations of `burn_cpu` per millisecond on the 2-core reference machine (the fastest
# of 30 runs of 20,000 iterations, idle: 0.85 ms). Fixed work, not a timer: a loaded machine
# takes longer for every library alike.
CPU_ITERATIONS_PER_MS = 23_500


def burn_cpu(ms: int) -> int:
    """About `ms` milliseconds of pure-Python CPU work (holds the GIL throughout)."""
    x = 0
    for i in range(ms * CPU_ITERATIONS_PER_MS):
        x += i * i % 7
    return x


def redis_url() -> str:
    return os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6390/0")


def concurrency() -> int:
    return int(os.environ.get("BENCH_CONCURRENCY", "10"))


def _db() -> int:
    path = urlsplit(redis_url()).path.strip("/")
    return int(path) if path else 0


def _command(*args: str | int) -> bytes:
    """One command in RESP (the protocol is small enough to write by hand for two commands)."""
    parts = [f"*{len(args)}\r\n".encode()]
    for arg in args:
        data = str(arg).encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(parts)


INCR_DONE = _command("INCR", DONE_KEY)

# The completion marker is the harness's cost, not the library's, so it is made as cheap as
# the protocol allows and identical for every Python library: a raw socket per thread (sync)
# or one pipelined connection per event loop (async) whose writes are flushed once per loop
# iteration, like ioredis for the Node peer. Both commands reply with one integer line, so
# counting CRLFs is the whole parser. (redis-py's per-command overhead was up to 2/3 of a
# fast library's time per job, which measured redis-py rather than the library.)
_sync = threading.local()


def _sync_socket() -> socket.socket:
    sock: socket.socket | None = getattr(_sync, "sock", None)
    if sock is None or getattr(_sync, "pid", 0) != os.getpid():  # recreated after a fork
        url = urlsplit(redis_url())
        sock = socket.create_connection((url.hostname or "127.0.0.1", url.port or 6379))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if _db():
            _sync_call(sock, _command("SELECT", _db()), 1)
        _sync.sock, _sync.pid = sock, os.getpid()
    return sock


def _sync_call(sock: socket.socket, payload: bytes, replies: int) -> None:
    sock.sendall(payload)
    buf = b""
    while buf.count(b"\r\n") < replies:
        chunk = sock.recv(4096)
        if not chunk:
            raise ConnectionError("redis closed the marker connection")
        buf += chunk
    if buf.startswith(b"-") or b"\r\n-" in buf:
        raise RuntimeError(f"redis marker error: {buf!r}")


def mark_done_sync(t: int, s: int, client: redis.Redis | None = None) -> None:
    """``client``: use this redis-py client instead (rq forks a process per job, and a
    fresh socket per fork would be a connect per job)."""
    start = time.time_ns()
    if s > 0:
        time.sleep(s / 1000)
    elif s < 0:
        burn_cpu(-s)
    if client is not None:
        if t:
            client.rpush(LAT_KEY, start - t)
        client.incr(DONE_KEY)
        return
    payload = (_command("RPUSH", LAT_KEY, start - t) if t else b"") + INCR_DONE
    _sync_call(_sync_socket(), payload, 2 if t else 1)


class _Marker(asyncio.Protocol):
    """One pipelined connection: replies arrive in order, one line each."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.waiters: collections.deque[asyncio.Future[None]] = collections.deque()
        self.out: list[bytes] = []
        self.buf = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A cast, not an isinstance check: uvloop's transports are not asyncio classes.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.buf += data
        *lines, self.buf = self.buf.split(b"\r\n")
        for line in lines:
            fut = self.waiters.popleft()
            if line.startswith(b"-"):
                fut.set_exception(RuntimeError(f"redis marker error: {line!r}"))
            elif not fut.done():
                fut.set_result(None)

    def connection_lost(self, exc: Exception | None) -> None:
        while self.waiters:
            fut = self.waiters.popleft()
            if not fut.done():
                fut.set_exception(ConnectionError(f"marker connection lost: {exc}"))

    def _flush(self) -> None:
        assert self.transport is not None
        self.transport.write(b"".join(self.out))
        self.out.clear()

    def call(self, payload: bytes, replies: int) -> asyncio.Future[None]:
        loop = asyncio.get_running_loop()
        if not self.out:
            loop.call_soon(self._flush)
        self.out.append(payload)
        fut: asyncio.Future[None] = loop.create_future()
        for _ in range(replies - 1):  # only the last reply is awaited; earlier ones are
            done: asyncio.Future[None] = loop.create_future()  # checked for errors
            done.add_done_callback(lambda f: f.exception())
            self.waiters.append(done)
        self.waiters.append(fut)
        return fut


_markers: dict[int, asyncio.Future[_Marker]] = {}


async def _async_marker() -> _Marker:
    key = id(asyncio.get_running_loop()) ^ os.getpid()
    pending = _markers.get(key)
    if pending is None:  # the first caller connects; concurrent first callers wait for it
        loop = asyncio.get_running_loop()
        pending = _markers[key] = loop.create_future()
        url = urlsplit(redis_url())
        try:
            _, marker = await loop.create_connection(
                _Marker, url.hostname or "127.0.0.1", url.port or 6379
            )
        except BaseException as exc:
            del _markers[key]
            pending.set_exception(exc)
            raise
        if _db():
            await marker.call(_command("SELECT", _db()), 1)
        pending.set_result(marker)
    return await pending


async def mark_done_async(t: int, s: int) -> None:
    start = time.time_ns()
    marker = await _async_marker()
    if s > 0:
        await asyncio.sleep(s / 1000)
    elif s < 0:
        burn_cpu(-s)
    payload = (_command("RPUSH", LAT_KEY, start - t) if t else b"") + INCR_DONE
    await marker.call(payload, 2 if t else 1)
