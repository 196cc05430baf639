"""One-hop pickup on Redis: an idle worker gets its next job in the reply that wakes it.

Without it an idle worker paid two round trips per job: the pub/sub wake-up, then an
`exchange` to claim. With it (see `lua/_pickup.lua` for the rules and the race):

    worker exchange: nothing claimable -> registered in {p:q}:waiting
    engine:          BLPOP {p:q}:inbox:<worker> on a connection of its own (this module)
    producer:        enqueue claims the job for the worker and RPUSHes it to that inbox
    engine:          BLPOP returns the claimed job -> `take_handed` -> the worker starts it

Only workers that called `accept_handoffs` register (a caller driving `exchange` itself
never gets jobs it does not read). The worker's next full `exchange` on a queue drops the
registration and returns whatever the inbox and the buffer here still hold, and
`stop_handoffs` does the same at shutdown, so a handed job is always either started or
given back; one handed to a worker that died is recovered when its lease expires, like any
claimed job. An idle worker's periodic look renews its registrations instead of a full
exchange per queue (`_idle_look`, `lua/idle_look.lua`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Container, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

from ...job import Job, decode_lenient
from .connection import driver_errors, job_fields
from .lane import Lane
from .wakeups import RedisWakeups

log = logging.getLogger(__name__)

# How long a registration lasts unless the worker's next look renews it (ms). An idle
# worker looks at least every 5 s (its maintenance wake-up), so three looks' worth keeps
# it registered through a slow look or a busy event loop; a lapsed one only means that
# job goes through pending and the pub/sub wake-up, as without the pickup. The price: a
# worker that dies idle may be handed jobs for up to this long, which wait for their
# lease to expire (then recovered like any claimed job).
WAIT_MS = 15_000
# One BLPOP blocks at most this long (s), so a reader whose worker stopped waiting ends soon.
BLOCK_S = 1.0


@dataclass
class _Pickup:
    """One accepting worker's side: where it is registered and what it was handed."""

    queues: set[str] = field(default_factory=set)  # registered, as of the last reply
    handed: list[Job] = field(default_factory=list)  # read by BLPOP, not yet taken
    lane: Lane | None = None  # its blocking connection (BLPOP would stall the shared lane)
    reader: asyncio.Task[None] | None = None
    lease_ms: int = 0  # of the registrations (part of their member in the waiting zset)
    on_handed: Callable[[], None] | None = None  # see accept_handoffs
    refused: bool = False  # Redis refused the BLPOP: back to wake-ups only (see _read_inbox)


