"""The Postgres engine's connections: the URL, the pool, transactions, errors, wake-ups.

`PgCore` is the base every part of the engine (flow, operations, read model,
coordination) builds on. It owns a psycopg 3 async connection pool (autocommit
connections: a call that is one statement, such as an exchange, an enqueue or a
heartbeat, runs as it is; a call of several statements runs in one explicit
transaction), one more connection that LISTENs for the engine's NOTIFY channel, and
the mapping of driver errors that mean "the server cannot be used right now" to
`EngineUnavailable`.

Time is the database's clock (`clock_ms()` in the schema, epoch milliseconds), so
every process of a fleet agrees on lease deadlines and due times whatever their own
clocks say. Tests that pass a `FakeClock` (any clock other than the real `Clock`)
drive the engine's time instead, as with the SQLite engine.

Wake-ups: every transaction that makes work claimable or adds events calls
``pg_notify`` on the engine's channel; Postgres delivers it at COMMIT (never for a
rolled-back transaction), to every process listening. If the listening connection
is lost, waiters fall back to polling every `POLL_INTERVAL_S` until it is back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
import weakref
from collections.abc import Awaitable, Callable, Iterable, Sequence
from collections.abc import Set as AbstractSet
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import psycopg
import psycopg.errors
from psycopg import AsyncConnection, AsyncCursor
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from ...clock import Clock
from ...errors import ConfigError, EngineUnavailable
from ...lifecycle import not_found
from ..sqlite.connection import Wake
from .line import Line, Row
from .migrations import migrate
from .queries import JOB_COLUMNS, for_schema
from .rules import install_rules

__all__ = ["PgCore", "parse_postgres_url"]

T = TypeVar("T")


class PooledConn(AsyncConnection[tuple[Any, ...]]):
    """A pooled connection that keeps one cursor for the engine's one-statement calls
    (enqueue, exchange): `conn.execute` makes a cursor per call, which cost about 30 us of
    client CPU per call here (bench/RESULTS.md, "pgenqueue"). The pool hands a
    connection to one caller at a time, so its cursor is never shared."""

    _hot: AsyncCursor[tuple[Any, ...]] | None = None

    def hot_cursor(self) -> AsyncCursor[tuple[Any, ...]]:
        """This connection's kept cursor (made on first use, or again once closed)."""
        cur = self._hot
        if cur is None or cur.closed:
            cur = self._hot = self.cursor()
        return cur


Conn = PooledConn
log = logging.getLogger("conveyor.engines.postgres")

DEFAULT_SCHEMA = "conveyor"
POLL_INTERVAL_S = 0.1  # wake-up polling while the LISTEN connection is down
CONNECT_TIMEOUT_S = 5
POOL_MAX = 8
# Deadlocks and serialisation failures are retried: the transaction changed nothing.
_RETRIES = 5
# Names the queues whose events the `unstreamed_events` trigger drops, for the session.
_TELL = "SELECT set_config('conveyor.unstreamed', %s, false)"
_SCHEMA_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")


def parse_postgres_url(url: str) -> tuple[str, str]:
    """(libpq connection URL without `schema`, schema name) of a ``postgresql://`` URL.

    Raises:
        ConfigError: not a postgresql:// URL, or the schema is not a plain identifier.
    """
    parts = urlsplit(url)
    if parts.scheme not in ("postgresql", "postgres"):
        raise ConfigError(
            f"Postgres URL {url!r} is not supported: use "
            "postgresql://user:password@host:5432/dbname?schema=conveyor"
        )
    query = parse_qsl(parts.query, keep_blank_values=True)
    schema = DEFAULT_SCHEMA
    rest = []
    for key, value in query:
        if key == "schema":
            schema = value
        else:
            rest.append((key, value))
    if not _SCHEMA_NAME.match(schema):
        raise ConfigError(
            f"schema={schema!r} in {url!r} is invalid: use letters, digits and _ "
            "(not starting with a digit, at most 63 characters), e.g. ?schema=conveyor"
        )
    conninfo = urlunsplit(("postgresql", parts.netloc, parts.path, urlencode(rest), ""))
    return conninfo, schema


