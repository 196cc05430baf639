"""The held line: one pooled connection kept by the engine for one-statement calls that
come one at a time (a producer's `await app.enqueue(...)` in a loop).

Why: through the pool and psycopg's cursor a single enqueue cost about 410,000 client
instructions (callgrind), most of it not the enqueue: the pool's checkout and return
(locks, stats, logging, the connection's own `__aexit__`) about 100,000, and psycopg's
cursor with its wait, which registers the socket with the event loop, arms a timer and
unregisters it on every call, about 215,000. asyncpg, pgqueuer's driver, keeps its
socket registered for the connection's life. A `Line` does the same with libpq's calls
(`psycopg.pq`, psycopg's public libpq wrapper): the statement goes out as a named
prepared statement, and the reader callback, registered once, collects the results and
wakes the caller (bench/RESULTS.md, "pgclient").

What the caller can rely on:

* One call at a time: while a call is in flight `busy` is set, and the engine sends
  concurrent calls through its pool as before.
* Durable on return: the connection is in autocommit and the call is one statement, so
  it commits before the server's ReadyForQuery, which `rows` waits for (as psycopg's
  `execute` does).
* `rows` answers None when it did not get rows: the statement failed (it ran in its own
  transaction, which rolled back, so nothing changed), or the connection failed (the line
  is then closed and its connection goes back to the pool, which replaces it). The engine
  then runs the statement through the pool, where psycopg raises the exact error (or
  retries a deadlock, or says the server is unavailable). A statement that may run twice
  this way must be idempotent: an enqueue is, by its job ids.
* A cancelled call closes the line (its connection's state is unknown) and propagates.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Sequence
from typing import Any, Generic, TypeVar

import psycopg
from psycopg import pq
from psycopg.pq.abc import PGresult

__all__ = ["Line"]

# The pool's connection class (typed by the caller: line.py does not import connection.py)
C = TypeVar("C", bound=psycopg.AsyncConnection[Any])

Row = tuple[str | None, ...]

_COMMAND_OK = pq.ExecStatus.COMMAND_OK
_TUPLES_OK = pq.ExecStatus.TUPLES_OK
# Prepared statement names, unique per process: a line that closed may leave its
# statements on a session the pool keeps, and the next line must not collide with them.
_names = itertools.count(1)


def numbered(sql: str) -> bytes:
    """`sql` with psycopg's positional ``%s`` placeholders as libpq's ``$1, $2, ...``."""
    if "%(" in sql or "%%" in sql:
        raise ValueError("only positional %s placeholders can be held: " + sql)
    parts = sql.split("%s")
    out = [parts[0]]
    for index, part in enumerate(parts[1:], 1):
        out.append(f"${index}{part}")
    return "".join(out).encode()


def _param(value: Any) -> bytes | None:
    """A parameter in text format (what psycopg would send for str, int and None)."""
    if value is None or isinstance(value, bytes):
        return value
    return str(value).encode()


def _text_rows(res: PGresult) -> list[Row]:
    """A result's rows with each value decoded from text format (NULL as None)."""
    width = range(res.nfields)
    rows = []
    for r in range(res.ntuples):
        values = [res.get_value(r, c) for c in width]
        rows.append(tuple([None if v is None else v.decode() for v in values]))
    return rows


class Line(Generic[C]):
    """One connection taken from the pool, with its socket registered with the event loop
    for as long as the line is open. See the module docstring for the rules.

    Args:
        conn: a connection from the engine's pool (autocommit), not used by anyone else
            until `close` (then the engine returns it to the pool).
    """

    def __init__(self, conn: C) -> None:
        self.conn = conn
        self.busy = False
        self.closed = False
        self.told: frozenset[str] = frozenset()  # the quiet queues its session was told
        self._pg = conn.pgconn
        self._fd = self._pg.socket
        self.loop = asyncio.get_running_loop()  # the loop its socket is registered with
        self._prepared: dict[str, bytes] = {}  # query -> its prepared statement's name
        self._waiter: asyncio.Future[None] | None = None
        self._results: list[PGresult] = []
        self.loop.add_reader(self._fd, self._readable)

    async def rows(self, query: str, params: Sequence[Any]) -> list[Row] | None:
        """The rows of `query` (one statement, ``%s`` placeholders) run with `params`, in
        text format (a boolean is "t" or "f"); None when it did not run (see the module
        docstring).

        Raises:
            CancelledError: the caller was cancelled (the line is closed).
        """
        self.busy = True
        try:
            name = self._prepared.get(query)
            if name is None:
                name = f"conveyor_line_{next(_names)}".encode()
                self._pg.send_prepare(name, numbered(query))
                [res] = await self._round()
                if res.status != _COMMAND_OK:
                    return None
                self._prepared[query] = name
            self._pg.send_query_prepared(name, [_param(p) for p in params])
            [res] = await self._round()
            if res.status != _TUPLES_OK:
                # Its statement may have been deallocated (DISCARD): prepare it again.
                self._prepared.pop(query, None)
                return None
            return _text_rows(res)
        except psycopg.Error:  # the connection failed: the engine replaces the line
            self.close()
            return None
        except BaseException:  # cancelled mid-statement: the connection's state is unknown
            self.close()
            raise
        finally:
            self.busy = False

    async def _round(self) -> list[PGresult]:
        """The results of what was just sent, once the server said ReadyForQuery."""
        self._results = []
        waiter = self._waiter = self.loop.create_future()
        await waiter
        return self._results

    def _readable(self) -> None:
        """The socket has data: read it; with a call waiting, collect its results and
        wake it at the end of them. Idle data (a notice, a parameter change) is consumed;
        a broken connection closes the line, so the loop stops watching its socket."""
        try:
            self._pg.consume_input()
            waiter = self._waiter
            if waiter is None:
                return
            while not self._pg.is_busy():
                res = self._pg.get_result()
                if res is None:
                    self._waiter = None
                    if not waiter.done():
                        waiter.set_result(None)
                    return
                self._results.append(res)
        except psycopg.Error as exc:
            self.close(exc)

    def detach(self, exc: BaseException | None = None) -> None:
        """Stop watching the socket (a call in flight gets `exc`, or an OperationalError);
        the connection stays open, for the engine to return to the pool. Safe to call
        twice."""
        if self.closed:
            return
        self.closed = True
        self.loop.remove_reader(self._fd)
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc or psycopg.OperationalError("the held line was closed"))

    def close(self, exc: BaseException | None = None) -> None:
        """`detach`, and close the connection, whose state is unknown: the pool, given
        it back, replaces it."""
        self.detach(exc)
        self._pg.finish()