class RedisPickup(RedisWakeups):
    """`accept_handoffs`, `take_handed`, `stop_handoffs` (see `engines.base.HandsOff`)."""

    def accept_handoffs(self, worker_id: str, on_handed: Callable[[], None] | None = None) -> None:
        """From now on `worker_id` registers for handed jobs when its claim finds none
        (only on one server over `redis://`, the plain `Lane`: on TLS, Cluster and Sentinel
        nothing changes, since their inboxes would need routing and failover), and
        `on_handed` is called as soon as the reader has one: the worker starts it then,
        without waiting for its idle wait to notice."""
        if type(self._lane) is Lane and self._ack is None:
            self._pickups.setdefault(worker_id, _Pickup()).on_handed = on_handed

    def take_handed(self, worker_id: str) -> list[Job]:
        """Jobs handed to `worker_id` that arrived since the last call (claimed for it:
        running, with a lease)."""
        pickup: _Pickup | None = self._pickups.get(worker_id)
        if pickup is None or not pickup.handed:
            return []
        jobs, pickup.handed = pickup.handed, []
        return jobs

    @driver_errors
    async def stop_handoffs(self, worker_id: str) -> list[Job]:
        """Stop taking handed jobs; returns those handed but not yet taken (the caller
        gives them back)."""
        pickup: _Pickup | None = self._pickups.pop(worker_id, None)
        if pickup is None:
            return []
        queues, pickup.queues = list(pickup.queues), set()  # the reader ends after this
        jobs: list[Job] = []
        if queues:
            # ZREM first: once it ran, nothing more is handed to this worker, so the LPOP
            # after it empties the inbox for good. The empty entry then ends a BLPOP in
            # flight (cancelling it could drop a job already on its way in its reply).
            commands: list[tuple[Any, ...]] = []
            for queue in queues:
                keys = self._q(queue, remember=True)[0]
                inbox = keys.inbox(worker_id)
                commands += [
                    ("ZREM", keys.waiting, f"{pickup.lease_ms}:{worker_id}"),
                    ("LPOP", inbox, 1000),
                    ("RPUSH", inbox, ""),
                    ("PEXPIRE", inbox, int(BLOCK_S * 2000)),
                ]
            assert isinstance(self._lane, Lane)  # accept_handoffs checked
            replies = await self._lane.call_many(commands)
            for reply in replies[1::4]:
                jobs += [_decode(raw) for raw in reply or () if raw]
        if pickup.reader is not None:
            # Bounded: one BLPOP at most, and Redis's connection may be gone.
            await asyncio.wait([pickup.reader], timeout=BLOCK_S * 2)
            pickup.reader.cancel()
        if pickup.lane is not None:
            pickup.lane.close()
        return pickup.handed + jobs

    # --- the exchange's side ------------------------------------------------------------
    def _pickup_args(self, worker_id: str, queue: str, limit: int) -> list[Any]:
        """The two ARGV values that end an exchange call (see exchange.lua)."""
        pickup: _Pickup | None = self._pickups.get(worker_id)
        if pickup is None or limit <= 0:
            # An exchange that only reports outcomes leaves the registration alone: the
            # worker is still idle, and a job handed meanwhile stays for the reader.
            return [0, 0]
        return [0 if pickup.refused else WAIT_MS, 1 if queue in pickup.queues else 0]

    async def _idle_look(
        self, worker_id: str, queues: Sequence[str], skip: Container[str]
    ) -> dict[str, int]:
        """The queues an exchange can pass over: `worker_id` is registered there, nothing
        woke it for them, no outcome of theirs is in `skip`, and `idle_look.lua` found
        nothing due (it renewed those registrations). Maps each to its ms until the next
        scheduled job (-1: none).

        An idle worker's periodic look was a full exchange per queue, ~15 Redis commands
        each; this is one script call with 3 per queue (issue 15: 50 idle queues).
        """
        pickup: _Pickup | None = self._pickups.get(worker_id)
        if pickup is None or pickup.refused or pickup.reader is None or pickup.reader.done():
            return {}  # the full exchange (re)starts the reader
        looked = [
            q for q in queues if q in pickup.queues and q not in skip and not self._woken.get(q)
        ]
        if not looked:
            return {}
        keys: list[str] = []
        for queue in looked:
            qk = self._q(queue, remember=True)[0]
            keys += (qk.waiting, qk.scheduled, qk.running)
        member = f"{pickup.lease_ms}:{worker_id}"
        try:
            dues = await self._eval(
                self._global_script("idle_look"), keys, [self._now(), member, WAIT_MS]
            )
        except ResponseError as exc:  # e.g. refused under OOM: the full exchanges decide
            log.debug("idle look refused (%s); full exchanges instead", exc)
            return {}
        return {q: due for q, due in zip(looked, dues, strict=True) if due != -2}

    def _after_exchange(
        self, worker_id: str, queue: str, limit: int, waiting: int, lease_ms: int
    ) -> list[Job]:
        """Record the reply's registration (only a claim's reply says; see `_pickup_args`);
        returns the jobs read from the inbox so far (they go out with this exchange's)."""
        pickup: _Pickup | None = self._pickups.get(worker_id)
        if pickup is None:
            return []
        if limit <= 0:
            pass
        elif waiting:
            pickup.queues.add(queue)
            pickup.lease_ms = lease_ms
            if pickup.reader is None or pickup.reader.done():
                pickup.reader = asyncio.create_task(
                    self._read_inbox(worker_id, pickup), name="conveyor-redis-pickup"
                )
        else:
            pickup.queues.discard(queue)
        jobs, pickup.handed = pickup.handed, []
        return jobs

    async def _read_inbox(self, worker_id: str, pickup: _Pickup) -> None:
        """BLPOP the worker's inboxes while it is registered anywhere."""
        if pickup.lane is None:
            assert isinstance(self._lane, Lane)  # accept_handoffs checked
            pickup.lane = self._lane.sibling()
        while pickup.queues:
            inboxes = [self._q(q, remember=True)[0].inbox(worker_id) for q in pickup.queues]
            try:
                reply = await pickup.lane.call("BLPOP", *inboxes, BLOCK_S)
            except ResponseError as exc:
                # Refused, not lost (e.g. a cluster that will not BLPOP keys of several
                # slots at once): stop registering. The next exchange, which this wakes,
                # drops the registrations and takes what the inboxes hold.
                log.warning("redis pickup disabled for worker %s: %s", worker_id, exc)
                pickup.refused = True
                self._wake_all()
                return
            except (RedisConnectionError, OSError) as exc:
                # The worker's next exchange takes what the inbox holds; until then it
                # is woken by pub/sub as before.
                log.warning("redis pickup reader: %s; retrying", exc)
                await asyncio.sleep(0.5)
                continue
            if reply is None or not reply[1]:  # timed out, or stop_handoffs' marker
                continue
            job = _decode(reply[1])
            pickup.handed.append(job)
            # The enqueue that handed it popped this registration: the next exchange
            # must register again (a full one), not renew (see _idle_look).
            pickup.queues.discard(job.queue)
            if pickup.on_handed is not None:
                pickup.on_handed()
            self._notify()  # and the idle wait returns, so the worker claims again


def _decode(raw: str) -> Job:
    """A handed job as the inbox holds it: JSON of its flat HGETALL array (orjson: this
    runs between the reply that wakes an idle worker and its handler's start)."""
    return decode_lenient(job_fields(orjson.loads(raw)))
