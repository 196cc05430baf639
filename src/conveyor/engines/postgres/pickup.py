"""One-hop pickup on Postgres: an idle worker gets its next job in the NOTIFY that wakes it.

Without it an idle worker paid a wake-up (the enqueue's 'jobs' NOTIFY) and then an
`exchange` to claim: a second round trip and a second transaction after the producer's
commit. With it (migration 0011 holds the rules and the races):

    worker exchange: nothing claimed -> registered in `waiting` (exchange_waiting)
    producer:        enqueue claims the job for it -> pg_notify(its channel, the job row)
    listener:        the notification -> `handed` -> on_handed: the worker starts it

The producer's hand-off commits without waiting for its WAL flush (migration 0014), so
the notification leaves at the commit record; `enqueue` flushes before it returns
(flow.py), so a job is durable when acknowledged but may start a moment before.

The channel and the liveness key belong to this engine's LISTEN session (`_hand_offs_on`,
set up by the listener at each (re)connect): a producer hands a job only to a session that
still holds its key, so a worker that died is never handed anything. Only workers that
called `accept_handoffs` register. A handed job is claimed under a lease like any other;
`stop_handoffs` drops the registrations and returns every job handed but not taken (read
from the table, so one whose notification had not arrived yet is returned too), and after
a reconnect of the listener the jobs handed meanwhile are read from the table too
(`_handed_missed`): a lost notification costs nothing.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
from psycopg import AsyncConnection

from ...job import Job, decode_lenient
from ..values import Outcome
from .connection import Conn, PgCore
from .queries import JOB_COLUMNS

log = logging.getLogger("conveyor.engines.postgres")

# Tokens of the jobs a worker was handed and has not reported an outcome for, kept per
# worker so a read of `handed_to` can tell the ones it never received (tokens, not ids: a
# job whose lease was lost may be handed to the same worker again, under a new token);
# bounded, since a job whose lease was lost never reports an outcome.
_RECEIVED_MAX = 10_000


@dataclass
class _Pickup:
    """One accepting worker's side: what it was handed and whether it may be registered."""

    on_handed: Callable[[], None] | None = None
    handed: list[Job] = field(default_factory=list)  # received, not yet taken
    received: dict[str, None] = field(default_factory=dict)  # tokens, until their outcome
    registered: bool = False  # as of the last exchange_waiting (a hand-off may have used it)
    busy: bool = False  # its last claim got all it asked for (see _exchange_waiting_args)


