"""One pipelined Redis connection for the hot path: script calls of producers and workers.

redis-py's asyncio client spends ~150 us of client CPU per command (pool checkout, retry
wrapper, a StreamReader, per-command timeouts), which made a single `enqueue` and a worker's
pickup latency cost twice BullMQ-on-Node's. The commands that decide those figures are few
(EVALSHA of `enqueue` and `exchange`, plus a rare SADD), so they travel on this lane:

    callers ──write──▶ [ one socket, replies in order ] ──▶ futures resolved FIFO
               (a call on an idle connection is sent at once; the commands written
               while calls are in flight go out in one send per loop iteration)

It speaks RESP2 with hiredis (the C parser redis-py itself uses) and nothing else: every
other command, TLS (`rediss://`) and pub/sub stay on redis-py. Failure semantics match the
pool's: a connection that dies fails the calls in flight with `ConnectionError` (their
outcome is unknown, like a read error in redis-py), and the next call reconnects; a reply
that takes longer than `timeout` closes the connection the same way.
"""

from __future__ import annotations

import asyncio
import collections
import socket
import time
from collections.abc import Sequence
from typing import Any, cast
from urllib.parse import parse_qsl, unquote, urlsplit

import hiredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

from ...errors import ConfigError
from .errors import reply_error

_WATCH_S = 1.0  # how often a connection with calls in flight checks the oldest one
# Defaults of the URL's `socket_connect_timeout` and `socket_timeout` (seconds): a stopped
# or frozen Redis fails an enqueue within about CONNECT_TIMEOUT_S or COMMAND_TIMEOUT_S
# (+ up to _WATCH_S), not after 30 s. The slowest script a Conveyor call sends (a
# 250-job enqueue chunk) takes a few ms, so 5 s is far from any legitimate reply.
CONNECT_TIMEOUT_S = 2.0
COMMAND_TIMEOUT_S = 5.0


def url_timeouts(url: str) -> tuple[float, float]:
    """(connect, command) timeouts in seconds from a Redis URL's query, with defaults.

    `?socket_connect_timeout=2&socket_timeout=5` are redis-py's own URL parameters; they
    apply to redis-py's pool and, through this function, to the lane as well.

    Raises:
        ConfigError: a value is not a number of seconds > 0.
    """
    query = dict(parse_qsl(urlsplit(url).query))
    out = []
    for name, default in (
        ("socket_connect_timeout", CONNECT_TIMEOUT_S),
        ("socket_timeout", COMMAND_TIMEOUT_S),
    ):
        raw = query.get(name)
        try:
            value = default if raw is None else float(raw)
        except ValueError:
            value = -1.0
        if not value > 0 or value == float("inf"):
            raise ConfigError(f"{name}={raw!r} in the Redis URL is invalid: use seconds > 0")
        out.append(value)
    return out[0], out[1]


# The first arguments of a command in RESP, without the leading "*<count>" line, and
# how many they are (see `pack_prefix`).
Prefix = tuple[int, bytes]


def pack_prefix(args: Sequence[Any]) -> Prefix:
    """The first arguments of commands that share them (EVALSHA, the script, its KEYS
    and ARGV header), packed once: a single enqueue then packs 12 arguments, not 45.

    >>> pack_prefix(("GET", "k"))
    (2, b'$3\\r\\nGET\\r\\n$1\\r\\nk\\r\\n')
    """
    packed = hiredis.pack_command(tuple(args))
    return len(args), packed[packed.index(b"\r\n") + 2 :]


def _error(reply: hiredis.ReplyError) -> ResponseError:
    """An error reply as redis-py's exception (classified by the engine, see errors.py)."""
    return reply_error(str(reply))


def _retrieve(fut: asyncio.Future[Any]) -> None:
    """Mark a finished future's error as seen (asyncio logs unseen ones)."""
    if not fut.cancelled():
        fut.exception()


