"""`postgresql://` — jobs in a Postgres schema, for teams whose database is Postgres.

URL: ``postgresql://user:password@host:5432/dbname?schema=conveyor`` (``postgres://``
too; `schema` defaults to ``conveyor`` and is created if missing; other query
parameters go to libpq unchanged, e.g. ``sslmode=require``).

The engine is assembled from its parts, one module each, as the SQLite engine is:

* `connection` — the URL, the pool, transactions, error mapping, LISTEN/NOTIFY;
* `flow` — enqueue, exchange (outcomes, promotion, recovery, fair claims with
  ``FOR UPDATE SKIP LOCKED``), heartbeats, progress and the wake-up notifier;
* `operations` — pause/resume, retry, cancel, promote, retry-all, clean, purge;
* `read_model` — jobs, counts, listings, events, throughput;
* `coordination` — leases, schedules, the worker registry, limits;
* `outbox` — outbox rows written in a caller's transaction, and the relay's step;
* `queries.sql` (named queries), `transitions` (outcome statements derived from
  `conveyor.lifecycle`) and `migrations/` (numbered schema migrations).

`enqueue_in` / `enqueue_in_sync` run the enqueue on a caller's own psycopg connection,
inside the caller's transaction (transactional enqueue).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import psycopg
from psycopg.rows import tuple_row

from ...errors import ConfigError
from ...job import EnqueueResult, Job, NewJob, decode_job
from ...lifecycle import not_found
from .connection import parse_postgres_url
from .coordination import PgCoordination
from .flow import PgFlow, enqueue_results, jobs_document
from .flows import PgFlows
from .operations import PgOperations
from .outbox import PgOutbox
from .queries import JOB_COLUMNS
from .read_model import PgReadModel

__all__ = ["PostgresEngine", "parse_postgres_url"]

_NOT_PSYCOPG = (
    "connection= takes a psycopg 3 connection (psycopg.AsyncConnection for enqueue, "
    "psycopg.Connection for enqueue_sync); for Django use "
    "django.db.connection.connection, for SQLAlchemy session.connection()"
    ".connection.driver_connection"
)


class PostgresEngine(PgFlows, PgFlow, PgOperations, PgReadModel, PgCoordination, PgOutbox):
    """Jobs in one Postgres schema shared by every process of a fleet.

    Args:
        url: ``postgresql://user:password@host:5432/dbname?schema=conveyor``.
        clock: None / the real `Clock` = the database's clock; a `FakeClock` in tests.
        events_maxlen: events kept per queue (older ones are trimmed in batches).

    Raises:
        ConfigError: the URL is malformed.
    """

    def _enqueue_in_statement(self, jobs: Sequence[NewJob]) -> tuple[str, tuple[Any, ...]]:
        """The statement that stores `jobs` on a caller's connection, naming the app's
        quiet queues to it in the same statement (rule 7; queries.sql `enqueue_in`)."""
        quiet = ",".join(sorted(self.unstreamed))
        return self.q["enqueue_in"], (quiet, jobs_document(jobs), self._fixed)

    async def enqueue_in(self, connection: Any, jobs: Sequence[NewJob]) -> list[EnqueueResult]:
        """Store `jobs` through the caller's async psycopg connection, inside its
        current transaction: they exist only if that transaction commits, and workers
        are woken (NOTIFY) at its COMMIT. The schema must exist (`connect` first).

        Raises:
            ConfigError: `connection` is not a psycopg async connection.
        """
        if not isinstance(connection, psycopg.AsyncConnection):
            raise ConfigError(f"{type(connection).__name__} is not supported: {_NOT_PSYCOPG}")
        if not jobs:
            return []
        sql, params = self._enqueue_in_statement(jobs)
        async with connection.cursor(row_factory=tuple_row) as cur:
            await cur.execute(sql, params)
            return enqueue_results(await cur.fetchall())

    def enqueue_in_sync(self, connection: Any, jobs: Sequence[NewJob]) -> list[EnqueueResult]:
        """`enqueue_in` for a synchronous psycopg connection (Django, SQLAlchemy, scripts).

        Raises:
            ConfigError: `connection` is not a psycopg connection.
        """
        if not isinstance(connection, psycopg.Connection):
            raise ConfigError(f"{type(connection).__name__} is not supported: {_NOT_PSYCOPG}")
        if not jobs:
            return []
        sql, params = self._enqueue_in_statement(jobs)
        with connection.cursor(row_factory=tuple_row) as cur:
            cur.execute(sql, params)
            return enqueue_results(cur.fetchall())

    async def get_job_in(self, connection: Any, job_id: str) -> Job:
        """Read a job through the caller's async connection (so inside its transaction:
        a job it enqueued and has not committed yet is visible to it).

        Raises:
            JobNotFound: no such job (as that transaction sees it).
        """
        async with connection.cursor(row_factory=tuple_row) as cur:
            await cur.execute(self.q["load_job"], (job_id,))
            row = await cur.fetchone()
        if row is None:
            raise not_found(job_id)
        return decode_job(dict(zip(JOB_COLUMNS, row, strict=True)))

    def get_job_in_sync(self, connection: Any, job_id: str) -> Job:
        """`get_job_in` for a synchronous psycopg connection.

        Raises:
            JobNotFound: no such job (as that transaction sees it).
        """
        with connection.cursor(row_factory=tuple_row) as cur:
            cur.execute(self.q["load_job"], (job_id,))
            row = cur.fetchone()
        if row is None:
            raise not_found(job_id)
        return decode_job(dict(zip(JOB_COLUMNS, row, strict=True)))