class PgPickup(PgCore):
    """`accept_handoffs`, `take_handed`, `stop_handoffs` (see `engines.base.HandsOff`)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._pickups: dict[str, _Pickup] = {}
        self._hand_channel: str | None = None  # this LISTEN session's hand-off channel
        self._hand_alive = 0  # the advisory lock key that session holds
        self._background: set[asyncio.Task[None]] = set()  # reads of handed rows

    def accept_handoffs(self, worker_id: str, on_handed: Callable[[], None] | None = None) -> None:
        """From now on `worker_id` registers for handed jobs when its claim finds none, and
        `on_handed` is called as soon as one arrives: the worker starts it then, without
        waiting for its idle wait to notice."""
        self._pickups.setdefault(worker_id, _Pickup()).on_handed = on_handed

    def take_handed(self, worker_id: str) -> list[Job]:
        """Jobs handed to `worker_id` that arrived since the last call (claimed for it:
        running, with a lease)."""
        pickup = self._pickups.get(worker_id)
        if pickup is None or not pickup.handed:
            return []
        jobs, pickup.handed = pickup.handed, []
        return jobs

    async def stop_handoffs(self, worker_id: str) -> list[Job]:
        """Stop taking handed jobs; returns those handed but not taken (the caller gives
        them back), including any whose notification has not arrived yet."""
        pickup = self._pickups.pop(worker_id, None)
        if pickup is None:
            return []

        async def stop(conn: Conn) -> list[Job]:
            # The DELETE waits for a producer handing this worker a job right now, so
            # the read after it sees every job ever handed to it.
            await conn.execute(self.q["stop_waiting"], (worker_id,))
            cur = await conn.execute(self.q["handed_to"], ([worker_id],))
            return [self._job(row) for row in await cur.fetchall()]

        held = await self._run(stop, single=False)
        received = pickup.received
        return pickup.handed + [job for job in held if job.token not in received]

    # --- the exchange's side ----------------------------------------------------------------
    def _exchange_waiting_args(
        self, worker_id: str, limit: int, args: tuple[Any, ...]
    ) -> tuple[Any, ...] | None:
        """`exchange`'s arguments extended for `exchange_waiting`, or None when this worker
        takes no handed jobs or claims nothing (then the plain `exchange` runs).

        A busy worker (its last claim got a full batch) that is not registered claims with
        the plain `exchange` too: a full batch would not register it, and the wrapper's
        reading of the reply costs server CPU on every exchange of a burst. The claim
        after a short one registers it.
        """
        pickup = self._pickups.get(worker_id)
        if pickup is None or limit <= 0 or (pickup.busy and not pickup.registered):
            return None
        channel = self._hand_channel if self._listening else None
        if channel is None and not pickup.registered:
            return None
        return (*args, channel, self._hand_alive, pickup.registered)

    def _after_exchange_waiting(
        self,
        worker_id: str,
        waiting: int | None,
        outcomes: Sequence[Outcome],
        limit: int,
        claimed: int,
    ) -> None:
        """Note the registration the exchange left (None: it did not touch it), whether
        its claim got all it asked for, and forget the handed jobs whose outcomes it
        carried."""
        pickup = self._pickups.get(worker_id)
        if pickup is None:
            return
        if limit > 0:
            pickup.busy = claimed >= limit
        if waiting is not None:
            pickup.registered = waiting > 0
        if pickup.received:
            for outcome in outcomes:
                pickup.received.pop(outcome.token, None)

    # --- the listener's side ----------------------------------------------------------------
    async def _hand_offs_on(self, conn: AsyncConnection[Any]) -> None:
        """On a new LISTEN session: hold a fresh liveness key and listen on its channel.
        A key another session holds (a 1 in 2**62 chance) is not taken: draw again."""
        self._hand_channel = None
        for _ in range(5):
            key = secrets.randbits(62)
            cur = await conn.execute(self.q["hold_alive"], (key,))
            row = await cur.fetchone()
            if row is not None and row[0]:
                channel = f"conveyor-hand:{key:x}"
                await conn.execute(f'LISTEN "{channel}"')
                self._hand_alive, self._hand_channel = key, channel
                return

    def _handed_note(self, payload: str) -> None:
        """A notification on the hand-off channel: the job row, or its id alone when the
        row did not fit a notification (then read it)."""
        try:
            row = orjson.loads(payload)
        except orjson.JSONDecodeError:
            log.warning("unreadable hand-off notification ignored: %.80r", payload)
            return
        if len(row) == 1:
            task = asyncio.get_running_loop().create_task(self._read_handed(str(row[0])))
            self._background.add(task)
            task.add_done_callback(self._background.discard)
            return
        self._deliver([self._job(row)])

    async def _read_handed(self, job_id: str) -> None:
        try:
            job = await self.get_handed(job_id)
        except Exception as exc:  # recovered when its lease expires, as if never received
            log.warning("reading handed job %s failed (%s)", job_id, exc)
            return
        if job is not None:
            self._deliver([job])

    async def get_handed(self, job_id: str) -> Job | None:
        """The row of a job handed by id (too large for a notification); None when it is
        not running any more (its lease was lost meanwhile)."""

        async def read(conn: Conn) -> Job | None:
            cur = await conn.execute(self.q["load_job"], (job_id,))
            row = await cur.fetchone()
            return None if row is None else self._job(row)

        job = await self._run(read, single=True)
        return job if job is not None and job.state == "running" else None

    async def _handed_missed(self) -> None:
        """After the listener reconnected: jobs handed to this engine's workers while it was
        away (their notifications are lost), read from the table."""
        pickups = self._pickups
        if not pickups:
            return

        async def read(conn: Conn) -> list[Job]:
            cur = await conn.execute(self.q["handed_to"], (list(pickups),))
            return [self._job(row) for row in await cur.fetchall()]

        try:
            jobs = await self._run(read, single=True)
        except Exception as exc:  # recovered when their leases expire
            log.warning("reading jobs handed while the listener was away failed (%s)", exc)
            return
        self._deliver(jobs)

    def _deliver(self, jobs: Sequence[Job]) -> None:
        for job in jobs:
            pickup = self._pickups.get(job.worker or "")
            token = job.token or ""
            if pickup is None or token in pickup.received:
                continue  # stopped: stop_handoffs returned it; or already here
            pickup.received[token] = None
            if len(pickup.received) > _RECEIVED_MAX:
                del pickup.received[next(iter(pickup.received))]
            pickup.handed.append(job)
            if pickup.on_handed is not None:
                pickup.on_handed()

    @staticmethod
    def _job(row: Sequence[Any]) -> Job:
        return decode_lenient(dict(zip(JOB_COLUMNS, row, strict=True)))
