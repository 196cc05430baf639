"""The live-events hub: one engine reader per process, fanned out to many subscribers
(the API's `WS /ws/jobs` sockets; see `conveyor.api.live` for the wire protocol).

Efficiency: one reader (`_Reader`) reads the logs of every queue anyone watches through
the app facade (one blocking XREAD on Redis; a data_version poll on SQLite) and fans each
event out to the subscribers of its queue, so 1,000 sockets on any mix of queues cost
one engine connection, not 1,000. Subscribers watching one job are indexed by job id:
an event costs O(its watchers). Subscriptions are capped per process and per token
(`TooManySubscriptions`, WebSocket close 4429).

Nothing here depends on a web framework: a subscriber is a filter and a bounded outbox,
and whoever serves it (the WebSocket route) drains `Subscriber.next`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from collections.abc import AsyncIterator, Hashable, Iterable, Sequence
from typing import TYPE_CHECKING, Protocol

import orjson

from .errors import EngineUnavailable, TooManySubscriptions
from .partitions import logical

if TYPE_CHECKING:
    from .app import Conveyor
    from .engines import Event

log = logging.getLogger("conveyor.live")

DEFAULT_BUFFER = 1000  # events a subscriber may lag behind before it is disconnected
READY_TIMEOUT = 5.0  # how long a new subscriber waits for the feed to pin its position
REPLAY_BATCH = 500
# Engine reads made on behalf of *connecting* sockets (job lookup, replay) at once. After
# an API restart every client reconnects in the same second; queued here, they cannot
# exhaust the engine's connection pool (redis-py's async pool fails at 100 connections
# rather than waiting), so live traffic and other requests keep working.
ADMISSION_CONCURRENCY = 32
# The reader's longest wait per read: a queue first watched while a read is in flight
# joins the next one, so its first events may come this much later (none is lost).
BLOCK_MS = 250
MAX_SUBSCRIBERS = 10_000  # per process (settings `api_ws_max_subscribers`)
MAX_PER_OWNER = 1_000  # per token (settings `api_ws_max_per_token`)

CLOSE_RESTART = 1012  # WebSocket close code: the server restarts, reconnect with since=
CLOSE_TRY_LATER = 1013  # too slow, or the engine is unavailable


class _Gauge(Protocol):
    def inc(self, amount: float = 1) -> None: ...

    def dec(self, amount: float = 1) -> None: ...


class HubMetrics(Protocol):
    """What the hub records: the number of subscribers (the API's `ApiMetrics` has it)."""

    @property
    def ws_subscribers(self) -> _Gauge: ...


def event_key(event_id: str) -> tuple[int, ...]:
    """Order event ids within a queue: `"42"` (SQLite, memory) or `"1700-3"` (Redis)."""
    return tuple(int(part) for part in event_id.split("-"))


def encode_event(event: Event) -> str:
    """The `event` frame (encoded once per event, shared by every subscriber)."""
    return orjson.dumps({"type": "event", **event.to_dict()}).decode()


class Subscriber:
    """One WebSocket's view of a feed: its filter and a bounded outbox.

    Args:
        queues: the queues watched.
        tenant: only events of this tenant (None: every tenant).
        job: only events of this job (None: every job of `queues`).
        buffer: events held for a slow reader before it is disconnected.
        tasks: only events of these tasks (None: every task).
    """

    def __init__(
        self,
        queues: Sequence[str],
        *,
        tenant: str | None,
        job: str | None,
        buffer: int,
        tasks: frozenset[str] | None = None,
    ) -> None:
        self.queues = tuple(queues)
        self.tenant = tenant
        self.job = job
        self.tasks = tasks
        self._outbox: asyncio.Queue[tuple[Event, str] | None] = asyncio.Queue(buffer)
        self.close_code: int | None = None
        self.close_reason = ""
        # Last event id sent per queue: live events a replay already sent are skipped.
        self.last_sent: dict[str, str] = {}

    def matches(self, event: Event) -> bool:
        """Whether this subscriber should see `event`."""
        if self.tenant is not None and event.tenant != self.tenant:
            return False
        if self.tasks is not None and event.task not in self.tasks:
            return False
        return self.job is None or event.job_id == self.job

    def offer(self, event: Event, text: str) -> bool:
        """Queue one event; False (and the subscriber is closed) when it has fallen
        `buffer` events behind. Dropping one event silently would break the promise
        that a client sees every change, so a slow client is told to reconnect with
        `since=` instead."""
        if self.close_code is not None:
            return False
        try:
            self._outbox.put_nowait((event, text))
        except asyncio.QueueFull:
            self.close(CLOSE_TRY_LATER, "too slow: reconnect with since=<last event id>")
            return False
        return True

    def close(self, code: int, reason: str) -> None:
        """Ask the WebSocket to close after the events already queued, or at once when
        the outbox is full (there is no room for the marker behind them)."""
        if self.close_code is not None:
            return
        self.close_code, self.close_reason = code, reason
        with contextlib.suppress(asyncio.QueueFull):
            self._outbox.put_nowait(None)
            return
        # Full: drop what is queued; the client reconnects with `since` and replays it.
        while not self._outbox.empty():
            self._outbox.get_nowait()
        self._outbox.put_nowait(None)

    async def next(self) -> str | None:
        """The next frame to send, or None once the subscriber is closed (events queued
        before the close are still delivered first, unless the outbox overflowed)."""
        while True:
            item = await self._outbox.get()
            if item is None:
                return None
            event, text = item
            seen = self.last_sent.get(event.queue)
            if seen is not None and event_key(event.id) <= event_key(seen):
                continue  # already sent by the replay
            return text


class _Watchers:
    """The subscribers of one queue: indexed by job id, or broad (every job)."""

    def __init__(self) -> None:
        self.by_job: dict[str, set[Subscriber]] = {}
        self.broad: set[Subscriber] = set()

    def __len__(self) -> int:
        return len(self.broad) + len(self.by_job)

    def add(self, sub: Subscriber) -> None:
        if sub.job is None:
            self.broad.add(sub)
        else:
            self.by_job.setdefault(sub.job, set()).add(sub)

    def remove(self, sub: Subscriber) -> None:
        if sub.job is None:
            self.broad.discard(sub)
            return
        watchers = self.by_job.get(sub.job)
        if watchers is not None:
            watchers.discard(sub)
            if not watchers:
                del self.by_job[sub.job]


class _Reader:
    """The hub's one engine reader: every watched queue's log in one read per turn.

    One reader per engine, not per queue set: on Redis each blocking XREAD holds a
    connection for its whole wait, so 150 sockets on 150 queue sets once held 150
    connections and starved every other request. Now a socket costs no connection of
    its own: the reader's one XREAD covers every queue anyone watches, and a new queue
    joins at the next read (reads block at most `BLOCK_MS`, so that is soon; its position
    is pinned at once, so nothing in between is lost).
    """

    def __init__(self, app: Conveyor) -> None:
        self.app = app
        self.cursor: dict[str, str] = {}  # stored queue -> last event id read
        self.watchers: dict[str, _Watchers] = {}
        # Watched queue -> the stored queues whose logs it reads: itself, or each of its
        # partitions (conveyor.partitions), whose events keep their partition's name
        # (their ids are that partition's, so `since` names the partition).
        self.streams: dict[str, list[str]] = {}
        self._pin_lock = asyncio.Lock()
        self.task: asyncio.Task[None] | None = None
        self.error: str | None = None  # the last read's error while reads fail (readiness)

    def add(self, sub: Subscriber) -> None:
        for queue in sub.queues:
            self.watchers.setdefault(queue, _Watchers()).add(sub)

    def remove(self, sub: Subscriber) -> None:
        for queue in sub.queues:
            watchers = self.watchers.get(queue)
            if watchers is None:
                continue
            watchers.remove(sub)
            if not len(watchers):
                del self.watchers[queue]
                for name in self.streams.pop(queue, [queue]):
                    self.cursor.pop(name, None)
        if not self.watchers and self.task is not None:
            self.task.cancel()
            self.task = None

    async def pin(self, queues: Sequence[str]) -> None:
        """Start reading `queues` from their newest event (already-read ones go on).

        Timeline this avoids: subscriber attaches -> job completes -> the reader starts
        "from now" -> the completion is never seen. The position is pinned before
        `subscribe` returns, and the subscriber is told it is subscribed only then.
        Pins are serialised: a reconnect storm costs one engine call at a time.
        """
        async with self._pin_lock:
            missing = [q for q in queues if q not in self.streams and q in self.watchers]
            if missing:
                streams = {q: await self.app.partitions_of(q) for q in missing}
                names = [name for found in streams.values() for name in found]
                positions = await self.app.event_positions(names)
                for queue in missing:
                    if queue in self.watchers:  # the socket may have left meanwhile
                        self.streams[queue] = streams[queue]
                        for name in streams[queue]:
                            self.cursor[name] = positions.get(name, "0")
        if self.task is None and self.cursor:
            self.task = asyncio.create_task(self._run(), name="conveyor-live-reader")

    def dispatch(self, event: Event) -> int:
        """Offer `event` to every subscriber it matches; returns how many got it."""
        watchers = self.watchers.get(logical(event.queue))
        if watchers is None:
            return 0
        text: str | None = None
        delivered = 0
        for group in (watchers.by_job.get(event.job_id, ()), watchers.broad):
            for sub in list(group):
                if sub.matches(event):
                    text = text or encode_event(event)
                    delivered += sub.offer(event, text)
        return delivered

    async def _run(self) -> None:
        """Read every pinned queue forever, resuming after engine outages."""
        delay = 0.2
        while self.cursor:
            try:
                batch = await self.app.read_events(
                    list(self.cursor), since=dict(self.cursor), count=500, block_ms=BLOCK_MS
                )
                for event in batch:
                    seen = self.cursor.get(event.queue)
                    # Skip queues dropped (or dropped and re-pinned later) while the
                    # read was in flight: their cursor moved on without these events.
                    if seen is None or event_key(event.id) <= event_key(seen):
                        continue
                    self.cursor[event.queue] = event.id
                    self.dispatch(event)
                delay = 0.2
                self.error = None
                continue
            except asyncio.CancelledError:
                raise
            except EngineUnavailable as exc:
                log.warning("live reader: %s; retrying in %.1fs", exc, delay)
                self.error = f"{type(exc).__name__}: {exc}"
            except Exception as exc:  # a reader that dies silently would freeze every socket
                log.exception("live reader failed; retrying in %.1fs", delay)
                self.error = f"{type(exc).__name__}: {exc}"
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)


