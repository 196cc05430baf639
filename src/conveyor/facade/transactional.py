"""Jobs written inside the caller's own Postgres transaction.

Two doors, both on a psycopg 3 connection the caller holds (Django's
``connection.connection``, SQLAlchemy's ``driver_connection``, or psycopg directly):

* `enqueue(..., connection=conn)` / `enqueue_sync(..., connection=conn)` when the jobs
  live in Postgres (the app's engine is ``postgresql://``): the job row is written in
  the caller's transaction, so it exists only if that commits, and workers are woken
  by the NOTIFY Postgres delivers at COMMIT;
* `app.outbox(conn).add(...)` when the jobs live elsewhere (Redis): an outbox row in
  the caller's transaction, turned into a job by `conveyor relay`.

Jobs are validated and encoded by the app exactly as for `enqueue` (`build`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from ..engines import Engine
from ..engines.base import InTransaction
from ..errors import ConfigError
from ..job import NewJob


class Builder(Protocol):
    """What the outbox needs of the app: `build` (validate and encode one job)."""

    def build(self, task: str, payload: Any = None, **options: Any) -> NewJob: ...


__all__ = ["AsyncOutbox", "SyncOutbox", "in_transaction", "outbox_for"]


def in_transaction(engine: Engine, url: str) -> InTransaction:
    """The app's engine as one that can join a caller's transaction.

    Raises:
        ConfigError: the engine is not Postgres (the jobs cannot join that transaction).
    """
    if not isinstance(engine, InTransaction):
        raise ConfigError(
            f"connection= needs the app on a postgresql:// engine (this app uses "
            f"{url.split('://')[0]}://): the job must live in the database of the "
            "transaction. For jobs in Redis, write app.outbox(conn).add(...) and run "
            "`conveyor relay`"
        )
    return engine


def _undefined_outbox(schema: str, exc: Exception) -> ConfigError:
    return ConfigError(
        f"there is no outbox in schema {schema!r} ({exc}): run `conveyor relay APP --from "
        f"postgresql://...?schema={schema} --to ...` once (it creates the schema), and roll "
        "back this transaction (Postgres aborted it)"
    )


class AsyncOutbox:
    """Outbox rows through an async psycopg connection (`app.outbox(conn)`)."""

    def __init__(self, app: Builder, connection: Any, schema: str) -> None:
        self._app = app
        self._connection = connection
        self._schema = schema

    async def add(self, task: str, payload: Any = None, **options: Any) -> int:
        """Write one job (validated like `enqueue`) into the outbox, inside the
        connection's current transaction; returns the row id.

        Raises:
            UnknownTask, InvalidPayload, PayloadTooLarge, InvalidJob: nothing is written.
            ConfigError: the schema has no outbox yet.
        """
        import psycopg.errors
        from psycopg.rows import tuple_row

        sql, params = _statement(self._schema, [self._app.build(task, payload, **options)])
        try:
            async with self._connection.cursor(row_factory=tuple_row) as cur:
                await cur.execute(sql, params)
                row = await cur.fetchone()
        except (psycopg.errors.UndefinedTable, psycopg.errors.InvalidSchemaName) as exc:
            raise _undefined_outbox(self._schema, exc) from exc
        return int(row[0])


class SyncOutbox:
    """Outbox rows through a sync psycopg connection (`app.outbox(conn)`)."""

    def __init__(self, app: Builder, connection: Any, schema: str) -> None:
        self._app = app
        self._connection = connection
        self._schema = schema

    def add(self, task: str, payload: Any = None, **options: Any) -> int:
        """Write one job (validated like `enqueue`) into the outbox, inside the
        connection's current transaction; returns the row id.

        Raises:
            UnknownTask, InvalidPayload, PayloadTooLarge, InvalidJob: nothing is written.
            ConfigError: the schema has no outbox yet.
        """
        import psycopg.errors
        from psycopg.rows import tuple_row

        sql, params = _statement(self._schema, [self._app.build(task, payload, **options)])
        try:
            with self._connection.cursor(row_factory=tuple_row) as cur:
                cur.execute(sql, params)
                row = cur.fetchone()
        except (psycopg.errors.UndefinedTable, psycopg.errors.InvalidSchemaName) as exc:
            raise _undefined_outbox(self._schema, exc) from exc
        return int(row[0])


def _statement(schema: str, jobs: Sequence[NewJob]) -> tuple[str, tuple[Any, ...]]:
    from ..engines.postgres.outbox import outbox_statement

    return outbox_statement(schema, jobs)


def outbox_for(app: Builder, connection: Any, schema: str) -> AsyncOutbox | SyncOutbox:
    """The outbox door for `connection`'s kind (async or sync psycopg).

    Raises:
        ConfigError: `connection` is not a psycopg 3 connection, or psycopg is missing.
    """
    try:
        import psycopg
    except ImportError as exc:
        raise ConfigError(
            "the outbox needs psycopg 3: pip install 'conveyor-jobs[postgres]'"
        ) from exc
    if isinstance(connection, psycopg.AsyncConnection):
        return AsyncOutbox(app, connection, schema)
    if isinstance(connection, psycopg.Connection):
        return SyncOutbox(app, connection, schema)
    raise ConfigError(
        f"app.outbox() takes a psycopg 3 connection, not {type(connection).__name__}: for "
        "Django use django.db.connection.connection, for SQLAlchemy "
        "session.connection().connection.driver_connection"
    )