def _redacted(conninfo: str) -> str:
    parts = urlsplit(conninfo)
    host = parts.hostname or "localhost"
    port = f":{parts.port}" if parts.port else ""
    return f"postgresql://{host}{port}{parts.path}"


def event_row(
    queue: str,
    kind: str,
    job_id: str,
    task: str | None,
    tenant: str | None,
    attempt: int | None,
    at_ms: int,
    data: str | None = None,
) -> tuple[Any, ...]:
    """An event as `insert_event` takes it."""
    return (queue, kind, job_id, task, tenant, attempt, at_ms, data)


class PgCore:
    """The pool, the listener and the helpers every part of the engine shares.

    Args:
        url: ``postgresql://user:password@host:5432/dbname?schema=conveyor``.
        clock: None or the real `Clock` = the database's clock; a `FakeClock` (tests)
            decides due times and lease deadlines instead.
        events_maxlen: events kept per queue (older ones are trimmed in batches).

    Raises:
        ConfigError: the URL is malformed.
    """

    durable = True

    def __init__(
        self, url: str, *, clock: Clock | None = None, events_maxlen: int = 10_000
    ) -> None:
        self.url = url
        self.conninfo, self.schema = parse_postgres_url(url)
        self.schema_sql = '"' + self.schema + '"'
        self.channel = f"conveyor:{self.schema}"
        self.fixed_clock = clock if clock is not None and type(clock) is not Clock else None
        self.q = for_schema(self.schema_sql)
        self.unstreamed: AbstractSet[str] = frozenset()  # see Engine.unstreamed
        # What each pooled session was told of `unstreamed` (`_tell`); a new session
        # was told nothing, which is the empty set.
        self._told: weakref.WeakKeyDictionary[Conn, frozenset[str]] = weakref.WeakKeyDictionary()
        self._events_maxlen = max(1, events_maxlen)
        # Each trim finds its cut-off by walking back over the `maxlen` newest events, so
        # it costs about maxlen + trim_every rows: every maxlen / 2 events that is 3 rows
        # read per event written, where every maxlen / 10 it was 11 (bench/RESULTS.md, pgw1).
        self._trim_every = max(64, self._events_maxlen // 2)
        self._events_since_trim = 0
        self._trim_queues: set[str] = set()
        self._trimmer: asyncio.Task[None] | None = None  # see _trim_soon
        self._pool: AsyncConnectionPool[Conn] | None = None
        self._line: Line[PooledConn] | None = None  # see _held_rows
        self._holding = False  # a line is being taken from the pool
        self._listener: asyncio.Task[None] | None = None
        self._listening = False
        self._listen_ready = asyncio.Event()
        self._jobs_wake = Wake()
        self._events_wake = Wake()
        self._outbox_wake = Wake()  # outbox rows were committed (relays)
        self._exchange_generation: int | None = None
        self._start_lock: asyncio.Lock | None = None
        self._closes = 0

    # --- opening and closing --------------------------------------------------------------
    def _unavailable(self, exc: BaseException) -> EngineUnavailable:
        return EngineUnavailable(
            f"Postgres at {_redacted(self.conninfo)} is unavailable ({exc}): check that the "
            "server runs and accepts connections from this host with these credentials "
            "(CONVEYOR_URL=postgresql://user:password@host:5432/dbname?schema=conveyor)"
        )

    async def _tell(self, conn: Conn) -> None:
        """Name to a pooled session the queues whose events the `unstreamed_events`
        trigger drops (lifecycle rule 7, migration 0008). Checked at each checkout
        against the app's live set, so a queue declared quiet (or loud again) after the
        pool opened reaches every open session; the round trip is paid only when the
        set changed since that session was told, never per exchange."""
        quiet = frozenset(self.unstreamed)
        await conn.execute(_TELL, (",".join(sorted(quiet)),))
        self._told[conn] = quiet

    async def connect(self) -> None:
        """Open the pool, create/upgrade the schema and start listening for wake-ups.

        Raises:
            EngineUnavailable: the server cannot be reached (`SchemaTooNew` when a newer
                Conveyor migrated the schema).
        """
        if self._start_lock is None:
            self._start_lock = asyncio.Lock()
        async with self._start_lock:
            if self._pool is not None:
                return
            try:
                conn = await AsyncConnection.connect(
                    self.conninfo, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S
                )
            except psycopg.OperationalError as exc:
                raise self._unavailable(exc) from exc
            try:
                await migrate(conn, self.schema, self.schema_sql, _literal(self.channel))
                await install_rules(conn, self.schema, self.schema_sql)
            except psycopg.OperationalError as exc:
                raise self._unavailable(exc) from exc
            finally:
                await conn.close()
            pool: AsyncConnectionPool[Conn] = AsyncConnectionPool(
                self.conninfo,
                min_size=1,
                max_size=POOL_MAX,
                kwargs={"autocommit": True, "connect_timeout": CONNECT_TIMEOUT_S},
                connection_class=PooledConn,
                timeout=CONNECT_TIMEOUT_S,
                open=False,
                name=f"conveyor-{self.schema}",
            )
            try:
                await pool.open(wait=True, timeout=CONNECT_TIMEOUT_S * 2)
            except (PoolTimeout, psycopg.OperationalError) as exc:
                await pool.close()
                raise self._unavailable(exc) from exc
            self._pool = pool
            # No LISTEN yet: see `_listen_from_now`.

    async def _listen_from_now(self) -> None:
        """Start listening for wake-ups, once per open pool, and return once the LISTEN
        is in place. Called before the first read whose outcome may lead to a wait (an
        exchange, an event read) and by every wait, so a NOTIFY between that read and
        the wait is not lost. A process that only enqueues never listens: it would
        otherwise receive (and wake up for) the two NOTIFYs of each of its own enqueues,
        about 100 us of CPU per job measured (bench/RESULTS.md, "pgenqueue")."""
        if self._listener is not None:
            return
        if self._pool is None:
            await self.connect()
        self._listen_ready = asyncio.Event()
        self._listener = asyncio.create_task(self._listen(), name="conveyor-pg-listen")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._listen_ready.wait(), CONNECT_TIMEOUT_S)

    async def close(self) -> None:
        """Close the pool and the listener. Safe to call twice; pending waits return."""
        pool, self._pool = self._pool, None
        listener, self._listener = self._listener, None
        self._closes += 1
        self._listening = False
        self._jobs_wake.notify()
        self._events_wake.notify()
        self._outbox_wake.notify()
        await self._release_line(pool)
        for task in (listener, self._trimmer):
            if task is not None:
                task.cancel()  # a trim cut short is redone by a later one
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        if pool is not None:
            await pool.close()

    async def ping(self) -> float:
        """Round-trip time of a trivial query, in seconds. Raises `EngineUnavailable`."""
        start = time.perf_counter()

        async def one(conn: Conn) -> None:
            await conn.execute("SELECT 1")

        await self._run(one)
        return time.perf_counter() - start

    async def _listen(self) -> None:
        """LISTEN on the engine's channel and turn notifications into wake-ups; reconnect
        with backoff when the connection drops (waiters poll meanwhile)."""
        delay = 0.1
        reconnected = False
        while True:
            try:
                conn = await AsyncConnection.connect(
                    self.conninfo, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S
                )
                async with conn:
                    await conn.execute(f"LISTEN {_ident(self.channel)}")
                    await self._hand_offs_on(conn)
                    if reconnected:
                        # Anything committed while we were not listening: wake everyone,
                        # and take the jobs handed to our workers meanwhile.
                        self._jobs_wake.notify()
                        self._events_wake.notify()
                        self._outbox_wake.notify()
                        await self._handed_missed()
                    self._listening = True
                    self._listen_ready.set()
                    reconnected = True
                    delay = 0.1
                    async for note in conn.notifies():
                        if note.channel == self._hand_channel:
                            self._handed_note(note.payload)
                        elif note.payload == "jobs":
                            self._jobs_wake.notify()
                        elif note.payload == "outbox":
                            self._outbox_wake.notify()
                        else:
                            self._events_wake.notify()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # keep listening: waiters poll until we are back
                log.warning("Postgres LISTEN connection lost (%s); retrying in %.1fs", exc, delay)
            self._listening = False
            self._hand_channel = None
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)

    # --- the one-hop pickup's hooks (pickup.py) ----------------------------------------------
    _hand_channel: str | None = None

    async def _hand_offs_on(self, conn: AsyncConnection[Any]) -> None:
        """A new LISTEN session: set up the hand-off channel on it (pickup.py)."""

    async def _handed_missed(self) -> None:
        """The listener reconnected: take the jobs handed meanwhile (pickup.py)."""

    def _handed_note(self, payload: str) -> None:
        """A notification on the hand-off channel (pickup.py)."""

    # --- transactions ---------------------------------------------------------------------
    async def _run(self, fn: Callable[[Conn], Awaitable[T]], *, single: bool = False) -> T:
        """Run `fn(conn)` in one transaction on a pooled connection.

        `single=True` is for an `fn` that runs one statement: it runs in autocommit
        (its own implicit transaction), saving the BEGIN and COMMIT round trips.
        Deadlocks and serialisation failures are retried (the transaction was rolled
        back, nothing changed); connection trouble becomes `EngineUnavailable`.
        """
        if self._pool is None:
            await self.connect()
        pool = self._pool
        if pool is None:
            raise EngineUnavailable(f"Postgres engine for {_redacted(self.conninfo)} is closed")
        for attempt in range(_RETRIES):
            try:
                async with pool.connection() as conn:
                    if self._told.get(conn, frozenset()) != self.unstreamed:
                        await self._tell(conn)
                    if single:
                        return await fn(conn)
                    async with conn.transaction():
                        return await fn(conn)
            except (psycopg.errors.DeadlockDetected, psycopg.errors.SerializationFailure):
                if attempt == _RETRIES - 1:
                    raise
                await asyncio.sleep(0.005 * (attempt + 1))
            except (PoolTimeout, psycopg.OperationalError) as exc:
                raise self._unavailable(exc) from exc
        raise AssertionError("unreachable")

    async def _held_rows(self, query: str, params: Sequence[Any]) -> list[Row] | None:
        """The rows of `query`, one statement run with `params`, on the held line (line.py:
        no pool round, no cursor), taken from the pool at the first call; None when the
        line cannot take it now (another call is on it, or it is being taken) or the
        statement did not run there: the caller then runs it through the pool (`_run`),
        so `query` must be safe to run twice (see line.py)."""
        line = self._line
        if line is None or line.closed:
            line = await self._hold()
            if line is None:
                return None
        if line.busy or line.loop is not asyncio.get_running_loop():
            return None
        if line.told != self.unstreamed:  # as `_tell` does for the pool's sessions
            quiet = frozenset(self.unstreamed)
            if await line.rows(_TELL, (",".join(sorted(quiet)),)) is None:
                return None
            line.told = quiet
        return await line.rows(query, params)

    async def _hold(self) -> Line[PooledConn] | None:
        """A new held line, replacing a closed one (None while one is being taken, or
        when the pool has no connection to give: the pool's path then says why)."""
        pool = self._pool
        await self._release_line(pool)
        if self._holding or pool is None:
            return None
        self._holding = True
        try:
            conn = await pool.getconn()
        except (PoolTimeout, psycopg.OperationalError):
            return None
        finally:
            self._holding = False
        try:
            if pool is not self._pool:  # closed meanwhile
                raise psycopg.OperationalError("the engine closed")
            line = self._line = Line(conn)
        except psycopg.Error:  # e.g. a connection the server dropped while in the pool
            await pool.putconn(conn)
            return None
        line.told = self._told.get(conn, frozenset())
        return line

    async def _release_line(self, pool: AsyncConnectionPool[Conn] | None) -> None:
        """Give the held line's connection back to `pool` (which replaces it if the line
        closed it)."""
        line, self._line = self._line, None
        if line is None:
            return
        line.detach()
        if pool is not None:
            with contextlib.suppress(Exception):  # the pool is closing: it closes it
                await pool.putconn(line.conn)

    @property
    def _fixed(self) -> int | None:
        """The fake clock's time for SQL functions' `p_now` (None: the database's)."""
        return None if self.fixed_clock is None else self.fixed_clock.now_ms()

    async def _now(self, conn: Conn) -> int:
        """The engine's clock in epoch ms (the database's, or the test's fake clock)."""
        if self.fixed_clock is not None:
            return self.fixed_clock.now_ms()
        cur = await conn.execute(self.q["clock"])
        row = await cur.fetchone()
        assert row is not None
        return int(row[0])

    def _notify(self, *, jobs: bool = False, events: bool = False) -> None:
        """Wake this process's own waiters at once (others hear the NOTIFY)."""
        if jobs:
            self._jobs_wake.notify()
        if events:
            self._events_wake.notify()

    async def _send(self, conn: Conn, *, jobs: bool = False, events: bool = False) -> None:
        """NOTIFY the other processes (delivered when this transaction commits)."""
        if jobs:
            await conn.execute(self.q["notify"], (self.channel, "jobs"))
        if events:
            await conn.execute(self.q["notify"], (self.channel, "events"))

    async def _wait(self, wake: Wake, generation: int, seconds: float) -> None:
        """Return when `wake` moved past `generation`, or after `seconds` (or one polling
        interval while the LISTEN connection is down)."""
        if wake.generation != generation or seconds <= 0:
            return
        await self._listen_from_now()
        if not self._listening:
            seconds = min(seconds, POLL_INTERVAL_S)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(wake.current().wait(), seconds)

    # --- helpers used inside transactions -------------------------------------------------
    async def _add_events(self, conn: Conn, rows: Sequence[tuple[Any, ...]]) -> None:
        """Insert event rows (queue first), NOTIFY, and trim touched queues now and then."""
        if not rows:
            return
        async with conn.cursor() as cur:
            await cur.executemany(self.q["insert_event"], rows)
        await self._send(conn, events=True)
        self._count_events(len(rows), {row[0] for row in rows})

    def _count_events(self, n: int, queues: Iterable[str]) -> None:
        """Note `n` events added to `queues` (`_trim_if_due` trims them later)."""
        if n:
            self._events_since_trim += n
            self._trim_queues.update(queues)

    def _trim_soon(self) -> None:
        """Start `_trim_if_due` beside the caller when it is due, one at a time.

        Not awaited by the exchange that made it due: that exchange's claimed jobs
        would wait for the DELETEs and their commit (3.6-6.8 ms measured under load,
        once per `_trim_every` events: a W2 pickup in every run paid it). A failed trim
        is logged; the next one due deletes what this one left.
        """
        if self._events_since_trim < self._trim_every:
            return
        if self._trimmer is not None and not self._trimmer.done():
            return
        self._trimmer = asyncio.create_task(self._trim_logged(), name="conveyor-pg-trim")

    async def _trim_logged(self) -> None:
        try:
            await self._trim_if_due()
        except Exception as exc:
            log.warning("trimming the Postgres event log failed (%s); will retry", exc)

    async def _trim_if_due(self) -> None:
        """Trim the touched queues' event logs to `events_maxlen` once per
        `_trim_every` events: one indexed DELETE amortised over many events, in a
        transaction of its own (the log may briefly hold maxlen + trim_every rows)."""
        if self._events_since_trim < self._trim_every:
            return
        queues = sorted(self._trim_queues)
        self._events_since_trim = 0
        self._trim_queues.clear()

        async def trim(conn: Conn) -> None:
            for queue in queues:
                await conn.execute(
                    self.q["trim_events"], {"queue": queue, "keep": self._events_maxlen}
                )
            await conn.execute(self.q["trim_event_commits"])

        await self._run(trim)

    @staticmethod
    def _fields(row: Sequence[Any]) -> dict[str, Any]:
        # strict=False: listing rows carry a trailing rid for the cursor.
        return dict(zip(JOB_COLUMNS, row, strict=False))

    async def _load(self, conn: Conn, job_id: str, *, lock: bool = False) -> dict[str, Any]:
        cur = await conn.execute(self.q["load_job_for_update" if lock else "load_job"], (job_id,))
        row = await cur.fetchone()
        if row is None:
            raise not_found(job_id)
        return self._fields(row)


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"
