"""The SQLite engine's connection: opening the file, one thread, transactions, errors.

`SqliteCore` is the base every part of the engine (flow, operations, read model,
coordination) builds on: it owns the one connection, runs every call on the engine's
own thread, wraps writes in ``BEGIN IMMEDIATE`` and turns driver errors that mean
"the file cannot be used right now" into `EngineUnavailable` with the fix.

Durability: WAL journal. Enqueues and operator actions commit with
``synchronous=FULL`` (the WAL is fsynced before `enqueue` returns, so an acknowledged
job survives a power loss; ``NORMAL`` only syncs at checkpoints in WAL mode, and is
what ``?synchronous=normal`` in the URL asks for, see docs/reliability.md). The
worker hot path (claims, acks, heartbeats, progress) commits with ``NORMAL``: losing
one of those to a power cut only makes a job run again, which at-least-once allows,
and the next FULL commit syncs them too (0.27 ms vs 0.41 ms per one-job exchange on
the dev VM). Writes that wait for the engine's thread at the same moment are committed
together (`group_commit`): one transaction and one fsync for all of them, each caller
answered only after that commit.

``memory://`` is the same engine on a private in-memory database: one connection that
outlives `close` (the data lives as long as the engine object), no WAL, not durable.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from collections.abc import Set as AbstractSet
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import orjson

from ...clock import Clock
from ...errors import ConfigError, EngineUnavailable
from ...lifecycle import not_found, writes_events
from .group_commit import GroupCommit, Write
from .migrations import migrate
from .queries import JOB_COLUMNS, QUERIES
from .wakeups import SAFETY_POLL_S, WakeSockets

T = TypeVar("T")
Q = QUERIES

# UPDATE ... RETURNING (claims, fenced outcomes) arrived in SQLite 3.35 (2021).
MIN_SQLITE = (3, 35, 0)
BUSY_TIMEOUT_MS = 5_000
POLL_INTERVAL_S = 0.015  # data_version poll while waiting (cross-process wake-up latency)
MEMORY_URL = "memory://"

# Primary SQLite result codes that mean "the file cannot be used right now", with the
# fix a person can act on. Everything else (constraint violations, SQL errors) is a bug
# or bad data and surfaces unchanged.
_BUSY_FIX = (
    "another process held the write lock longer than the busy timeout "
    f"({BUSY_TIMEOUT_MS} ms): look for a stuck or very slow process using this file"
)
ACCESS_FIX = (
    "make sure the directory exists and this user can write both it and the file "
    "(SQLite also creates <file>-wal and <file>-shm beside it), or point CONVEYOR_URL "
    "at a writable path such as sqlite:///./conveyor.db"
)
_DISK_FIX = "check free disk space and the health of the filesystem holding the file"
_NOTADB_FIX = (
    "the file is not a Conveyor SQLite database or is corrupted: point CONVEYOR_URL at "
    "another file, or restore it from a backup"
)
_UNAVAILABLE: dict[int, str] = {
    sqlite3.SQLITE_BUSY: _BUSY_FIX,
    sqlite3.SQLITE_LOCKED: _BUSY_FIX,
    sqlite3.SQLITE_PROTOCOL: _BUSY_FIX,
    sqlite3.SQLITE_CANTOPEN: ACCESS_FIX,
    sqlite3.SQLITE_PERM: ACCESS_FIX,
    sqlite3.SQLITE_READONLY: ACCESS_FIX,
    sqlite3.SQLITE_AUTH: ACCESS_FIX,
    sqlite3.SQLITE_IOERR: _DISK_FIX,
    sqlite3.SQLITE_FULL: _DISK_FIX,
    sqlite3.SQLITE_NOLFS: _DISK_FIX,
    sqlite3.SQLITE_NOTADB: _NOTADB_FIX,
    sqlite3.SQLITE_CORRUPT: _NOTADB_FIX,
}


def parse_sqlite_url(url: str) -> Path:
    """The database file a ``sqlite:///...`` URL names.

    ``sqlite:///conveyor.db`` is relative to the working directory,
    ``sqlite:////var/lib/q.db`` absolute (four slashes); ``~`` is expanded.

    Raises:
        ConfigError: the URL is not a usable SQLite file URL; the message shows the forms.
    """
    raw, _ = _split_sqlite_url(url)
    if not raw or raw == ":memory:":
        raise ConfigError(
            f"SQLite URL {url!r} names no file: {_FORMS} (use memory:// for a throwaway engine)"
        )
    return Path(raw).expanduser()


_FORMS = "use sqlite:///relative/path.db or sqlite:////absolute/path.db"
SYNCHRONOUS_CHOICES = ("full", "normal")


def _split_sqlite_url(url: str) -> tuple[str, str]:
    """(path part, synchronous) of a SQLite URL; the one query option is checked here."""
    if not url.startswith("sqlite:///"):
        raise ConfigError(f"SQLite URL {url!r} is not supported: {_FORMS}")
    raw, _, query = url[len("sqlite:///") :].partition("?")
    if "#" in url:
        raise ConfigError(f"SQLite URL {url!r} has a fragment; none is supported: {_FORMS}")
    synchronous = "full"
    for pair in filter(None, query.split("&")):
        key, _, value = pair.partition("=")
        if key != "synchronous" or value.lower() not in SYNCHRONOUS_CHOICES:
            raise ConfigError(
                f"SQLite URL {url!r}: {pair!r} is not supported; the one option is "
                "?synchronous=full (the default: every enqueue is fsynced) or "
                f"?synchronous=normal (see the README's configuration table). {_FORMS}"
            )
        synchronous = value.lower()
    return raw, synchronous


def parse_sqlite_synchronous(url: str) -> str:
    """``"FULL"`` or ``"NORMAL"``: how a ``sqlite:///`` URL's enqueues are committed.

    ``?synchronous=normal`` gives up durability across power loss and OS crashes (not
    process crashes) for speed: see docs/reliability.md.

    Raises:
        ConfigError: an unknown query option or value.
    """
    return _split_sqlite_url(url)[1].upper()


def unavailable(exc: sqlite3.Error, path: Path) -> EngineUnavailable | None:
    """The `EngineUnavailable` a driver error stands for, or None if it is not one."""
    code = getattr(exc, "sqlite_errorcode", None)
    fix = _UNAVAILABLE.get(code & 0xFF) if isinstance(code, int) else None
    if fix is None:
        return None
    return EngineUnavailable(f"SQLite database {path} is unavailable ({exc}): {fix}")


def event_data(**data: Any) -> str:
    """Event data as stored (a JSON object)."""
    return orjson.dumps(data).decode()


class Wake:
    """A level-triggered, multi-waiter wake-up that is safe to re-arm.

    `generation` counts notifications, so a caller can record it *before* checking
    storage and later learn that something happened in between (the check-then-wait
    race: an enqueue landing between "exchange found nothing" and "start waiting").

    Args:
        on_notify: also called by `notify` (not `notify(local=True)`): how other
            processes hear of it (`wakeups.WakeSockets.poke_soon`).
    """

    def __init__(self, on_notify: Callable[[], None] | None = None) -> None:
        self.generation = 0
        self._event = asyncio.Event()
        self._on_notify = on_notify

    def notify(self, *, local: bool = False) -> None:
        """Wake every current waiter; later waiters wait for the next notification.

        `local=True`: this process only (a wake-up that came from elsewhere, or close).
        """
        self.generation += 1
        self._event.set()
        self._event = asyncio.Event()
        if self._on_notify is not None and not local:
            self._on_notify()

    def current(self) -> asyncio.Event:
        """The event the next notification sets."""
        return self._event


def _set_wal(conn: sqlite3.Connection) -> str:
    """Switch the file to WAL (a no-op once it is); returns the journal mode now in use.

    Switching needs an exclusive lock, and SQLite answers "database is locked" at once
    instead of waiting in the busy handler when another process is opening the same fresh
    file at that moment, so the switch is retried here for up to the busy timeout.
    """
    deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
    while True:
        try:
            return str(conn.execute("PRAGMA journal_mode = WAL").fetchone()[0])
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.01)


class SqliteCore:
    """The connection, its thread and the helpers every part of the engine shares.

    Args:
        url: ``sqlite:///relative.db``, ``sqlite:////absolute.db`` or ``memory://``.
        clock: decides due times and lease deadlines (tests pass a `FakeClock`).
        events_maxlen: events kept per queue (older ones are trimmed in batches).

    Raises:
        ConfigError: the URL is malformed.
    """

    def __init__(
        self, url: str, *, clock: Clock | None = None, events_maxlen: int = 10_000
    ) -> None:
        self.url = url
        self.memory = url.startswith(MEMORY_URL)
        self.durable = not self.memory
        self.path = Path(":memory:") if self.memory else parse_sqlite_url(url)
        # The sync level of durable writes (enqueues, operator actions); NORMAL only when
        # the URL asks for it (?synchronous=normal).
        self._durable_sync = "FULL" if self.memory else parse_sqlite_synchronous(url)
        self.clock = clock or Clock()
        self.unstreamed: AbstractSet[str] = frozenset()  # see Engine.unstreamed
        self._events_maxlen = max(1, events_maxlen)
        # Trim a queue's log once per this many inserts: one indexed DELETE amortised
        # over many events. The log may briefly hold maxlen + trim_every rows.
        self._trim_every = max(64, self._events_maxlen // 10)
        self._executor: ThreadPoolExecutor | None = None
        self._conn: sqlite3.Connection | None = None
        self._kept: sqlite3.Connection | None = None  # memory://: survives close
        self._start_lock = threading.Lock()
        # Touched only on the engine's thread:
        self._events_since_trim = 0
        self._trim_queues: set[str] = set()
        self._last_version = 0  # data_version seen at the start of the last exchange
        self._sync = "FULL"  # the connection's current PRAGMA synchronous
        self._group = GroupCommit(self._run_group)
        # Touched only on the event loop:
        # Other processes' idle workers hear of this engine's commits through sockets.
        self._wakeups = None if self.memory else WakeSockets(self.path)
        # Work may be claimable (enqueue, release, resume, ...):
        self._jobs_wake = Wake(self._wakeups.poke_soon if self._wakeups else None)
        self._events_wake = Wake()  # this engine appended events
        self._exchange_generation: int | None = None
        self._closes = 0  # bumped by close(): blocked readers return instead of reopening

    # --- opening ------------------------------------------------------------------------
    def _connect_file(self) -> sqlite3.Connection:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise EngineUnavailable(
                f"cannot create the directory {self.path.parent} for SQLite database "
                f"{self.path} ({exc.strerror or exc}): {ACCESS_FIX}"
            ) from exc
        try:
            return sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None)
        except sqlite3.Error as exc:
            raise unavailable(exc, self.path) or exc from exc

    def _open(self) -> sqlite3.Connection:
        """Open the database and migrate its schema (runs on the engine's thread)."""
        if sqlite3.sqlite_version_info < MIN_SQLITE:
            raise EngineUnavailable(
                f"the SQLite library is {sqlite3.sqlite_version}, older than the "
                f"{'.'.join(map(str, MIN_SQLITE))} this engine needs (UPDATE ... RETURNING): "
                "use a Python built with a newer SQLite, or a redis:// URL"
            )
        if self._kept is not None:  # memory:// reopened after close: same data
            self._conn = self._kept
            return self._kept
        if self.memory:
            # Used from whichever thread the engine runs on after a close/reopen.
            conn = sqlite3.connect(":memory:", isolation_level=None, check_same_thread=False)
        else:
            conn = self._connect_file()
        try:
            if not self.memory:
                self._configure_file(conn)
            conn.execute("PRAGMA temp_store = MEMORY")
            migrate(conn, self.path)
            self._last_version = self._data_version(conn)
        except BaseException as exc:
            with contextlib.suppress(sqlite3.Error):
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
            conn.close()
            if isinstance(exc, sqlite3.Error):
                raise unavailable(exc, self.path) or exc from exc
            raise
        if self.memory:
            self._kept = conn
        # Set here, on the engine's thread, so work queued behind `_open` (a second
        # caller racing `connect`) already finds the connection.
        self._conn = conn
        return conn

    def _configure_file(self, conn: sqlite3.Connection) -> None:
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        mode = _set_wal(conn)
        if mode.lower() != "wal":
            raise EngineUnavailable(
                f"SQLite database {self.path} cannot use WAL mode (got {mode!r}); "
                "several processes cannot share it safely: put it on a local "
                "filesystem (not NFS/SMB)"
            )
        conn.execute(f"PRAGMA synchronous = {self._durable_sync}")
        self._sync = self._durable_sync
        # Truncate the WAL back to 64 MiB after checkpoints, so one burst does not
        # leave a huge -wal file behind for good.
        conn.execute("PRAGMA journal_size_limit = 67108864")

    async def connect(self) -> None:
        """Open the database (creating the file, its directory and schema if needed).

        Raises:
            EngineUnavailable: the file cannot be opened or written; the message names
                the path and the fix (`SchemaTooNew` when a newer Conveyor migrated it).
        """
        with self._start_lock:
            if self._executor is not None:
                return
            executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="conveyor-sqlite")
            self._executor = executor
        try:
            await asyncio.get_running_loop().run_in_executor(executor, self._open)
        except BaseException:
            self._executor = None
            executor.shutdown(wait=False)
            raise

    async def close(self) -> None:
        """Close the connection and stop the engine's thread. Safe to call twice.

        Pending `wait_for_jobs` / `read_events` calls return; a later call on the
        engine opens the database again (memory://: the same data).
        """
        executor, self._executor = self._executor, None
        if executor is None:
            return
        # Release pending waits now (a spurious wake-up), rather than letting their next
        # poll reopen the file through the lazy connect in `_call`.
        self._closes += 1
        self._jobs_wake.notify(local=True)
        self._events_wake.notify()
        if self._wakeups is not None:
            self._wakeups.close()

        def shut() -> None:
            self._group.run_queued()
            conn, self._conn = self._conn, None
            if conn is not None and conn is not self._kept:
                conn.close()

        try:
            await asyncio.get_running_loop().run_in_executor(executor, shut)
        finally:
            executor.shutdown(wait=True)

    async def ping(self) -> float:
        """Round-trip time of a trivial query, in seconds. Raises `EngineUnavailable`."""
        start = time.perf_counter()
        await self._call(lambda conn: conn.execute("SELECT 1").fetchone())
        return time.perf_counter() - start

    # --- running work on the engine's thread ---------------------------------------------
    def _guarded(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run `fn` on the engine's thread; roll back on error; translate driver errors."""
        conn = self._conn
        if conn is None:
            raise EngineUnavailable(f"SQLite engine for {self.path} is closed")
        try:
            return fn(conn)
        except BaseException as exc:
            if conn.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
            if isinstance(exc, sqlite3.Error):
                raise unavailable(exc, self.path) or exc from exc
            raise

    async def _call(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run `fn(conn)` on the engine's thread without blocking the event loop."""
        executor = self._executor
        if executor is None:
            await self.connect()
            executor = self._executor
            assert executor is not None
        try:
            future = asyncio.get_running_loop().run_in_executor(executor, self._guarded, fn)
        except RuntimeError as exc:  # `close` shut the thread down between the two lines
            raise EngineUnavailable(f"SQLite engine for {self.path} is closed") from exc
        return await future

    async def _write(
        self, fn: Callable[[sqlite3.Connection], T], *, durable: bool = True, settles: bool = True
    ) -> T:
        """Run `fn(conn)` inside a ``BEGIN IMMEDIATE`` transaction, grouped with the
        writes queued at the same moment (`group_commit`): one commit, one fsync.

        `durable=False` asks only for ``synchronous=NORMAL`` (no fsync): for writes
        whose loss on power failure breaks no guarantee — claims, acks, heartbeats,
        progress. Enqueues and operator actions always fsync before returning (a group
        with one of them in it is committed with FULL).

        `settles=False`: `fn` cannot finish a flow job (it only inserts jobs), so the
        flow-settling query after it is skipped (one statement less per enqueue).
        """
        executor = self._executor
        if executor is None:
            await self.connect()
            executor = self._executor
            assert executor is not None
        out: T
        out, ready = await self._group.submit(executor, fn, durable, self._closed_error, settles)
        if ready:  # a flow parent became pending (Wake is not thread-safe: notify here)
            self._jobs_wake.notify()
        return out

    def _closed_error(self) -> EngineUnavailable:
        return EngineUnavailable(f"SQLite engine for {self.path} is closed")

    def _run_group(self, group: list[Write]) -> None:
        """Run `group` as one transaction on the engine's thread; sets each outcome.

        A lone write runs bare, exactly as a transaction of its own; in a crowd each one
        gets a savepoint, so one that raises is undone alone.
        """
        conn = self._conn
        if conn is None:
            for w in group:
                w.outcome = (False, self._closed_error())
            return
        sync = self._durable_sync if self.memory or any(w.durable for w in group) else "NORMAL"
        try:
            if self._sync != sync:
                conn.execute(f"PRAGMA synchronous = {sync}")
                self._sync = sync
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            self._fail_all(conn, group, exc)
            return
        solo = len(group) == 1
        for i, w in enumerate(group):
            try:
                # Each write settles the flow jobs it finished inside its own step
                # (savepoint), so a flow parent's release commits or fails with it.
                if solo:
                    w.outcome = (True, (w.fn(conn), w.settles and self._settle_flows(conn)))
                    continue
                conn.execute("SAVEPOINT conveyor_write")
                w.outcome = (True, (w.fn(conn), w.settles and self._settle_flows(conn)))
                conn.execute("RELEASE conveyor_write")
            except Exception as exc:
                if solo or not conn.in_transaction:
                    # SQLite rolled the whole transaction back (disk full, I/O error):
                    # every write of the group so far is gone with it.
                    self._fail_all(conn, group, exc)
                    return
                try:
                    conn.execute("ROLLBACK TO conveyor_write")
                    conn.execute("RELEASE conveyor_write")
                except sqlite3.Error as undo:
                    self._fail_all(conn, group, undo)
                    return
                w.outcome = (False, self._translated(exc))
            except BaseException as exc:
                self._fail_all(conn, group[: i + 1], exc)
                raise
        try:
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            self._fail_all(conn, group, exc)

    def _fail_all(self, conn: sqlite3.Connection, group: list[Write], exc: BaseException) -> None:
        """Roll back and give every write of `group` the group's error."""
        if conn.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
        error = self._translated(exc)
        for w in group:
            w.outcome = (False, error)

    def _translated(self, exc: BaseException) -> BaseException:
        if isinstance(exc, sqlite3.Error):
            mapped = unavailable(exc, self.path)
            if mapped is not None:
                mapped.__cause__ = exc
                return mapped
        return exc

    def _settle_flows(self, conn: sqlite3.Connection) -> bool:
        """Settle the flow jobs this transaction finished, before it commits
        (`conveyor.engines.sqlite.flows.SqliteFlows` applies lifecycle rule 6)."""
        return False

    @staticmethod
    def _data_version(conn: sqlite3.Connection) -> int:
        return int(conn.execute(Q["data_version"]).fetchone()[0])

    async def _wait_for_change(
        self, wake: Wake, generation: int, version: int, seconds: float
    ) -> None:
        """Return when `wake` moved past `generation`, another connection committed
        since `version` was read, or after `seconds`.

        Waiting for jobs on a file, the engine listens on its wake-up socket (other
        processes poke it after their commits, which moves `wake` on) and reads
        ``data_version`` only every `SAFETY_POLL_S`; elsewhere it polls every
        `POLL_INTERVAL_S`.
        """
        if wake.generation != generation:
            return
        closes = self._closes
        loop = asyncio.get_running_loop()
        interval = POLL_INTERVAL_S
        if wake is self._jobs_wake and self._wakeups is not None:
            fresh = self._wakeups.listen(self._remote_wake)
            if fresh is not None:
                interval = SAFETY_POLL_S
            # Bound just now: a commit since `version` was read poked nobody.
            if fresh and await self._call(self._data_version) != version:
                return
        deadline = loop.time() + seconds
        waiter = asyncio.ensure_future(wake.current().wait())
        try:
            while True:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    return
                done, _ = await asyncio.wait({waiter}, timeout=min(interval, remaining))
                if done or wake.generation != generation or self._closes != closes:
                    return
                if self.memory:  # nobody else can commit: only our own wake-ups count
                    continue
                try:
                    if await self._call(self._data_version) != version:
                        return
                except EngineUnavailable:
                    if self._closes != closes:  # closed under us: just stop waiting
                        return
                    raise
        finally:
            waiter.cancel()

    def _remote_wake(self) -> None:
        """Another process poked this engine's socket: wake the waiters here."""
        self._jobs_wake.notify(local=True)

    # --- helpers used inside transactions -------------------------------------------------
    def _add_events(self, conn: sqlite3.Connection, rows: Sequence[tuple[Any, ...]]) -> None:
        """Insert event rows (queue first) and trim the touched queues now and then.
        Rows of queues without an event log are dropped here (lifecycle rule 7)."""
        if self.unstreamed:
            rows = [row for row in rows if writes_events(row[0], self.unstreamed)]
        if not rows:
            return
        conn.executemany(Q["insert_event"], rows)
        self._events_since_trim += len(rows)
        self._trim_queues.update(row[0] for row in rows)
        if self._events_since_trim >= self._trim_every:
            for queue in self._trim_queues:
                conn.execute(Q["trim_events"], (queue, self._events_maxlen))
            self._events_since_trim = 0
            self._trim_queues.clear()

    @staticmethod
    def _reserve_seq(conn: sqlite3.Connection, n: int) -> int:
        """Reserve `n` consecutive FIFO positions at the back; returns the first."""
        end = conn.execute(Q["reserve_seq"], (n,)).fetchone()[0]
        return int(end) - n + 1

    @staticmethod
    def _front_seq(conn: sqlite3.Connection) -> int:
        """A position before every job ever queued (released jobs go first)."""
        return int(conn.execute(Q["front_seq"]).fetchone()[0])

    @staticmethod
    def _fields(row: Sequence[Any]) -> dict[str, Any]:
        # strict=False: listing rows carry a trailing rowid for the cursor.
        return dict(zip(JOB_COLUMNS, row, strict=False))

    def _load(self, conn: sqlite3.Connection, job_id: str) -> dict[str, Any]:
        row = conn.execute(Q["load_job"], (job_id,)).fetchone()
        if row is None:
            raise not_found(job_id)
        return self._fields(row)