class _Protocol(asyncio.Protocol):
    def __init__(self, timeout: float) -> None:
        self.reader = hiredis.Reader(encoding="utf-8", errors="replace")
        self.transport: asyncio.Transport | None = None
        self.waiters: collections.deque[tuple[asyncio.Future[Any], float]] = collections.deque()
        self.out: list[bytes] = []
        self.closed = False
        self.error: Exception | None = None
        self.timeout = timeout
        self.watch: asyncio.TimerHandle | None = None

    # asyncio callbacks --------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A cast, not an isinstance check: uvloop's transports are not asyncio classes.
        self.transport = cast(asyncio.Transport, transport)
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)

    def data_received(self, data: bytes) -> None:
        self.reader.feed(data)
        while self.waiters:
            reply = self.reader.gets()
            if reply is False:
                return
            fut, _ = self.waiters.popleft()
            if not fut.done():
                fut.set_result(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(RedisConnectionError(f"connection to Redis lost: {exc or 'closed by server'}"))

    # ---------------------------------------------------------------------------------
    def _fail(self, error: Exception) -> None:
        self.closed = True
        self.error = self.error or error
        if self.watch is not None:
            self.watch.cancel()
        while self.waiters:
            fut, _ = self.waiters.popleft()
            if not fut.done():
                fut.set_exception(self.error)

    def _flush(self) -> None:
        if self.transport is not None and self.out and not self.closed:
            self.transport.write(b"".join(self.out))
        self.out.clear()

    def _check(self) -> None:
        """Close a connection whose oldest call has waited longer than the timeout."""
        self.watch = None
        if not self.waiters or self.closed:
            return
        oldest = self.waiters[0][1]
        if time.monotonic() - oldest > self.timeout:
            self._fail(RedisConnectionError(f"Redis did not reply within {self.timeout:g} s"))
            if self.transport is not None:
                self.transport.abort()
            return
        self.watch = asyncio.get_running_loop().call_later(_WATCH_S, self._check)

    def send_one(self, packed: bytes) -> asyncio.Future[Any]:
        """`send([packed])[0]` without the lists (a single call's hot path)."""
        if self.waiters or self.out or self.closed or self.transport is None:
            return self.send([packed])[0]
        # Nothing in flight: written at once, as in `send`.
        self.transport.write(packed)
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        self.waiters.append((fut, time.monotonic()))
        if self.watch is None:
            self.watch = loop.call_later(_WATCH_S, self._check)
        return fut

    def send(self, packed: Sequence[bytes]) -> list[asyncio.Future[Any]]:
        loop = asyncio.get_running_loop()
        if not self.waiters and not self.out and not self.closed and self.transport is not None:
            # Nothing in flight: write now. A lone caller (a producer's loop of single
            # enqueues, a worker's exchange) saves the loop iteration a deferred flush
            # costs; callers that join while this is in flight are batched below. It
            # also keeps a worker's two exchanges apart when it sends both in one
            # iteration: sent in one write they were answered in one, and worker and
            # Redis then took turns for the whole run (W1 with 200+ slots a third slower
            # than with 100: bench/RESULTS.md, branch `concurrency`).
            self.transport.write(packed[0] if len(packed) == 1 else b"".join(packed))
        else:
            if not self.out:
                # Commands written during this loop iteration leave in one send.
                loop.call_soon(self._flush)
            self.out.extend(packed)
        now = time.monotonic()
        futs = [loop.create_future() for _ in packed]
        self.waiters.extend((f, now) for f in futs)
        if self.watch is None:
            self.watch = loop.call_later(_WATCH_S, self._check)
        return futs


class Lane:
    """The hot-path connection of one engine (one per event loop and process).

    Args:
        url: a `redis://` URL (host, port, optional user:password, optional /db).
        connect_timeout: seconds to wait for the TCP connection and the handshake.
        timeout: seconds a call may wait for its reply before the connection is closed.
    """

    def __init__(self, url: str, *, connect_timeout: float, timeout: float) -> None:
        parts = urlsplit(url)
        self._host = parts.hostname or "127.0.0.1"
        self._port = parts.port or 6379
        self._user = unquote(parts.username) if parts.username else None
        self._password = unquote(parts.password) if parts.password else None
        path = parts.path.strip("/")
        self._db = int(path) if path.isdigit() else 0
        self._connect_timeout = connect_timeout
        self._timeout = timeout
        self._proto: _Protocol | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._connecting: asyncio.Future[_Protocol] | None = None

    def sibling(self) -> Lane:
        """A new lane to the same server with the same settings (a connection of its own,
        for a blocking command that must not hold up this one's calls)."""
        twin = Lane.__new__(Lane)
        twin.__dict__.update(self.__dict__)
        twin._proto = twin._loop = twin._connecting = None
        return twin

    async def _connection(self) -> _Protocol:
        loop = asyncio.get_running_loop()
        proto = self._proto
        if proto is not None and not proto.closed and self._loop is loop:
            return proto
        if self._connecting is not None and self._loop is loop:
            return await asyncio.shield(self._connecting)
        self._loop = loop
        self._connecting = loop.create_future()
        try:
            proto = await asyncio.wait_for(self._open(loop), self._connect_timeout)
        except (TimeoutError, OSError) as exc:
            error = RedisConnectionError(
                f"cannot connect to Redis at {self._host}:{self._port}: {exc or 'timed out'}"
            )
            self._connecting.set_exception(error)
            self._connecting.exception()  # retrieved: the waiters got it via shield
            self._connecting = None
            raise error from exc
        except BaseException as exc:
            self._connecting.set_exception(exc)
            self._connecting.exception()
            self._connecting = None
            raise
        self._proto = proto
        self._connecting.set_result(proto)
        self._connecting = None
        return proto

    async def _open(self, loop: asyncio.AbstractEventLoop) -> _Protocol:
        timeout = self._timeout
        _, proto = await loop.create_connection(lambda: _Protocol(timeout), self._host, self._port)
        handshake: list[tuple[Any, ...]] = []
        if self._password is not None:
            handshake.append(
                ("AUTH", self._user, self._password) if self._user else ("AUTH", self._password)
            )
        if self._db:
            handshake.append(("SELECT", self._db))
        if handshake:
            futs = proto.send([hiredis.pack_command(cmd) for cmd in handshake])
            for reply in await asyncio.gather(*futs):
                if isinstance(reply, hiredis.ReplyError):
                    assert proto.transport is not None
                    proto.transport.close()
                    raise RedisConnectionError(f"Redis refused the connection set-up: {reply}")
        return proto

    async def call_many(self, commands: Sequence[tuple[Any, ...]]) -> list[Any]:
        """Send commands in one write; their replies in order. An error reply is returned
        as a `redis.exceptions.ResponseError` in its place, not raised.

        Raises:
            redis.exceptions.ConnectionError: Redis cannot be reached, or the connection
                died or timed out with these calls in flight (their outcome is unknown).
        """
        return await self.replies(await self.start(commands))

    async def start(self, commands: Sequence[tuple[Any, ...] | bytes]) -> list[asyncio.Future[Any]]:
        """Send commands (with this loop iteration's others, or at once on an idle
        connection) and return the futures of their replies without waiting for them:
        the caller works while Redis runs them, then reads them with `replies`.
        A command may come packed already (`bytes` from `pack`).

        Raises:
            redis.exceptions.ConnectionError: Redis cannot be reached.
        """
        proto = await self._connection()  # no suspension once connected
        return proto.send(
            [cmd if isinstance(cmd, bytes) else hiredis.pack_command(cmd) for cmd in commands]
        )

    @staticmethod
    def pack(commands: Sequence[tuple[Any, ...]]) -> list[bytes]:
        """`commands` packed for `start`: a caller that sends them once a reply it waits
        for arrives packs them before, while Redis is busy."""
        return [hiredis.pack_command(cmd) for cmd in commands]

    @staticmethod
    async def replies(futs: Sequence[asyncio.Future[Any]]) -> list[Any]:
        """The replies of `start`'s futures, as `call_many` returns them.

        Raises:
            redis.exceptions.ConnectionError: the connection died or timed out with
                these calls in flight (their outcome is unknown).
        """
        try:
            replies = [await f for f in futs]
        except BaseException:
            # A dead connection fails every future; the first raises, the rest are read
            # here so asyncio does not report them as never retrieved.
            for fut in futs:
                if fut.done() and not fut.cancelled():
                    fut.exception()
                elif not fut.done():  # cancelled while waiting: read it when it ends
                    fut.add_done_callback(_retrieve)
            raise
        return [_error(r) if isinstance(r, hiredis.ReplyError) else r for r in replies]

    async def call(self, *command: Any) -> Any:
        """One command; an error reply is raised as `ResponseError`."""
        return await self._call_packed(hiredis.pack_command(command))

    async def call_prefixed(self, prefix: Prefix, tail: Sequence[Any]) -> Any:
        """One command made of a packed `prefix` (see `pack_prefix`) and `tail` (at least
        one argument); an error reply is raised as `ResponseError`."""
        count, head = prefix
        body = hiredis.pack_command(tuple(tail))
        # pack_command's output starts with its own "*<count>\r\n": replaced.
        start = body.index(b"\r\n") + 2
        return await self._call_packed(b"*%d\r\n%b%b" % (count + len(tail), head, body[start:]))

    async def _call_packed(self, packed: bytes) -> Any:
        proto = self._proto
        if proto is None or proto.closed or self._loop is not asyncio.get_running_loop():
            proto = await self._connection()
        reply = await proto.send_one(packed)
        if isinstance(reply, hiredis.ReplyError):
            raise _error(reply)
        return reply

    def close(self) -> None:
        """Close the connection (calls in flight fail with ConnectionError)."""
        proto, self._proto = self._proto, None
        if proto is not None and proto.transport is not None:
            proto.transport.close()