class EventHub:
    """Shares one engine reader among all subscribers of a process, with caps.

    Args:
        app: the app whose engine's events are read.
        metrics: where subscriber counts and overflows are recorded.
        buffer: events a subscriber may lag before it is disconnected.
        max_subscribers: subscribers the process holds at most (each is an outbox of
            up to `buffer` events in memory).
        max_per_owner: subscribers one owner (a token) holds at most, so one caller
            cannot take every slot.
    """

    def __init__(
        self,
        app: Conveyor,
        metrics: HubMetrics | None = None,
        *,
        buffer: int = DEFAULT_BUFFER,
        max_subscribers: int = MAX_SUBSCRIBERS,
        max_per_owner: int = MAX_PER_OWNER,
    ) -> None:
        self.app = app
        self.metrics = metrics
        self.buffer = buffer
        self.max_subscribers = max_subscribers
        self.max_per_owner = max_per_owner
        self._reader = _Reader(app)
        self._subscribers: dict[Subscriber, Hashable] = {}
        self._per_owner: Counter[Hashable] = Counter()
        self.admission = asyncio.Semaphore(ADMISSION_CONCURRENCY)

    @property
    def feeds(self) -> int:
        """Engine readers running now: 1 while anyone subscribes, else 0."""
        return 0 if self._reader.task is None else 1

    def failing(self) -> dict[str, str]:
        """{"live events": error} while the engine reader's reads fail (it retries with
        backoff meanwhile), else {}: what the API's readiness reports."""
        error = self._reader.error if self._reader.task is not None else None
        return {} if error is None else {"live events": error}

    @property
    def subscribers(self) -> int:
        """Subscribers attached now."""
        return len(self._subscribers)

    async def subscribe(
        self,
        queues: Iterable[str],
        *,
        tenant: str | None = None,
        job: str | None = None,
        tasks: frozenset[str] | None = None,
        owner: Hashable = None,
    ) -> Subscriber:
        """Attach a subscriber; every event after this returns is delivered to it.

        Args:
            queues: the queues to watch.
            tenant: only this tenant's events.
            job: only this job's events.
            tasks: only these tasks' events.
            owner: who the subscription counts against for `max_per_owner`.

        Raises:
            TooManySubscriptions: the process or `owner` is at its cap.
            EngineUnavailable: the position could not be pinned within
                `READY_TIMEOUT` (the engine is down).
        """
        if len(self._subscribers) >= self.max_subscribers:
            raise TooManySubscriptions(
                f"this API process already serves {self.max_subscribers} live subscriptions: "
                "retry later, or add API processes"
            )
        if self._per_owner[owner] >= self.max_per_owner:
            raise TooManySubscriptions(
                f"this token already holds {self.max_per_owner} live subscriptions: close "
                "some, or watch several queues from one socket (queue=a,b)"
            )
        key = tuple(sorted(set(queues)))
        sub = Subscriber(key, tenant=tenant, job=job, buffer=self.buffer, tasks=tasks)
        self._reader.add(sub)
        self._subscribers[sub] = owner
        self._per_owner[owner] += 1
        if self.metrics is not None:
            self.metrics.ws_subscribers.inc()
        try:
            await asyncio.wait_for(self._reader.pin(key), READY_TIMEOUT)
        except (TimeoutError, EngineUnavailable) as exc:
            self.unsubscribe(sub)
            raise EngineUnavailable(
                f"cannot read events of {', '.join(key)}: the engine did not answer within "
                f"{READY_TIMEOUT:g}s"
            ) from exc
        return sub

    def unsubscribe(self, sub: Subscriber) -> None:
        """Detach a subscriber; the reader stops with the last one."""
        if sub not in self._subscribers:
            return
        owner = self._subscribers.pop(sub)
        self._per_owner[owner] -= 1
        if not self._per_owner[owner]:
            del self._per_owner[owner]
        if self.metrics is not None:
            self.metrics.ws_subscribers.dec()
        self._reader.remove(sub)

    async def replay(self, sub: Subscriber, since: dict[str, str]) -> AsyncIterator[str]:
        """Frames of the events after `since` that `sub` matches, oldest first.

        Call after `subscribe`: events that happen during the replay are already
        queued for `sub`, and `Subscriber.next` skips those the replay sent, so the
        client sees each event once and none is lost in between.

        Raises:
            ValueError: an id in `since` is not one this engine hands out.
        """
        positions = dict(since)
        while True:
            async with self.admission:
                batch = await self.app.read_events(
                    list(positions), since=positions, count=REPLAY_BATCH, block_ms=0
                )
            if not batch:
                break
            for event in batch:
                positions[event.queue] = event.id
                if sub.matches(event):
                    yield encode_event(event)
        sub.last_sent.update(positions)

    def disconnect_all(self) -> None:
        """Tell every subscriber to close with 1012 (restarting; reconnect with since)."""
        for sub in list(self._subscribers):
            sub.close(CLOSE_RESTART, "API restarting: reconnect with since=<last event id>")

    async def close(self) -> None:
        """Close every subscriber and stop the reader."""
        self.disconnect_all()
        task, self._reader.task = self._reader.task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
