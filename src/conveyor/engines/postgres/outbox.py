"""The outbox on Postgres: rows written in the caller's transaction, relayed as jobs.

`outbox_add_in` / `outbox_add_in_sync` insert built jobs (as `enqueue` takes them) on
the caller's own connection; `relay_batch` is the relay's one step: take up to `limit`
committed rows with ``FOR UPDATE SKIP LOCKED``, hand them to the target engine as
jobs whose id and dedupe key derive from the row id, delete them, commit. The rows
stay locked while the target stores them, so:

* several relays never take the same row (SKIP LOCKED);
* a relay killed before its COMMIT releases the rows untouched (the server rolls the
  transaction back when the connection drops), and the next relay sends the same job
  ids again, which the target answers with the jobs it already has: a row becomes
  exactly one job, however often relays die.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import orjson
from psycopg.rows import tuple_row

from ...job import EnqueueResult, NewJob
from .connection import Conn, PgCore, parse_postgres_url
from .flow import jobs_document
from .queries import TEMPLATES

__all__ = ["PgOutbox", "outbox_statement"]

Send = Callable[[Sequence[NewJob]], Awaitable[list[EnqueueResult]]]


def outbox_statement(schema: str, jobs: Sequence[NewJob]) -> tuple[str, tuple[Any, ...]]:
    """The statement (and parameters) that writes `jobs` (built by the app) into the
    outbox of `schema`; it returns the row ids. Run it on the caller's connection.

    Raises:
        ConfigError: `schema` is not a plain identifier.
    """
    _, checked = parse_postgres_url(f"postgresql:///?schema={schema}")
    sql = TEMPLATES["outbox_add"].replace("{schema}", '"' + checked + '"')
    return sql, (jobs_document(jobs),)


class PgOutbox(PgCore):
    """The outbox table and the relay's step."""

    async def outbox_add_in(self, connection: Any, jobs: Sequence[NewJob]) -> list[int]:
        """Insert `jobs` into the outbox through the caller's async psycopg connection,
        inside its transaction; returns the row ids."""
        sql, params = outbox_statement(self.schema, jobs)
        async with connection.cursor(row_factory=tuple_row) as cur:
            await cur.execute(sql, params)
            return [int(r[0]) for r in await cur.fetchall()]

    def outbox_add_in_sync(self, connection: Any, jobs: Sequence[NewJob]) -> list[int]:
        """`outbox_add_in` for a synchronous psycopg connection."""
        sql, params = outbox_statement(self.schema, jobs)
        with connection.cursor(row_factory=tuple_row) as cur:
            cur.execute(sql, params)
            return [int(r[0]) for r in cur.fetchall()]

    def relayed_job(self, row_id: int, doc: dict[str, Any], created_ms: int) -> NewJob:
        """The job an outbox row becomes: its id and (unless the producer chose one) its
        dedupe key derive from the row id, and a delay counts from when the row was
        written, not from when it is relayed."""
        queue = str(doc["queue"])
        delay_ms = int(doc.get("delay_ms") or 0)
        run_at_ms = doc.get("run_at_ms")
        if run_at_ms is None and delay_ms > 0:
            run_at_ms = created_ms + delay_ms
        return NewJob(
            id=f"{queue}:outbox-{self.schema}-{row_id}",
            queue=queue,
            task=str(doc["task"]),
            payload_json=str(doc["payload"]),
            max_attempts=int(doc["max_attempts"]),
            priority=int(doc.get("priority") or 0),
            tenant=doc.get("tenant"),
            dedupe_key=doc.get("dedupe_key") or f"outbox:{self.schema}:{row_id}",
            timeout=None if doc.get("timeout_ms") is None else doc["timeout_ms"] / 1000,
            backoff_json=doc.get("backoff"),
            delay_ms=0,
            run_at_ms=None if run_at_ms is None else int(run_at_ms),
        )

    async def relay_batch(self, send: Send, limit: int = 100) -> list[EnqueueResult]:
        """Relay up to `limit` committed outbox rows through `send` (the target engine's
        `enqueue`), then delete them, in one transaction; returns what `send` answered
        (`created=False`: the job existed already, sent by a relay that died)."""

        async def tx(conn: Conn) -> list[EnqueueResult]:
            cur = await conn.execute(self.q["outbox_take"], (limit,))
            rows = await cur.fetchall()
            if not rows:
                return []
            jobs = [self.relayed_job(int(r[0]), orjson.loads(r[1]), int(r[2])) for r in rows]
            results = await send(jobs)
            await conn.execute(self.q["outbox_done"], ([int(r[0]) for r in rows],))
            return results

        return await self._run(tx)

    async def outbox_lag_ms(self) -> int | None:
        """Age of the oldest row not yet relayed, in ms (None when the outbox is empty)."""

        async def read(conn: Conn) -> int | None:
            cur = await conn.execute(self.q["outbox_lag"], (self._fixed,))
            row = await cur.fetchone()
            return None if row is None or row[0] is None else int(row[0])

        return await self._run(read, single=True)

    async def wait_for_outbox(self, timeout: float) -> None:
        """Return when a transaction that added outbox rows committed (NOTIFY), or after
        `timeout` s (the relay's polling interval)."""
        if self._pool is None:
            await self.connect()
        await self._wait(self._outbox_wake, self._outbox_wake.generation, timeout)
