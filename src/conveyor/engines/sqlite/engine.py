"""`sqlite:///path` — the embedded default engine: durable, no server, one machine.

URL forms (the part after ``sqlite:///`` is a filesystem path, as in SQLAlchemy):

* ``sqlite:///conveyor.db`` and ``sqlite:///data/q.db`` — relative to the working directory;
* ``sqlite:////var/lib/conveyor/q.db`` — absolute (four slashes);
* ``~`` is expanded (``sqlite:///~/q.db``). The parent directory is created if missing.

``:memory:``, ``sqlite://host/...`` and query strings are rejected with `ConfigError`:
an in-memory SQLite database cannot be shared and is not durable (use ``memory://``).

How it keeps the contract in `conveyor.engines.base`:

* **Durability.** WAL journal. Enqueues and operator actions commit with
  ``synchronous=FULL``, which fsyncs the WAL before `enqueue` returns, so an
  acknowledged job survives a crash of the process *and* a power loss (``NORMAL``
  only syncs at checkpoints in WAL mode: a power cut could drop jobs the producer was
  told were stored). The worker hot path (claims, acks, heartbeats, progress) commits
  with ``NORMAL``: losing one of those to a power cut only makes a job run again,
  which at-least-once allows, and the next FULL commit syncs them too. Measured on
  the dev VM (ext4): a one-job exchange takes 0.27 ms with NORMAL vs 0.41 ms with
  FULL; on disks with slow fsync the gap is milliseconds per round trip.
* **Atomic claims across processes.** Every write runs in ``BEGIN IMMEDIATE``, which
  takes the database's single write lock up front. Two processes claiming at once are
  serialised: the second one's ``UPDATE ... WHERE state = 'pending'`` runs after the
  first has committed and cannot see the rows the first one took. ``busy_timeout``
  makes a process wait (up to 5 s) for the lock instead of failing at once.
* **The event loop never blocks.** Each engine owns one connection, used only from
  one dedicated thread (a single-thread executor). Every call is one hop to that
  thread; the loop awaits the future.
* **Wake-ups.** SQLite has no cross-process notification. Within the process, an
  `asyncio.Event` set after this engine's own commits wakes waiters at once. Across
  processes, waiters poll ``PRAGMA data_version`` every ~15 ms: it changes when
  *another* connection commits, and reading it touches only the shared-memory WAL
  index (no disk I/O, no lock), so the poll is nearly free and a job enqueued by
  another process is picked up within one poll interval. Spurious wake-ups (any
  commit, e.g. a heartbeat) are allowed by the contract.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.resources
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import orjson

from ...clock import Clock
from ...errors import ConfigError, EngineUnavailable, InvalidState, JobNotFound
from ...job import (
    ACTIVE_STATES,
    FINISHED_STATES,
    EnqueueResult,
    Job,
    JobState,
    NewJob,
    decode_job,
    decode_lenient,
)
from ...limits import QueueLimits
from ..base import (
    Event,
    Exchange,
    JobPage,
    LeaseInfo,
    Outcome,
    QueueCounts,
    StoredSchedule,
    Throughput,
)

T = TypeVar("T")

# 2: + leases, schedules (additive: the idempotent schema script runs again on open).
# 3: + fairness and limits (tenants, queue_limits, rate_log; jobs_claim narrowed).
SCHEMA_VERSION = 3
# UPDATE ... RETURNING (claims, fenced outcomes) arrived in SQLite 3.35 (2021).
MIN_SQLITE = (3, 35, 0)
BUSY_TIMEOUT_MS = 5_000
POLL_INTERVAL_S = 0.015  # data_version poll while waiting (cross-process wake-up latency)
PROMOTE_BATCH = 1_000  # due jobs promoted per queue per exchange; the rest next time
DELETE_BATCH = 2_000  # rows per transaction in purge / retry_all (short write locks)

JOB_COLUMNS = (
    "id", "queue", "task", "payload", "state", "attempt", "max_attempts", "priority",
    "tenant", "dedupe_key", "timeout_ms", "backoff", "created_ms", "scheduled_ms",
    "started_ms", "finished_ms", "progress", "result", "errors", "token", "worker",
    "lease_until_ms", "seq",
)  # fmt: skip
_COLS = ", ".join(JOB_COLUMNS)

# Appends the AttemptError JSON in parameter :err to the errors array (kept as-is when
# :err is NULL). json_valid() guards against a corrupted column: json_insert would
# raise on it and wedge every exchange that touches the job.
_APPEND_ERROR = (
    "CASE WHEN :err IS NULL THEN errors ELSE json_insert("
    "CASE WHEN json_valid(errors) THEN errors ELSE '[]' END, '$[#]', json(:err)) END"
)
_FENCE = "WHERE id = :id AND token = :token AND state = 'running'"
_OUTCOME_RETURNING = "RETURNING queue, task, tenant, attempt"
# :batch is a JSON array of [job_id, token, result_json] triples.
_COMPLETE_BATCH = (
    "UPDATE jobs SET state = 'completed', result = o.result, finished_ms = :now, "
    "token = NULL, lease_until_ms = NULL FROM (SELECT json_extract(value, '$[0]') AS id, "
    "json_extract(value, '$[1]') AS token, json_extract(value, '$[2]') AS result "
    "FROM json_each(:batch)) AS o "
    "WHERE jobs.id = o.id AND jobs.token = o.token AND jobs.state = 'running' "
    "RETURNING jobs.id, jobs.queue, jobs.task, jobs.tenant, jobs.attempt"
)
_OUTCOME_SQL = {
    "fail": f"UPDATE jobs SET state = 'failed', errors = {_APPEND_ERROR}, finished_ms = :now, "
    f"token = NULL, lease_until_ms = NULL {_FENCE} {_OUTCOME_RETURNING}",
    "retry_later": f"UPDATE jobs SET state = 'scheduled', errors = {_APPEND_ERROR}, "
    "scheduled_ms = :due, token = NULL, lease_until_ms = NULL "
    f"{_FENCE} {_OUTCOME_RETURNING}",
    "retry_now": f"UPDATE jobs SET state = 'pending', errors = {_APPEND_ERROR}, seq = :seq, "
    f"scheduled_ms = NULL, token = NULL, lease_until_ms = NULL {_FENCE} {_OUTCOME_RETURNING}",
    # defer: rate limited or breaker open; the attempt is given back, no error recorded.
    "defer_later": "UPDATE jobs SET state = 'scheduled', attempt = max(0, attempt - 1), "
    "scheduled_ms = :due, started_ms = NULL, token = NULL, lease_until_ms = NULL "
    f"{_FENCE} {_OUTCOME_RETURNING}",
    "defer_now": "UPDATE jobs SET state = 'pending', attempt = max(0, attempt - 1), seq = :seq, "
    "scheduled_ms = NULL, started_ms = NULL, token = NULL, lease_until_ms = NULL "
    f"{_FENCE} {_OUTCOME_RETURNING}",
    "release": "UPDATE jobs SET state = 'pending', attempt = max(0, attempt - 1), seq = :seq, "
    "started_ms = NULL, token = NULL, lease_until_ms = NULL "
    f"{_FENCE} {_OUTCOME_RETURNING}",
}

_INSERT_JOB = (
    "INSERT INTO jobs (id, queue, task, payload, state, max_attempts, priority, tenant, "
    "dedupe_key, timeout_ms, backoff, created_ms, scheduled_ms, seq) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
# The conflict target repeats the partial unique index's WHERE so SQLite matches it.
# DO NOTHING without a target covers both uniqueness rules: the id (an enqueue retried
# with the same id, e.g. by the outbox relay after a crash, is idempotent) and the
# partial dedupe index. The caller tells which one applied.
_INSERT_JOB_IGNORE = _INSERT_JOB + " ON CONFLICT DO NOTHING"
_INSERT_EVENT = (
    "INSERT INTO events (queue, kind, job_id, task, tenant, attempt, at_ms, data) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
)
_CLAIM = (
    "UPDATE jobs SET state = 'running', attempt = attempt + 1, "
    # 128 random bits as 32 hex digits, made per row inside SQLite (no per-job Python).
    "token = lower(hex(randomblob(16))), started_ms = :now, worker = :worker, "
    "lease_until_ms = :lease_until "
    "WHERE rowid IN (SELECT rowid FROM jobs WHERE queue = :queue AND state = 'pending' "
    "AND tenant IS NULL ORDER BY priority DESC, seq LIMIT :limit) "
    f"RETURNING {_COLS}"
)
# The same for one tenant's bucket (index jobs_tenant_claim).
_CLAIM_TENANT = _CLAIM.replace("AND tenant IS NULL", "AND tenant IS NOT NULL AND tenant = :tenant")
_LIMIT_COLUMNS = (
    "concurrency", "tenant_concurrency", "rate", "rate_window_ms", "tenant_rate",
    "tenant_rate_window_ms",
)  # fmt: skip
ROTATION_PAGE = 32  # tenants read per pass of the rotation
TURN_BUDGET = 64  # extra bucket turns one claim may spend on tenants at their limits
_RECOVER_STALLED = (
    "UPDATE jobs SET state = 'pending', token = NULL, lease_until_ms = NULL "
    "WHERE queue = :queue AND state = 'running' AND lease_until_ms <= :now "
    "AND attempt < max_attempts RETURNING id, task, tenant, attempt"
)
_RECOVER_FAILED = (
    "UPDATE jobs SET state = 'failed', finished_ms = :now, token = NULL, "
    "lease_until_ms = NULL, errors = json_insert("
    "CASE WHEN json_valid(errors) THEN errors ELSE '[]' END, '$[#]', json_object("
    "'attempt', attempt, 'type', 'LeaseExpired', 'message', "
    "'worker lost while running attempt ' || attempt || ' (killed or hung); lease expired', "
    "'at', :now / 1000.0)) "
    "WHERE queue = :queue AND state = 'running' AND lease_until_ms <= :now "
    "AND attempt >= max_attempts RETURNING id, task, tenant, attempt"
)
_LEASE_FAILED_DATA = orjson.dumps({"error": "lease expired: worker lost"}).decode()

# Primary SQLite result codes that mean "the file cannot be used right now", with the
# fix a person can act on. Everything else (constraint violations, SQL errors) is a bug
# or bad data and surfaces unchanged.
_BUSY_FIX = (
    "another process held the write lock longer than the busy timeout "
    f"({BUSY_TIMEOUT_MS} ms): look for a stuck or very slow process using this file"
)
_ACCESS_FIX = (
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
    sqlite3.SQLITE_CANTOPEN: _ACCESS_FIX,
    sqlite3.SQLITE_PERM: _ACCESS_FIX,
    sqlite3.SQLITE_READONLY: _ACCESS_FIX,
    sqlite3.SQLITE_AUTH: _ACCESS_FIX,
    sqlite3.SQLITE_IOERR: _DISK_FIX,
    sqlite3.SQLITE_FULL: _DISK_FIX,
    sqlite3.SQLITE_NOLFS: _DISK_FIX,
    sqlite3.SQLITE_NOTADB: _NOTADB_FIX,
    sqlite3.SQLITE_CORRUPT: _NOTADB_FIX,
}


def parse_sqlite_url(url: str) -> Path:
    """The database file a ``sqlite:///...`` URL names (see the module docstring).

    Raises:
        ConfigError: the URL is not a usable SQLite file URL; the message shows the forms.
    """
    forms = "use sqlite:///relative/path.db or sqlite:////absolute/path.db"
    if not url.startswith("sqlite:///"):
        raise ConfigError(f"SQLite URL {url!r} is not supported: {forms}")
    raw = url[len("sqlite:///") :]
    if "?" in raw or "#" in raw:
        raise ConfigError(f"SQLite URL {url!r} has a query string; none is supported: {forms}")
    if not raw or raw == ":memory:":
        raise ConfigError(
            f"SQLite URL {url!r} names no file: {forms} (use memory:// for a throwaway engine)"
        )
    return Path(raw).expanduser()


def _unavailable(exc: sqlite3.Error, path: Path) -> EngineUnavailable | None:
    """The `EngineUnavailable` a driver error stands for, or None if it is not one."""
    code = getattr(exc, "sqlite_errorcode", None)
    fix = _UNAVAILABLE.get(code & 0xFF) if isinstance(code, int) else None
    if fix is None:
        return None
    return EngineUnavailable(f"SQLite database {path} is unavailable ({exc}): {fix}")


def _event_data(**data: Any) -> str:
    return orjson.dumps(data).decode()


class _Wake:
    """A level-triggered, multi-waiter wake-up that is safe to re-arm.

    `generation` counts notifications, so a caller can record it *before* checking
    storage and later learn that something happened in between (the check-then-wait
    race: an enqueue landing between "exchange found nothing" and "start waiting").
    """

    def __init__(self) -> None:
        self.generation = 0
        self._event = asyncio.Event()

    def notify(self) -> None:
        self.generation += 1
        self._event.set()
        self._event = asyncio.Event()  # new waiters wait for the next notification

    def current(self) -> asyncio.Event:
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


class SqliteEngine:
    """Jobs in one SQLite file shared by the processes of one machine.

    Args:
        url: ``sqlite:///relative.db`` or ``sqlite:////absolute.db``.
        clock: decides due times and lease deadlines (tests pass a `FakeClock`).
        events_maxlen: events kept per queue (older ones are trimmed in batches).

    Raises:
        ConfigError: the URL is malformed.
    """

    durable = True

    def __init__(
        self, url: str, *, clock: Clock | None = None, events_maxlen: int = 10_000
    ) -> None:
        self.url = url
        self.path = parse_sqlite_url(url)
        self.clock = clock or Clock()
        self._events_maxlen = max(1, events_maxlen)
        # Trim a queue's log once per this many inserts: one indexed DELETE amortised
        # over many events instead of one per event. The log may briefly hold
        # maxlen + trim_every rows.
        self._trim_every = max(64, self._events_maxlen // 10)
        self._executor: ThreadPoolExecutor | None = None
        self._conn: sqlite3.Connection | None = None
        self._start_lock = threading.Lock()
        # Touched only on the engine's thread:
        self._events_since_trim = 0
        self._trim_queues: set[str] = set()
        self._last_version = 0  # data_version seen at the start of the last exchange
        self._sync = "FULL"  # the connection's current PRAGMA synchronous
        # Touched only on the event loop:
        self._jobs_wake = _Wake()  # work may be claimable (enqueue, release, resume, ...)
        self._events_wake = _Wake()  # this engine appended events
        self._exchange_generation: int | None = None
        self._closes = 0  # bumped by close(): blocked readers return instead of reopening

    # --- plumbing ---------------------------------------------------------------------
    def _open(self) -> sqlite3.Connection:
        """Open the file and bring its schema up to date (runs on the engine's thread)."""
        if sqlite3.sqlite_version_info < MIN_SQLITE:
            raise EngineUnavailable(
                f"the SQLite library is {sqlite3.sqlite_version}, older than the "
                f"{'.'.join(map(str, MIN_SQLITE))} this engine needs (UPDATE ... RETURNING): "
                "use a Python built with a newer SQLite, or a redis:// URL"
            )
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise EngineUnavailable(
                f"cannot create the directory {self.path.parent} for SQLite database "
                f"{self.path} ({exc.strerror or exc}): {_ACCESS_FIX}"
            ) from exc
        try:
            conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None)
        except sqlite3.Error as exc:
            raise _unavailable(exc, self.path) or exc from exc
        try:
            conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            mode = _set_wal(conn)
            if str(mode).lower() != "wal":
                raise EngineUnavailable(
                    f"SQLite database {self.path} cannot use WAL mode (got {mode!r}); "
                    "several processes cannot share it safely: put it on a local "
                    "filesystem (not NFS/SMB)"
                )
            # FULL: fsync the WAL at every commit, so acknowledged jobs survive power
            # loss (see the module docstring).
            conn.execute("PRAGMA synchronous = FULL")
            self._sync = "FULL"
            conn.execute("PRAGMA temp_store = MEMORY")
            # Truncate the WAL back to 64 MiB after checkpoints, so one burst does not
            # leave a huge -wal file behind for good.
            conn.execute("PRAGMA journal_size_limit = 67108864")
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise EngineUnavailable(
                    f"SQLite database {self.path} has schema version {version}, newer than "
                    f"this Conveyor understands ({SCHEMA_VERSION}): upgrade Conveyor"
                )
            if version < SCHEMA_VERSION:
                schema = importlib.resources.files(__package__).joinpath("schema.sql").read_text()
                # executescript runs the whole script; the explicit transaction makes
                # it all-or-nothing and serialises concurrent first opens.
                conn.executescript(
                    f"BEGIN IMMEDIATE;\n{schema}\nPRAGMA user_version = {SCHEMA_VERSION};\nCOMMIT;"
                )
            self._last_version = self._data_version(conn)
        except BaseException as exc:
            with contextlib.suppress(sqlite3.Error):
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
            conn.close()
            if isinstance(exc, sqlite3.Error):
                raise _unavailable(exc, self.path) or exc from exc
            raise
        # Set here, on the engine's thread, so work queued behind `_open` (a second
        # caller racing `connect`) already finds the connection.
        self._conn = conn
        return conn

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
                raise _unavailable(exc, self.path) or exc from exc
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

    async def _write(self, fn: Callable[[sqlite3.Connection], T], *, durable: bool = True) -> T:
        """Run `fn(conn)` inside one ``BEGIN IMMEDIATE`` transaction.

        `durable=False` commits with ``synchronous=NORMAL`` (no fsync): only for writes
        whose loss on power failure breaks no guarantee — claims, acks, heartbeats,
        progress. A lost claim or ack means the job runs again (at-least-once allows
        it), and the next durable commit fsyncs the WAL up to and including them.
        Enqueues and operator actions always fsync before returning.
        """
        sync = "FULL" if durable else "NORMAL"

        def tx(conn: sqlite3.Connection) -> T:
            if self._sync != sync:
                conn.execute(f"PRAGMA synchronous = {sync}")
                self._sync = sync
            conn.execute("BEGIN IMMEDIATE")
            result = fn(conn)
            conn.execute("COMMIT")
            return result

        return await self._call(tx)

    @staticmethod
    def _data_version(conn: sqlite3.Connection) -> int:
        return int(conn.execute("PRAGMA data_version").fetchone()[0])

    async def _wait_for_change(
        self, wake: _Wake, generation: int, version: int, seconds: float
    ) -> None:
        """Return when `wake` moved past `generation`, another connection committed
        since `version` was read, or after `seconds`."""
        if wake.generation != generation:
            return
        closes = self._closes
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        waiter = asyncio.ensure_future(wake.current().wait())
        try:
            while True:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    return
                done, _ = await asyncio.wait({waiter}, timeout=min(POLL_INTERVAL_S, remaining))
                if done or wake.generation != generation or self._closes != closes:
                    return
                try:
                    if await self._call(self._data_version) != version:
                        return
                except EngineUnavailable:
                    if self._closes != closes:  # closed under us: just stop waiting
                        return
                    raise
        finally:
            waiter.cancel()

    def _add_events(self, conn: sqlite3.Connection, rows: Sequence[tuple[Any, ...]]) -> None:
        """Insert event rows (queue first) and trim the touched queues now and then."""
        if not rows:
            return
        conn.executemany(_INSERT_EVENT, rows)
        self._events_since_trim += len(rows)
        self._trim_queues.update(row[0] for row in rows)
        if self._events_since_trim >= self._trim_every:
            for queue in self._trim_queues:
                conn.execute(
                    "DELETE FROM events WHERE queue = ?1 AND id <= (SELECT id FROM events "
                    "WHERE queue = ?1 ORDER BY id DESC LIMIT 1 OFFSET ?2)",
                    (queue, self._events_maxlen),
                )
            self._events_since_trim = 0
            self._trim_queues.clear()

    @staticmethod
    def _reserve_seq(conn: sqlite3.Connection, n: int) -> int:
        """Reserve `n` consecutive FIFO positions at the back; returns the first."""
        end = conn.execute(
            "UPDATE meta SET value = value + ? WHERE key = 'seq' RETURNING value", (n,)
        ).fetchone()[0]
        return int(end) - n + 1

    @staticmethod
    def _front_seq(conn: sqlite3.Connection) -> int:
        """A position before every job ever queued (released jobs go first)."""
        return int(
            conn.execute(
                "UPDATE meta SET value = value - 1 WHERE key = 'front' RETURNING value"
            ).fetchone()[0]
        )

    @staticmethod
    def _fields(row: Sequence[Any]) -> dict[str, Any]:
        # strict=False: listing rows carry a trailing rowid for the cursor.
        return dict(zip(JOB_COLUMNS, row, strict=False))

    def _load(self, conn: sqlite3.Connection, job_id: str) -> dict[str, Any]:
        row = conn.execute(f"SELECT {_COLS} FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if row is None:
            raise JobNotFound(f"no job with id {job_id!r}: check the id, or it was cleaned")
        return self._fields(row)

    # --- lifecycle --------------------------------------------------------------------
    async def connect(self) -> None:
        """Open the file (creating it, its directory and the schema if needed).

        Raises:
            EngineUnavailable: the file cannot be opened or written; the message names
                the path and the fix.
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
        engine opens the file again.
        """
        executor, self._executor = self._executor, None
        if executor is None:
            return
        # Release pending waits now (a spurious wake-up), rather than letting their next
        # poll reopen the file through the lazy connect in `_call`.
        self._closes += 1
        self._jobs_wake.notify()
        self._events_wake.notify()

        def shut() -> None:
            conn, self._conn = self._conn, None
            if conn is not None:
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

    # --- producers --------------------------------------------------------------------
    async def enqueue(self, jobs: Sequence[NewJob]) -> list[EnqueueResult]:
        """Store `jobs` in one transaction (all or nothing); results in input order."""
        if not jobs:
            return []
        results = await self._write(lambda conn: self._enqueue_tx(conn, jobs))
        self._jobs_wake.notify()
        self._events_wake.notify()
        return results

    def _enqueue_tx(self, conn: sqlite3.Connection, jobs: Sequence[NewJob]) -> list[EnqueueResult]:
        now = self.clock.now_ms()
        base = self._reserve_seq(conn, len(jobs))
        results: list[EnqueueResult] = []
        plain: list[tuple[Any, ...]] = []  # rows without a dedupe key: one executemany
        plain_at: list[int] = []  # their positions in `results`
        for i, new in enumerate(jobs):
            due = new.run_at_ms if new.run_at_ms is not None else now + new.delay_ms
            state = JobState.SCHEDULED if due > now else JobState.PENDING
            row = (
                new.id, new.queue, new.task, new.payload_json, state.value, new.max_attempts,
                new.priority, new.tenant, new.dedupe_key,
                None if new.timeout is None else int(new.timeout * 1000),
                new.backoff_json, now, due if state is JobState.SCHEDULED else None, base + i,
            )  # fmt: skip
            results.append(EnqueueResult(new.id, True, state))
            if new.dedupe_key is None:
                plain.append(row)
                plain_at.append(i)
            elif conn.execute(_INSERT_JOB_IGNORE, row).rowcount == 0:
                # The same id exists already, or the key is held by a live job (maybe
                # one earlier in this batch): answer with that job.
                held = (
                    conn.execute("SELECT id, state FROM jobs WHERE id = ?", (new.id,)).fetchone()
                    or conn.execute(
                        "SELECT id, state FROM jobs WHERE queue = ? AND dedupe_key = ? "
                        "AND state IN ('scheduled', 'pending', 'running')",
                        (new.queue, new.dedupe_key),
                    ).fetchone()
                )
                results[i] = EnqueueResult(held[0], False, JobState(held[1]))
        if plain and conn.executemany(_INSERT_JOB_IGNORE, plain).rowcount < len(plain):
            # Rare: some ids existed already. A row is ours iff it has the seq we gave it.
            for row, i in zip(plain, plain_at, strict=True):
                seq, state_now = conn.execute(
                    "SELECT seq, state FROM jobs WHERE id = ?", (row[0],)
                ).fetchone()
                if seq != row[13]:
                    results[i] = EnqueueResult(row[0], False, JobState(state_now))
        conn.executemany(
            "INSERT INTO queues (name, known) VALUES (?, 1) "
            "ON CONFLICT (name) DO UPDATE SET known = 1 WHERE known = 0",
            [(q,) for q in {new.queue for new in jobs}],
        )
        self._add_events(
            conn,
            [
                (new.queue, "enqueued", new.id, new.task, new.tenant, 0, now, None)
                for new, res in zip(jobs, results, strict=True)
                if res.created
            ],
        )
        return results

    # --- workers (hot path) -----------------------------------------------------------
    async def exchange(
        self,
        outcomes: Sequence[Outcome],
        *,
        queues: Sequence[str],
        limit: int,
        worker_id: str,
        lease_ms: int,
    ) -> Exchange:
        """Apply `outcomes`, then claim up to `limit` jobs, in one transaction.

        See `conveyor.engines.base` for the full contract.
        """
        # Recorded before the transaction: an enqueue in this process after this point
        # makes the next wait_for_jobs return at once instead of missing it.
        # (Acknowledge-only calls, limit == 0, must not move this baseline.)
        if limit > 0:
            self._exchange_generation = self._jobs_wake.generation
        result, woke = await self._write(
            lambda conn: self._exchange_tx(conn, outcomes, queues, limit, worker_id, lease_ms),
            durable=False,
        )
        if woke:
            self._jobs_wake.notify()
        if outcomes or result.jobs or woke:
            self._events_wake.notify()
        return result

    def _exchange_tx(
        self,
        conn: sqlite3.Connection,
        outcomes: Sequence[Outcome],
        queues: Sequence[str],
        limit: int,
        worker_id: str,
        lease_ms: int,
    ) -> tuple[Exchange, bool]:
        # Read under the write lock: any commit by another connection after this point
        # changes data_version, which wait_for_jobs compares against.
        if limit > 0:
            self._last_version = self._data_version(conn)
        now = self.clock.now_ms()
        events: list[tuple[Any, ...]] = []
        limits = self._read_limits(conn)
        # A running job of these queues that stops running frees a slot that idle
        # workers (held back by the limit) must hear about.
        slotted = {q for q, lim in limits.items() if lim.concurrency or lim.tenant_concurrency}
        lost, woke = self._apply_outcomes(conn, outcomes, now, events, slotted)
        claimed: list[Job] = []
        recovered = 0
        hint: int | None = None
        if limit > 0:
            paused = {
                row[0]
                for row in conn.execute("SELECT name FROM queues WHERE paused = 1").fetchall()
            }
            for queue in queues:
                self._promote_due(conn, queue, now)
                stalled, failed = self._recover(conn, queue, now, events)
                recovered += stalled + failed
                woke |= stalled > 0 or (failed > 0 and queue in slotted)
                if queue in paused or len(claimed) >= limit:
                    continue
                params = {
                    "now": now,
                    "worker": worker_id,
                    "lease_until": now + lease_ms,
                    "queue": queue,
                    "limit": limit - len(claimed),
                }
                lim = limits.get(queue)
                if lim is None and not self._has_tenant_jobs(conn, queue):
                    # The common case, as fast as before fairness existed: no limits and
                    # no tenant jobs pending, so the best jobs are simply the first ones.
                    rows = conn.execute(_CLAIM, params).fetchall()
                    # RETURNING order is unspecified; restore claim order.
                    rows.sort(key=lambda r: (-r[7], r[22]))
                else:
                    rows, wait = self._claim_fair(conn, lim or QueueLimits(), params)
                    if wait is not None and (hint is None or wait < hint):
                        hint = wait
                for row in rows:
                    events.append((queue, "started", row[0], row[2], row[8], row[5], now, None))
                    claimed.append(decode_lenient(self._fields(row)))
        self._add_events(conn, events)
        next_due = self._next_due(conn, queues, now)
        if hint is not None and (next_due is None or hint < next_due):
            next_due = hint
        exchange = Exchange(claimed, lost, next_due_ms=next_due, recovered=recovered)
        return exchange, woke

    # --- fairness and limits ------------------------------------------------------------
    # Tenants take turns through the `tenants` table (see schema.sql): each claim serves
    # the least recently served bucket that has pending jobs, one job per turn, and moves
    # it to the back of the line (`turn` = the next value of the meta counter) whether it
    # took a job or passed because it is at its limit; so a tenant at its limit never
    # sits in front of the others. All of it runs inside the exchange's BEGIN IMMEDIATE
    # transaction, so the limits hold across processes: two workers claiming at once
    # are serialised by the write lock, and the second one reads the running counts the
    # first one's claim left (the triggers update them inside the same transaction).
    @staticmethod
    def _read_limits(conn: sqlite3.Connection) -> dict[str, QueueLimits]:
        cols = ", ".join(_LIMIT_COLUMNS)
        return {
            row[0]: QueueLimits(*row[1:])
            for row in conn.execute(f"SELECT queue, {cols} FROM queue_limits").fetchall()
        }

    @staticmethod
    def _has_tenant_jobs(conn: sqlite3.Connection, queue: str) -> bool:
        return (
            conn.execute(
                "SELECT 1 FROM tenants WHERE queue = ? AND pending > 0 LIMIT 1", (queue,)
            ).fetchone()
            is not None
        )

    @staticmethod
    def _window(
        conn: sqlite3.Connection, queue: str, scope: str, now: int, window_ms: int
    ) -> tuple[int, int | None]:
        """(starts inside the window, the oldest of them) after dropping older ones."""
        conn.execute(
            "DELETE FROM rate_log WHERE queue = ? AND scope = ? AND at_ms <= ?",
            (queue, scope, now - window_ms),
        )
        count, oldest = conn.execute(
            "SELECT count(*), min(at_ms) FROM rate_log WHERE queue = ? AND scope = ?",
            (queue, scope),
        ).fetchone()
        return int(count), None if oldest is None else int(oldest)

    def _claim_fair(
        self, conn: sqlite3.Connection, lim: QueueLimits, params: dict[str, Any]
    ) -> tuple[list[tuple[Any, ...]], int | None]:
        """Claim up to params["limit"] jobs of one queue under its limits, tenants taking
        turns. Returns the claimed rows in claim order (the buckets in the order they were
        served, each in priority/FIFO order) and the ms until a rate window reopens when a
        rate held jobs back (else None)."""
        queue, now = params["queue"], params["now"]
        room = int(params["limit"])
        hint: int | None = None

        def hold(until: int | None, window_ms: int) -> None:
            nonlocal hint
            wait = (until or now) + window_ms - now
            hint = wait if hint is None else min(hint, wait)

        if lim.concurrency is not None:
            running = conn.execute(
                "SELECT n FROM queue_counts WHERE queue = ? AND state = 'running'", (queue,)
            ).fetchone()
            room = min(room, lim.concurrency - (int(running[0]) if running else 0))
        if lim.rate is not None:
            started, oldest = self._window(conn, queue, "", now, lim.rate_window_ms)
            if started >= lim.rate:
                hold(oldest, lim.rate_window_ms)
            room = min(room, lim.rate - started)
        out: list[tuple[Any, ...]] = []
        budget = max(room, 0) + TURN_BUDGET
        while room > 0 and budget > 0:
            # The rotation: tenants with pending jobs, plus the bucket of jobs without a
            # tenant when it has any, least recently served first.
            buckets: list[tuple[int, str, int]] = [
                (int(turn), str(tenant), int(running))
                for tenant, running, turn in conn.execute(
                    "SELECT tenant, running, turn FROM tenants WHERE queue = ? AND pending > 0 "
                    "ORDER BY turn LIMIT ?",
                    (queue, ROTATION_PAGE),
                )
            ]
            if conn.execute(
                "SELECT 1 FROM jobs WHERE queue = ? AND state = 'pending' AND tenant IS NULL "
                "LIMIT 1",
                (queue,),
            ).fetchone():
                row = conn.execute(
                    "SELECT turn FROM tenants WHERE queue = ? AND tenant = ''", (queue,)
                ).fetchone()
                buckets.append((int(row[0]) if row else 0, "", 0))
            buckets.sort()
            if not buckets:
                break
            served = False
            for _, tenant, running_now in buckets:
                if room <= 0 or budget <= 0:
                    break
                budget -= 1
                allowed = room if len(buckets) == 1 else 1
                if tenant:  # jobs without a tenant are not subject to tenant limits
                    if lim.tenant_concurrency is not None:
                        allowed = min(allowed, lim.tenant_concurrency - running_now)
                    if lim.tenant_rate is not None:
                        started, oldest = self._window(
                            conn, queue, tenant, now, lim.tenant_rate_window_ms
                        )
                        if started >= lim.tenant_rate:
                            hold(oldest, lim.tenant_rate_window_ms)
                        allowed = min(allowed, lim.tenant_rate - started)
                # Served or passed: to the back of the line.
                turn = conn.execute(
                    "UPDATE meta SET value = value + 1 WHERE key = 'turn' RETURNING value"
                ).fetchone()[0]
                conn.execute(
                    "INSERT INTO tenants (queue, tenant, turn) VALUES (?, ?, ?) "
                    "ON CONFLICT (queue, tenant) DO UPDATE SET turn = excluded.turn",
                    (queue, tenant, turn),
                )
                if allowed <= 0:
                    continue
                rows = conn.execute(
                    _CLAIM_TENANT if tenant else _CLAIM,
                    {**params, "limit": allowed, "tenant": tenant},
                ).fetchall()
                if not rows:
                    continue
                served = True
                room -= len(rows)
                # RETURNING order is unspecified; restore claim order within the turn.
                rows.sort(key=lambda r: (-r[7], r[22]))
                out.extend(rows)
                log = ([("", now)] * len(rows)) if lim.rate is not None else []
                if tenant and lim.tenant_rate is not None:
                    log += [(tenant, now)] * len(rows)
                if log:
                    conn.executemany(
                        "INSERT INTO rate_log (queue, scope, at_ms) VALUES (?, ?, ?)",
                        [(queue, scope, at) for scope, at in log],
                    )
            if not served:
                break
        return out, hint

    def _apply_outcomes(
        self,
        conn: sqlite3.Connection,
        outcomes: Sequence[Outcome],
        now: int,
        events: list[tuple[Any, ...]],
        slotted: set[str],
    ) -> tuple[list[str], bool]:
        """Apply token-fenced outcomes; returns (lost job ids, whether work became ready).

        Work becomes ready when a job goes back to pending, or when a job of a queue in
        `slotted` (it has a concurrency limit) stops running and frees a slot.
        """
        lost: list[str] = []
        woke = False
        # Completions are most outcomes: apply them in one statement over a JSON array
        # (about half the cost of one UPDATE per job).
        completed: set[str] = set()
        batch = [[o.job_id, o.token, o.result_json] for o in outcomes if o.kind == "complete"]
        if batch:
            rows = conn.execute(
                _COMPLETE_BATCH, {"now": now, "batch": orjson.dumps(batch).decode()}
            ).fetchall()
            for job_id, queue, task, tenant, attempt in rows:
                completed.add(job_id)
                woke |= queue in slotted
                events.append((queue, "completed", job_id, task, tenant, attempt, now, None))
        for o in outcomes:
            params: dict[str, Any] = {"id": o.job_id, "token": o.token, "now": now}
            data: str | None = None
            if o.kind == "complete":
                if o.job_id not in completed:
                    lost.append(o.job_id)
                continue
            if o.kind == "fail":
                sql, kind = _OUTCOME_SQL["fail"], "failed"
                params["err"] = o.error_json
                data = _event_data(error=_message(o.error_json))
            elif o.kind == "retry":
                kind = "retried"
                params["err"] = o.error_json
                if o.delay_ms > 0:
                    sql = _OUTCOME_SQL["retry_later"]
                    params["due"] = now + o.delay_ms
                else:
                    sql = _OUTCOME_SQL["retry_now"]
                    params["seq"] = self._reserve_seq(conn, 1)
                    woke = True
                data = _event_data(error=_message(o.error_json), delay_ms=o.delay_ms)
            elif o.kind == "release":
                sql, kind = _OUTCOME_SQL["release"], "released"
                params["seq"] = self._front_seq(conn)
                woke = True
            elif o.kind == "defer":
                kind = "deferred"
                if o.delay_ms > 0:
                    sql = _OUTCOME_SQL["defer_later"]
                    params["due"] = now + o.delay_ms
                else:
                    sql = _OUTCOME_SQL["defer_now"]
                    params["seq"] = self._reserve_seq(conn, 1)
                    woke = True
                data = _event_data(reason=o.reason or "", delay_ms=o.delay_ms)
            else:
                raise ValueError(f"unknown outcome kind {o.kind!r} for job {o.job_id}")
            row = conn.execute(sql, params).fetchone()
            if row is None:
                lost.append(o.job_id)
                continue
            woke |= row[0] in slotted
            events.append((row[0], kind, o.job_id, row[1], row[2], row[3], now, data))
        return lost, woke

    def _promote_due(self, conn: sqlite3.Connection, queue: str, now: int) -> int:
        """Move due scheduled jobs of `queue` to the back of pending, oldest due first."""
        rowids = conn.execute(
            "SELECT rowid FROM jobs WHERE queue = ? AND state = 'scheduled' "
            "AND scheduled_ms <= ? ORDER BY scheduled_ms LIMIT ?",
            (queue, now, PROMOTE_BATCH),
        ).fetchall()
        if rowids:
            base = self._reserve_seq(conn, len(rowids))
            conn.executemany(
                "UPDATE jobs SET state = 'pending', scheduled_ms = NULL, seq = ? WHERE rowid = ?",
                [(base + i, r[0]) for i, r in enumerate(rowids)],
            )
        return len(rowids)

    def _recover(
        self, conn: sqlite3.Connection, queue: str, now: int, events: list[tuple[Any, ...]]
    ) -> tuple[int, int]:
        """Recover expired leases of `queue`; returns (back to pending, failed).

        A stalled job keeps its FIFO position (it has waited longest); a job whose
        attempts are spent fails instead, which is what ends crash loops.
        """
        params = {"queue": queue, "now": now}
        stalled = conn.execute(_RECOVER_STALLED, params).fetchall()
        failed = conn.execute(_RECOVER_FAILED, params).fetchall()
        events.extend((queue, "stalled", r[0], r[1], r[2], r[3], now, None) for r in stalled)
        events.extend(
            (queue, "failed", r[0], r[1], r[2], r[3], now, _LEASE_FAILED_DATA) for r in failed
        )
        return len(stalled), len(failed)

    @staticmethod
    def _next_due(conn: sqlite3.Connection, queues: Sequence[str], now: int) -> int | None:
        earliest: int | None = None
        for queue in queues:
            due = conn.execute(
                "SELECT min(scheduled_ms) FROM jobs WHERE queue = ? AND state = 'scheduled'",
                (queue,),
            ).fetchone()[0]
            if due is not None and (earliest is None or due < earliest):
                earliest = int(due)
        return None if earliest is None else max(0, earliest - now)

    async def heartbeat(self, leases: Sequence[tuple[str, str]], *, lease_ms: int) -> list[str]:
        """Extend the leases `(job_id, token)` to now + lease_ms; return ids that were lost."""
        if not leases:
            return []

        def tx(conn: sqlite3.Connection) -> list[str]:
            until = self.clock.now_ms() + lease_ms
            return [
                job_id
                for job_id, token in leases
                if conn.execute(
                    "UPDATE jobs SET lease_until_ms = ? "
                    "WHERE id = ? AND token = ? AND state = 'running'",
                    (until, job_id, token),
                ).rowcount
                == 0
            ]

        return await self._write(tx, durable=False)

    async def set_progress(self, job_id: str, token: str, progress_json: str) -> bool:
        """Store progress for a running job; False when the lease is gone."""

        def tx(conn: sqlite3.Connection) -> bool:
            row = conn.execute(
                f"UPDATE jobs SET progress = :progress {_FENCE} {_OUTCOME_RETURNING}",
                {"progress": progress_json, "id": job_id, "token": token},
            ).fetchone()
            if row is None:
                return False
            data = '{"progress":' + progress_json + "}"
            self._add_events(
                conn,
                [(row[0], "progress", job_id, row[1], row[2], row[3], self.clock.now_ms(), data)],
            )
            return True

        stored = await self._write(tx, durable=False)
        if stored:
            self._events_wake.notify()
        return stored

    async def wait_for_jobs(self, queues: Sequence[str], timeout: float) -> None:
        """Return when one of `queues` may have claimable work, or after `timeout` s.

        In-process enqueues wake at once; another process's commit is seen within
        ~15 ms through ``PRAGMA data_version``. Any commit wakes (spurious wake-ups
        are allowed): SQLite cannot say which rows another process touched.
        """
        generation = self._exchange_generation
        if generation is None:  # no exchange yet: compare against "now"
            generation = self._jobs_wake.generation
            version = await self._call(self._data_version)
        else:
            version = self._last_version
        await self._wait_for_change(self._jobs_wake, generation, version, timeout)

    async def recover_expired(self, queues: Sequence[str]) -> int:
        """Recover running jobs whose lease expired; returns how many were recovered."""

        def tx(conn: sqlite3.Connection) -> int:
            now = self.clock.now_ms()
            events: list[tuple[Any, ...]] = []
            total = sum(sum(self._recover(conn, queue, now, events)) for queue in queues)
            self._add_events(conn, events)
            return total

        recovered = await self._write(tx)
        if recovered:
            self._jobs_wake.notify()
            self._events_wake.notify()
        return recovered

    # --- read model -------------------------------------------------------------------
    async def get_job(self, job_id: str) -> Job:
        """Raises `JobNotFound` if there is no such job, `MalformedJob` if undecodable."""
        return decode_job(await self._call(lambda conn: self._load(conn, job_id)))

    async def queue_names(self) -> list[str]:
        """Every queue that has ever held a job, sorted."""
        rows = await self._call(
            lambda conn: conn.execute(
                "SELECT name FROM queues WHERE known = 1 ORDER BY name"
            ).fetchall()
        )
        return [str(r[0]) for r in rows]

    async def counts(self, queue: str) -> QueueCounts:
        """Depth per state (O(1), trigger-maintained), paused flag, age of the oldest
        pending job and completions/failures in the last minute (index lookups)."""

        def read(conn: sqlite3.Connection) -> QueueCounts:
            counts = QueueCounts(queue=queue)
            for state, n in conn.execute(
                "SELECT state, n FROM queue_counts WHERE queue = ?", (queue,)
            ):
                if state in _STATE_FILTER:
                    setattr(counts, state, int(n))
            paused = conn.execute("SELECT paused FROM queues WHERE name = ?", (queue,)).fetchone()
            counts.paused = bool(paused and paused[0])
            oldest = conn.execute(
                "SELECT min(created_ms) FROM jobs WHERE queue = ? AND state = 'pending'", (queue,)
            ).fetchone()[0]
            counts.oldest_pending_ms = None if oldest is None else int(oldest)
            # A range count on the finished index: proportional to last minute's
            # throughput, independent of how many finished jobs are kept.
            since = self.clock.now_ms() - 60_000
            for state in ("completed", "failed"):
                n = conn.execute(
                    "SELECT count(*) FROM jobs WHERE queue = ? AND state = ? AND finished_ms > ?",
                    (queue, state, since),
                ).fetchone()[0]
                setattr(counts, f"{state}_1m", int(n))
            return counts

        return await self._call(read)

    async def list_jobs(
        self,
        queue: str,
        state: JobState,
        *,
        tenant: str | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> JobPage:
        """Jobs in one state: pending in claim order, scheduled soonest due first,
        others newest first. Keyset pagination: each page is one index range scan.

        Raises:
            ValueError: `cursor` is not one this engine handed out for this state.
        """
        state = JobState(state)
        limit = max(1, limit)
        key = _parse_cursor(cursor)

        def read(conn: sqlite3.Connection) -> JobPage:
            rows = _page(conn, queue, state, tenant, key, limit + 1)
            more = len(rows) > limit
            rows = rows[:limit]
            jobs = [decode_lenient(self._fields(r)) for r in rows]
            next_cursor = _cursor_for(state, rows[-1]) if more and rows else None
            return JobPage(jobs, next_cursor)

        return await self._call(read)

    async def read_events(
        self, queues: Sequence[str], *, since: dict[str, str] | None, count: int, block_ms: int
    ) -> list[Event]:
        """Events after `since` (queue -> last seen event id; absent = only new ones).

        Blocks up to `block_ms` when there is nothing yet (see `wait_for_jobs` for how
        another process's commit is noticed).
        """
        positions = dict(since or {})
        missing = [q for q in queues if q not in positions]
        if missing:
            positions.update(await self.last_event_ids(missing))
        after = {q: _int_id(positions[q]) for q in queues}
        loop = asyncio.get_running_loop()
        deadline = loop.time() + block_ms / 1000

        def read(conn: sqlite3.Connection) -> tuple[int, list[Event]]:
            version = self._data_version(conn)  # before the query: no commit slips between
            rows: list[tuple[Any, ...]] = []
            for queue in queues:
                rows.extend(
                    conn.execute(
                        "SELECT id, queue, kind, job_id, task, tenant, attempt, at_ms, data "
                        "FROM events WHERE queue = ? AND id > ? ORDER BY id LIMIT ?",
                        (queue, after[queue], count),
                    ).fetchall()
                )
            rows.sort(key=lambda r: int(r[0]))
            return version, [_event(r) for r in rows[:count]]

        closes = self._closes
        while True:
            generation = self._events_wake.generation
            version, events = await self._call(read)
            remaining = deadline - loop.time()
            if events or remaining <= 0:
                return events
            await self._wait_for_change(self._events_wake, generation, version, remaining)
            if self._closes != closes:  # do not reopen the file through `_call`
                return []
            if loop.time() >= deadline:
                return (await self._call(read))[1]

    async def last_event_ids(self, queues: Sequence[str]) -> dict[str, str]:
        """The id of the newest event of each queue ("0" when it has none)."""

        def read(conn: sqlite3.Connection) -> dict[str, str]:
            out: dict[str, str] = {}
            for queue in queues:
                top = conn.execute(
                    "SELECT max(id) FROM events WHERE queue = ?", (queue,)
                ).fetchone()[0]
                out[queue] = str(top or 0)
            return out

        return await self._call(read)

    # --- operations -------------------------------------------------------------------
    async def pause(self, queue: str) -> None:
        """Workers stop claiming from `queue`; producers keep enqueueing."""
        await self._write(
            lambda conn: conn.execute(
                "INSERT INTO queues (name, paused) VALUES (?, 1) "
                "ON CONFLICT (name) DO UPDATE SET paused = 1",
                (queue,),
            )
        )

    async def resume(self, queue: str) -> None:
        """Undo `pause` and wake idle workers."""
        await self._write(
            lambda conn: conn.execute("UPDATE queues SET paused = 0 WHERE name = ?", (queue,))
        )
        self._jobs_wake.notify()

    def _retry_rows(
        self, conn: sqlite3.Connection, rows: Sequence[dict[str, Any]], now: int
    ) -> int:
        """Put finished jobs back to pending with a fresh attempt budget (history kept).

        A job whose dedupe key is now held by another live job is skipped: two live
        jobs with one key would break the dedupe guarantee.
        """
        base = self._reserve_seq(conn, len(rows))
        events: list[tuple[Any, ...]] = []
        data = _event_data(retried_by="operator")
        for i, job in enumerate(rows):
            changed = conn.execute(
                "UPDATE OR IGNORE jobs SET state = 'pending', attempt = 0, finished_ms = NULL, "
                "result = NULL, token = NULL, lease_until_ms = NULL, scheduled_ms = NULL, "
                "seq = ? WHERE id = ? AND state IN ('failed', 'cancelled')",
                (base + i, job["id"]),
            ).rowcount
            if changed:
                events.append(
                    (job["queue"], "enqueued", job["id"], job["task"], job["tenant"], 0, now, data)
                )
        self._add_events(conn, events)
        return len(events)

    async def retry_job(self, job_id: str) -> Job:
        """failed/cancelled → pending with a fresh attempt budget.

        Raises:
            JobNotFound: no such job.
            InvalidState: the job is not failed or cancelled, or its dedupe key is held
                by another live job.
        """

        def tx(conn: sqlite3.Connection) -> dict[str, Any]:
            job = self._load(conn, job_id)
            state = job["state"]
            if state not in (JobState.FAILED.value, JobState.CANCELLED.value):
                raise InvalidState(
                    f"job {job_id} is {state}; only failed or cancelled jobs can be "
                    "retried (use promote for a scheduled job)"
                )
            if not self._retry_rows(conn, [job], self.clock.now_ms()):
                raise InvalidState(
                    f"job {job_id} cannot be retried: its dedupe key {job['dedupe_key']!r} "
                    "is held by another live job of the queue; wait for that job to finish"
                )
            return self._load(conn, job_id)

        fields = await self._write(tx)
        self._jobs_wake.notify()
        self._events_wake.notify()
        return decode_job(fields)

    async def cancel_job(self, job_id: str) -> Job:
        """scheduled/pending/running → cancelled (a running job's lease is revoked).

        Raises:
            JobNotFound: no such job.
            InvalidState: the job has already finished.
        """

        def tx(conn: sqlite3.Connection) -> dict[str, Any]:
            job = self._load(conn, job_id)
            if job["state"] not in {s.value for s in ACTIVE_STATES}:
                raise InvalidState(
                    f"job {job_id} is already {job['state']}; only scheduled, pending or "
                    "running jobs can be cancelled"
                )
            now = self.clock.now_ms()
            conn.execute(
                "UPDATE jobs SET state = 'cancelled', finished_ms = ?, token = NULL, "
                "lease_until_ms = NULL WHERE id = ?",
                (now, job_id),
            )
            self._add_events(
                conn,
                [(job["queue"], "cancelled", job_id, job["task"], job["tenant"],
                  job["attempt"], now, None)],
            )  # fmt: skip
            return self._load(conn, job_id)

        fields = await self._write(tx)
        self._events_wake.notify()
        self._jobs_wake.notify()  # a cancelled running job may free a limited slot
        return decode_job(fields)

    async def promote_job(self, job_id: str) -> Job:
        """scheduled → pending now (back of its priority).

        Raises:
            JobNotFound: no such job.
            InvalidState: the job is not scheduled.
        """

        def tx(conn: sqlite3.Connection) -> dict[str, Any]:
            job = self._load(conn, job_id)
            if job["state"] != JobState.SCHEDULED.value:
                raise InvalidState(
                    f"job {job_id} is {job['state']}; only scheduled (delayed) jobs can be "
                    "promoted" + (" (use retry for a finished job)"
                                  if job["state"] in {s.value for s in FINISHED_STATES} else "")
                )  # fmt: skip
            conn.execute(
                "UPDATE jobs SET state = 'pending', scheduled_ms = NULL, seq = ? WHERE id = ?",
                (self._reserve_seq(conn, 1), job_id),
            )
            self._add_events(
                conn,
                [(job["queue"], "promoted", job_id, job["task"], job["tenant"],
                  job["attempt"], self.clock.now_ms(), None)],
            )  # fmt: skip
            return self._load(conn, job_id)

        fields = await self._write(tx)
        self._jobs_wake.notify()
        self._events_wake.notify()
        return decode_job(fields)

    async def retry_all(self, queue: str, state: JobState = JobState.FAILED) -> int:
        """Retry every job of `queue` in `state` (failed or cancelled); returns how many.

        Works in batches of short transactions so workers are not locked out while a
        large dead-letter backlog is re-queued.

        Raises:
            InvalidState: `state` is not failed or cancelled.
        """
        state = JobState(state)
        if state not in (JobState.FAILED, JobState.CANCELLED):
            raise InvalidState(
                f"retry_all applies to failed or cancelled jobs, not {state.value}: "
                "use promote for scheduled jobs"
            )
        # Walk the finished index from a moving upper bound so a skipped job (dedupe key
        # held elsewhere) is never read twice.
        bound: tuple[int, int] | None = None
        total = 0
        while True:

            def tx(
                conn: sqlite3.Connection, bound: tuple[int, int] | None = bound
            ) -> tuple[int, tuple[int, int] | None]:
                sql = (
                    f"SELECT {_COLS}, finished_ms, rowid FROM jobs WHERE queue = ? "
                    "AND state = ? AND finished_ms IS NOT NULL"
                )
                args: list[Any] = [queue, state.value]
                if bound is not None:
                    sql += " AND (finished_ms, rowid) < (?, ?)"
                    args += list(bound)
                sql += " ORDER BY finished_ms DESC, rowid DESC LIMIT ?"
                rows = conn.execute(sql, (*args, DELETE_BATCH)).fetchall()
                if not rows:
                    return 0, None
                jobs = [self._fields(r[: len(JOB_COLUMNS)]) for r in rows]
                last = rows[-1]
                return self._retry_rows(conn, jobs, self.clock.now_ms()), (last[-2], last[-1])

            done, bound = await self._write(tx)
            total += done
            if done:
                self._jobs_wake.notify()
                self._events_wake.notify()
            if bound is None:
                return total

    async def clean(self, queue: str, state: JobState, older_than_ms: int, limit: int) -> int:
        """Delete up to `limit` jobs in `state` that finished (for active states: were
        created) more than `older_than_ms` ago, oldest first; returns how many."""
        state = JobState(state)
        if limit <= 0:
            return 0

        def tx(conn: sqlite3.Connection) -> int:
            cutoff = self.clock.now_ms() - older_than_ms
            if state in FINISHED_STATES:
                pick = (
                    "SELECT rowid FROM jobs WHERE queue = ? AND state = ? "
                    "AND finished_ms <= ? ORDER BY finished_ms LIMIT ?"
                )
            else:
                pick = (
                    "SELECT rowid FROM jobs WHERE queue = ? AND state = ? "
                    "AND created_ms <= ? LIMIT ?"
                )
            return conn.execute(
                f"DELETE FROM jobs WHERE rowid IN ({pick})", (queue, state.value, cutoff, limit)
            ).rowcount

        return await self._write(tx)

    async def purge(self, queue: str) -> int:
        """Delete every job of `queue` (all states) and so its dedupe keys; returns how
        many. Deletes in batches of short transactions (workers keep running)."""
        total = 0
        for state in JobState:
            sql = (
                "DELETE FROM jobs WHERE rowid IN (SELECT rowid FROM jobs "
                f"WHERE queue = ? AND {_STATE_FILTER[state.value]} LIMIT {DELETE_BATCH})"
            )

            def tx(conn: sqlite3.Connection, sql: str = sql) -> int:
                return conn.execute(sql, (queue,)).rowcount

            while True:
                deleted = await self._write(tx)
                total += deleted
                if deleted < DELETE_BATCH:
                    break

        def forget(conn: sqlite3.Connection) -> None:
            # The triggers left the queue's tenant rows at zero; its limits stay.
            conn.execute(
                "DELETE FROM tenants WHERE queue = ? AND pending <= 0 AND running <= 0", (queue,)
            )
            conn.execute("DELETE FROM rate_log WHERE queue = ?", (queue,))

        await self._write(forget)
        return total

    async def register_worker(self, worker_id: str, info_json: str, ttl_ms: int) -> None:
        """Record that a worker is alive for `ttl_ms` (its info: queues, in-flight, ...)."""

        def tx(conn: sqlite3.Connection) -> None:
            now = self.clock.now_ms()
            conn.execute("DELETE FROM workers WHERE expires_ms <= ?", (now,))
            conn.execute(
                "INSERT INTO workers (id, info, last_seen_ms, expires_ms) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (id) DO UPDATE SET info = excluded.info, "
                "last_seen_ms = excluded.last_seen_ms, expires_ms = excluded.expires_ms",
                (worker_id, info_json, now, now + ttl_ms),
            )

        await self._write(tx, durable=False)

    async def unregister_worker(self, worker_id: str) -> None:
        """Remove a worker's record at shutdown."""
        await self._write(
            lambda conn: conn.execute("DELETE FROM workers WHERE id = ?", (worker_id,))
        )

    async def workers(self) -> list[dict[str, Any]]:
        """Workers whose record has not expired: `id`, `last_seen` (s), `expires_ms`, info."""

        def read(conn: sqlite3.Connection) -> list[dict[str, Any]]:
            rows = conn.execute(
                "SELECT id, info, last_seen_ms, expires_ms FROM workers "
                "WHERE expires_ms > ? ORDER BY id",
                (self.clock.now_ms(),),
            ).fetchall()
            out = []
            for wid, info, last_seen_ms, expires_ms in rows:
                try:
                    details = orjson.loads(info)
                except orjson.JSONDecodeError:
                    details = {"info_error": "stored worker info is not JSON"}
                if not isinstance(details, dict):
                    details = {"info": details}
                out.append(
                    {
                        **details,
                        "id": wid,
                        "last_seen": last_seen_ms / 1000.0,
                        "expires_ms": expires_ms,
                    }
                )
            return out

        return await self._call(read)

    # --- fairness and limits -----------------------------------------------------------
    async def set_limits(self, queue: str, limits: QueueLimits | None) -> None:
        """Store `queue`'s limits for every process using this file (None: no limits)."""

        def tx(conn: sqlite3.Connection) -> None:
            if limits is None or limits.empty:
                conn.execute("DELETE FROM queue_limits WHERE queue = ?", (queue,))
                return
            cols = ", ".join(_LIMIT_COLUMNS)
            marks = ", ".join("?" * len(_LIMIT_COLUMNS))
            updates = ", ".join(f"{c} = excluded.{c}" for c in _LIMIT_COLUMNS)
            conn.execute(
                f"INSERT INTO queue_limits (queue, {cols}) VALUES (?, {marks}) "
                f"ON CONFLICT (queue) DO UPDATE SET {updates}",
                (queue, *limits.fields().values()),
            )

        await self._write(tx)
        self._jobs_wake.notify()  # other processes see the commit through data_version

    async def get_limits(self, queue: str) -> QueueLimits:
        """The stored limits of `queue` (empty when it has none)."""
        return (await self._call(self._read_limits)).get(queue, QueueLimits())

    async def tenant_running(self, queue: str) -> dict[str, int]:
        """Running jobs per tenant of `queue` (the trigger-kept counts claims check)."""
        rows = await self._call(
            lambda conn: conn.execute(
                "SELECT tenant, running FROM tenants WHERE queue = ? AND tenant != '' "
                "AND running > 0 ORDER BY tenant",
                (queue,),
            ).fetchall()
        )
        return {str(t): int(n) for t, n in rows}

    # --- scheduler: leadership leases and the schedule store ------------------------------
    # Each lease write is one BEGIN IMMEDIATE transaction, so check-then-set is atomic
    # across processes: two schedulers racing for an expired lease are serialised by the
    # write lock and the second one sees the first one's row. Lease writes skip the fsync
    # (durable=False): a renewal lost to a power cut only shortens the lease.
    @staticmethod
    def _live_holder(conn: sqlite3.Connection, name: str, now: int) -> str | None:
        row = conn.execute(
            "SELECT holder FROM leases WHERE name = ? AND expires_ms > ?", (name, now)
        ).fetchone()
        return None if row is None else str(row[0])

    async def acquire_lease(self, name: str, holder: str, ttl_ms: int) -> bool:
        """Take lease `name` if it is free, expired or already ours (see the protocol)."""

        def tx(conn: sqlite3.Connection) -> bool:
            now = self.clock.now_ms()
            if self._live_holder(conn, name, now) not in (None, holder):
                return False
            conn.execute(
                "INSERT INTO leases (name, holder, expires_ms) VALUES (?, ?, ?) "
                "ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, "
                "expires_ms = excluded.expires_ms",
                (name, holder, now + ttl_ms),
            )
            return True

        return await self._write(tx, durable=False)

    async def renew_lease(self, name: str, holder: str, ttl_ms: int) -> bool:
        """Extend lease `name` only while `holder` holds it and it has not expired."""

        def tx(conn: sqlite3.Connection) -> bool:
            now = self.clock.now_ms()
            return (
                conn.execute(
                    "UPDATE leases SET expires_ms = ? "
                    "WHERE name = ? AND holder = ? AND expires_ms > ?",
                    (now + ttl_ms, name, holder, now),
                ).rowcount
                == 1
            )

        return await self._write(tx, durable=False)

    async def release_lease(self, name: str, holder: str) -> bool:
        """Drop lease `name` if `holder` holds it."""

        def tx(conn: sqlite3.Connection) -> bool:
            return (
                conn.execute(
                    "DELETE FROM leases WHERE name = ? AND holder = ? AND expires_ms > ?",
                    (name, holder, self.clock.now_ms()),
                ).rowcount
                == 1
            )

        return await self._write(tx, durable=False)

    async def lease_info(self, name: str) -> LeaseInfo | None:
        """The live holder of lease `name` and its remaining milliseconds."""

        def read(conn: sqlite3.Connection) -> LeaseInfo | None:
            now = self.clock.now_ms()
            row = conn.execute(
                "SELECT holder, expires_ms FROM leases WHERE name = ? AND expires_ms > ?",
                (name, now),
            ).fetchone()
            return None if row is None else LeaseInfo(str(row[0]), int(row[1]) - now)

        return await self._call(read)

    async def put_schedule(self, name: str, spec_json: str, source: str) -> None:
        """Create or update a schedule (an update keeps paused, since and last run)."""

        def tx(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT INTO schedules (name, spec, source, paused, since_ms) "
                "VALUES (?, ?, ?, 0, ?) ON CONFLICT (name) DO UPDATE SET "
                "spec = excluded.spec, source = excluded.source",
                (name, spec_json, source, self.clock.now_ms()),
            )

        await self._write(tx)

    async def schedules(self) -> list[StoredSchedule]:
        """Every stored schedule, by name."""

        def read(conn: sqlite3.Connection) -> list[StoredSchedule]:
            rows = conn.execute(
                "SELECT name, spec, source, paused, since_ms, last_run_ms FROM schedules "
                "ORDER BY name"
            ).fetchall()
            return [
                StoredSchedule(name, spec, source, bool(paused), int(since), last)
                for name, spec, source, paused, since, last in rows
            ]

        return await self._call(read)

    async def delete_schedule(self, name: str) -> bool:
        """Remove a schedule; returns whether it existed."""
        return await self._write(
            lambda conn: conn.execute("DELETE FROM schedules WHERE name = ?", (name,)).rowcount == 1
        )

    async def set_schedule_paused(self, name: str, paused: bool) -> bool:
        """Pause or resume; resuming a paused schedule moves its baseline to now."""

        def tx(conn: sqlite3.Connection) -> bool:
            return (
                conn.execute(
                    "UPDATE schedules SET since_ms = CASE WHEN paused = 1 AND ?1 = 0 "
                    "THEN ?2 ELSE since_ms END, paused = ?1 WHERE name = ?3",
                    (int(paused), self.clock.now_ms(), name),
                ).rowcount
                == 1
            )

        return await self._write(tx)

    async def advance_schedule(self, name: str, run_ms: int, *, lease: str, holder: str) -> bool:
        """Set `last_run_ms` if `holder` holds the live `lease` and `run_ms` is later."""

        def tx(conn: sqlite3.Connection) -> bool:
            if self._live_holder(conn, lease, self.clock.now_ms()) != holder:
                return False
            return (
                conn.execute(
                    "UPDATE schedules SET last_run_ms = ?1 WHERE name = ?2 "
                    "AND (last_run_ms IS NULL OR last_run_ms < ?1)",
                    (run_ms, name),
                ).rowcount
                == 1
            )

        # Not fsynced: losing it to a power cut makes the next leader enqueue the same
        # occurrence again, which the deterministic job id turns into a no-op.
        return await self._write(tx, durable=False)

    # --- dashboard read model -----------------------------------------------------------
    async def throughput_history(self, queue: str, minutes: int) -> Throughput:
        """Completed/failed jobs per minute: one range over `jobs_finished` per state.

        The index (queue, state, finished_ms) covers the query, so its cost is the
        number of jobs finished inside the window, whatever the queue keeps in total.
        """
        minutes = max(1, minutes)
        end = self.clock.now_ms()

        def read(conn: sqlite3.Connection) -> Throughput:
            out = Throughput(queue, end, [0] * minutes, [0] * minutes)
            for state, buckets in (("completed", out.completed), ("failed", out.failed)):
                # Integer division: minutes back from `end` (0 = the newest minute). The
                # state is a literal so the planner can use the partial index.
                rows = conn.execute(
                    "SELECT (?1 - finished_ms) / 60000 AS back, count(*) FROM jobs "
                    f"WHERE queue = ?2 AND state = '{state}' AND finished_ms > ?3 "
                    "GROUP BY back",
                    (end, queue, end - minutes * 60_000),
                ).fetchall()
                for back, n in rows:
                    # A finish stamped after `end` (another process's clock) is "now".
                    buckets[minutes - 1 - max(0, int(back))] += int(n)
            return out

        return await self._call(read)


# --- listings ---------------------------------------------------------------------------

# Each state's filter names the partial index that holds it (see schema.sql).
_STATE_FILTER = {
    "pending": "state = 'pending'",
    "scheduled": "state = 'scheduled'",
    "running": "state = 'running'",
    "completed": "state = 'completed' AND finished_ms IS NOT NULL",
    "failed": "state = 'failed' AND finished_ms IS NOT NULL",
    "cancelled": "state = 'cancelled' AND finished_ms IS NOT NULL",
}


def _parse_cursor(cursor: str | None) -> tuple[int, int] | None:
    if not cursor:
        return None
    try:
        a, b = cursor.split(":")
        return int(a), int(b)
    except ValueError:
        raise ValueError(
            f"invalid cursor {cursor!r}: pass back the cursor of the previous page unchanged"
        ) from None


def _cursor_for(state: JobState, row: Sequence[Any]) -> str:
    """The keyset position after `row` (fields as in JOB_COLUMNS, then rowid)."""
    rowid = row[len(JOB_COLUMNS)]
    if state is JobState.PENDING:
        return f"{row[7]}:{row[22]}"  # priority, seq
    if state is JobState.SCHEDULED:
        return f"{row[13]}:{rowid}"  # scheduled_ms
    if state is JobState.RUNNING:
        return f"{row[12]}:{rowid}"  # created_ms
    return f"{row[15]}:{rowid}"  # finished_ms


def _pending_page(
    conn: sqlite3.Connection,
    base: str,
    args: list[Any],
    key: tuple[int, int] | None,
    n: int,
) -> list[tuple[Any, ...]]:
    """Up to `n` pending rows of one index after the keyset position `key`."""
    order = " ORDER BY priority DESC, seq LIMIT ?"
    if key is None:
        return conn.execute(base + order, (*args, n)).fetchall()
    # (priority DESC, seq ASC) is not one row-value range, so take the rest of the
    # cursor's priority, then the lower priorities: two index range scans.
    priority, seq = key
    rows: list[tuple[Any, ...]] = conn.execute(
        base + " AND priority = ? AND seq > ?" + order, (*args, priority, seq, n)
    ).fetchall()
    if len(rows) < n:
        rows += conn.execute(
            base + " AND priority < ?" + order, (*args, priority, n - len(rows))
        ).fetchall()
    return rows


def _page(
    conn: sqlite3.Connection,
    queue: str,
    state: JobState,
    tenant: str | None,
    key: tuple[int, int] | None,
    n: int,
) -> list[tuple[Any, ...]]:
    """Up to `n` rows of one listing page (JOB_COLUMNS then rowid), in listing order."""
    base = f"SELECT {_COLS}, rowid FROM jobs WHERE queue = ? AND {_STATE_FILTER[state.value]}"
    args: list[Any] = [queue]
    if tenant is not None:
        base += " AND tenant = ?"
        args.append(tenant)
    if state is JobState.PENDING:
        # Jobs without a tenant and tenant jobs sit in different indices (jobs_claim,
        # jobs_tenant_order / jobs_tenant_claim): page through each, merge by claim order.
        if tenant is not None:
            parts = [base + " AND tenant IS NOT NULL"]
        else:
            parts = [base + " AND tenant IS NULL", base + " AND tenant IS NOT NULL"]
        rows = [r for part in parts for r in _pending_page(conn, part, args, key, n)]
        rows.sort(key=lambda r: (-r[7], r[22]))
        return rows[:n]
    column, direction, op = {
        JobState.SCHEDULED: ("scheduled_ms", "ASC", ">"),
        JobState.RUNNING: ("created_ms", "DESC", "<"),
    }.get(state, ("finished_ms", "DESC", "<"))
    if key is not None:
        base += f" AND ({column}, rowid) {op} (?, ?)"
        args += list(key)
    sql = base + f" ORDER BY {column} {direction}, rowid {direction} LIMIT ?"
    return conn.execute(sql, (*args, n)).fetchall()


# --- small helpers ----------------------------------------------------------------------


def _message(error_json: str | None) -> str:
    """The message of an AttemptError JSON (for event data); "" when unreadable."""
    if not error_json:
        return ""
    try:
        return str(orjson.loads(error_json).get("message", ""))
    except (orjson.JSONDecodeError, AttributeError):
        return ""


def _int_id(event_id: str) -> int:
    try:
        return int(event_id)
    except (TypeError, ValueError):
        raise ValueError(
            f"invalid event id {event_id!r}: pass back an id this engine returned"
        ) from None


def _event(row: Sequence[Any]) -> Event:
    event_id, queue, kind, job_id, task, tenant, attempt, at_ms, data = row
    payload: dict[str, Any] = {}
    if data:
        try:
            decoded = orjson.loads(data)
            payload = decoded if isinstance(decoded, dict) else {"value": decoded}
        except orjson.JSONDecodeError:
            payload = {"raw": data}
    return Event(
        id=str(event_id),
        kind=kind,
        job_id=job_id,
        queue=queue,
        at=at_ms / 1000.0,
        task=task,
        tenant=tenant,
        attempt=attempt,
        data=payload,
    )
