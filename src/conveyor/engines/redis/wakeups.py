"""The Redis engine's wake-up notifier: idle workers block on pub/sub, not polling.

Scripts PUBLISH to `<prefix>:wake:<queue>` when they make work claimable; one pub/sub
connection per engine, read by one listener task, records the wake-ups per queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Sequence

from redis.asyncio.client import PubSub
from redis.asyncio.connection import Connection

from .connection import RedisBase, driver_errors

log = logging.getLogger(__name__)


class RedisWakeups(RedisBase):
    """`wait_for_jobs` and the listener behind it."""

    @driver_errors
    async def wait_for_jobs(self, queues: Sequence[str], timeout: float) -> None:
        """Block until a wake-up for one of `queues` arrives, or `timeout` seconds pass.

        Scripts PUBLISH to `<prefix>:wake:<queue>` when they refill an empty pending set.
        Why a wake-up cannot be missed, as a timeline of the race it prevents:

            worker: exchange finds pending empty ... wait_for_jobs
            producer:                  enqueue + PUBLISH   (lands in between)

        1. The engine stays subscribed (one pub/sub connection, read by a listener task
           that records "woken" per queue), so a PUBLISH between the claim and the wait
           is recorded and the wait returns at once.
        2. `exchange` forgets a queue's wake-up just before sending its claim: anything
           published earlier is visible to that claim.
        3. The first wait for a queue subscribes, waits for Redis to confirm, and returns
           at once (a spurious wake-up): the claim before it ran while nobody listened,
           so the caller must claim again, now that it is subscribed.
        4. After the pub/sub connection is lost and re-established, every queue counts as
           woken, since messages published meanwhile are gone.

        Raises:
            EngineUnavailable: Redis cannot be reached.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        if any(q not in self._subscribed for q in queues):
            await self._ensure_subscribed(queues, deadline)
            return
        # 5. A job handed to a worker of this engine (pickup.py) wakes it too.
        while not any(self._woken.get(q) for q in queues) and not self._handed():
            remaining = deadline - loop.time()
            if remaining <= 0:
                return
            await self._wait_signal(remaining)

    def _handed(self) -> bool:
        return any(pickup.handed for pickup in self._pickups.values())

    async def _ensure_subscribed(self, queues: Sequence[str], deadline: float) -> None:
        new = [q for q in queues if q not in self._requested]
        if new:
            if self._subscribing is not None and not self._subscribing.done():
                await asyncio.shield(self._subscribing)
            # Shielded: a waiter cancelled mid-SUBSCRIBE (the worker does that when local
            # work arrives) must not cut the command in half on the shared connection.
            self._subscribing = asyncio.ensure_future(self._subscribe(new))
            await asyncio.shield(self._subscribing)
        loop = asyncio.get_running_loop()
        while any(q not in self._subscribed for q in queues):
            remaining = deadline - loop.time()
            if remaining <= 0:
                return
            await self._wait_signal(remaining)

    async def _wait_signal(self, seconds: float) -> None:
        """Wait for the listener's next notification, at most `seconds`."""
        signal = self._signal
        # asyncio.timeout, not wait_for: 3.11's wait_for can drop a cancellation.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await signal.wait()

    async def _subscribe(self, queues: list[str]) -> None:
        if self._pubsub is None:
            self._pubsub = self._new_pubsub()
        pubsub = self._pubsub
        await pubsub.subscribe(*(self._keys.queue(q).wake_channel for q in queues))
        self._requested.update(queues)
        for q in queues:
            self._woken.setdefault(q, False)
        if pubsub.connection is not None:
            pubsub.connection.register_connect_callback(self._on_pubsub_connect)
        if self._listener is None or self._listener.done():
            self._listener = asyncio.create_task(self._listen(pubsub), name="conveyor-redis-wake")

    def _new_pubsub(self) -> PubSub:
        """A pub/sub connection; on a cluster, to any master: scripts PUBLISH (not
        SPUBLISH), which Redis Cluster forwards to every node."""
        if self._cluster is None:
            return self._client.pubsub()
        return self._cluster.pubsub(node=random.choice(self._cluster.get_primaries()))

    async def _reopen_pubsub(self, old: PubSub) -> PubSub:
        """On a cluster, the node the listener read from may be gone for good (killed,
        replaced by its replica), so reconnecting to it would fail forever: subscribe
        again on a master of the refreshed slot map."""
        with contextlib.suppress(Exception):
            await old.aclose()  # type: ignore[no-untyped-call]
        with contextlib.suppress(Exception):
            await self._cluster.nodes_manager.initialize()  # type: ignore[union-attr]
        pubsub = self._pubsub = self._new_pubsub()
        with contextlib.suppress(Exception):
            await pubsub.subscribe(*(self._keys.queue(q).wake_channel for q in self._requested))
        return pubsub

    def _on_pubsub_connect(self, connection: Connection) -> None:
        # redis-py re-subscribed after a reconnect; whatever was published while the
        # connection was down is lost, so treat every queue as woken.
        self._wake_all()

    def _wake_all(self) -> None:
        for q in self._woken:
            self._woken[q] = True
        self._notify()

    def _notify(self) -> None:
        self._signal.set()
        self._signal = asyncio.Event()

    async def _listen(self, pubsub: PubSub) -> None:
        """Read the pub/sub connection until cancelled, recording wake-ups per queue."""
        task = asyncio.current_task()
        # Checked each turn: a cancel that redis-py swallowed must still end the loop.
        while task is None or not task.cancelling():
            try:
                msg = await pubsub.get_message(ignore_subscribe_messages=False, timeout=10.0)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # connection lost and redis-py's retries exhausted
                log.warning("redis wake-up listener lost its connection (%s); retrying", exc)
                self._wake_all()
                await asyncio.sleep(0.5)
                if self._cluster is not None:
                    pubsub = await self._reopen_pubsub(pubsub)
                continue
            if msg is None:
                continue
            kind = msg["type"]
            queue = self._keys.queue_of_channel(msg["channel"])
            if kind == "message":
                self._woken[queue] = True
                self._notify()
            elif kind == "subscribe":
                self._subscribed.add(queue)
                self._notify()
