"""The live-events hub: one engine reader per set of queues, fanned out to many
subscribers (the API's `WS /ws/jobs` sockets; see `conveyor.api.live` for the wire
protocol).

Efficiency: one reader per process per set of queues (`_Feed`) reads the engine's log
through the app facade (one blocking XREAD on Redis; a data_version poll on SQLite) and
fans each event out to every subscriber, so 1,000 sockets cost one engine reader, not
1,000. Subscribers watching one job are indexed by job id: an event costs O(its
watchers).

Nothing here depends on a web framework: a subscriber is a filter and a bounded outbox,
and whoever serves it (the WebSocket route) drains `Subscriber.next`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Iterable, Sequence
from typing import TYPE_CHECKING, Protocol

import orjson

from .errors import EngineUnavailable

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
    """

    def __init__(
        self, queues: Sequence[str], *, tenant: str | None, job: str | None, buffer: int
    ) -> None:
        self.queues = tuple(queues)
        self.tenant = tenant
        self.job = job
        self._outbox: asyncio.Queue[tuple[Event, str] | None] = asyncio.Queue(buffer)
        self.close_code: int | None = None
        self.close_reason = ""
        # Last event id sent per queue: live events a replay already sent are skipped.
        self.last_sent: dict[str, str] = {}

    def matches(self, event: Event) -> bool:
        """Whether this subscriber should see `event`."""
        if self.tenant is not None and event.tenant != self.tenant:
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


class _Feed:
    """The one engine reader of a queue set, fanning events out to its subscribers."""

    def __init__(self, app: Conveyor, queues: tuple[str, ...]) -> None:
        self.app = app
        self.queues = queues
        self.by_job: dict[str, set[Subscriber]] = {}
        self.broad: set[Subscriber] = set()
        self.ready = asyncio.Event()
        self.task = asyncio.create_task(self._run(), name=f"conveyor-feed-{','.join(queues)}")

    def __len__(self) -> int:
        return len(self.broad) + sum(len(s) for s in self.by_job.values())

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

    def dispatch(self, event: Event) -> int:
        """Offer `event` to every subscriber it matches; returns how many got it."""
        text: str | None = None
        delivered = 0
        for group in (self.by_job.get(event.job_id, ()), self.broad):
            for sub in list(group):
                if sub.matches(event):
                    text = text or encode_event(event)
                    delivered += sub.offer(event, text)
        return delivered

    async def _run(self) -> None:
        """Read the queues' events forever, resuming after engine outages.

        Timeline this avoids: subscriber attaches -> job completes -> reader starts
        "from now" -> the completion is never seen. The reader pins its position
        (`app.event_positions`) before `ready` is set, and subscribers are only told they
        are subscribed after `ready`, so every later event is read.
        """
        cursor: dict[str, str] = {}
        delay = 0.2
        while True:
            try:
                if not cursor:
                    cursor = await self.app.event_positions(self.queues)
                    self.ready.set()
                async for event in self.app.events(self.queues, since=cursor):
                    cursor[event.queue] = event.id
                    self.dispatch(event)
                    delay = 0.2
            except asyncio.CancelledError:
                raise
            except EngineUnavailable as exc:
                log.warning("event feed %s: %s; retrying in %.1fs", self.queues, exc, delay)
            except Exception:  # a reader that dies silently would freeze every socket
                log.exception("event feed %s failed; retrying in %.1fs", self.queues, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)


class EventHub:
    """Shares one engine reader per queue set among all subscribers of an API process.

    Args:
        app: the app whose engine's events are read.
        metrics: where subscriber counts and overflows are recorded.
        buffer: events a subscriber may lag before it is disconnected.
    """

    def __init__(
        self, app: Conveyor, metrics: HubMetrics | None = None, *, buffer: int = DEFAULT_BUFFER
    ) -> None:
        self.app = app
        self.metrics = metrics
        self.buffer = buffer
        self._feeds: dict[tuple[str, ...], _Feed] = {}
        self._subscribers: dict[Subscriber, _Feed] = {}
        self.admission = asyncio.Semaphore(ADMISSION_CONCURRENCY)

    @property
    def feeds(self) -> int:
        """Engine readers running now (one per distinct queue set)."""
        return len(self._feeds)

    async def subscribe(
        self, queues: Iterable[str], *, tenant: str | None = None, job: str | None = None
    ) -> Subscriber:
        """Attach a subscriber; every event after this returns is delivered to it.

        Raises:
            EngineUnavailable: the feed could not pin its position within
                `READY_TIMEOUT` (the engine is down).
        """
        key = tuple(sorted(set(queues)))
        sub = Subscriber(key, tenant=tenant, job=job, buffer=self.buffer)
        feed = self._feeds.get(key)
        if feed is None:
            feed = self._feeds[key] = _Feed(self.app, key)
        feed.add(sub)
        self._subscribers[sub] = feed
        if self.metrics is not None:
            self.metrics.ws_subscribers.inc()
        try:
            await asyncio.wait_for(feed.ready.wait(), READY_TIMEOUT)
        except TimeoutError:
            self.unsubscribe(sub)
            raise EngineUnavailable(
                f"cannot read events of {', '.join(key)}: the engine did not answer within "
                f"{READY_TIMEOUT:g}s"
            ) from None
        return sub

    def unsubscribe(self, sub: Subscriber) -> None:
        """Detach a subscriber; the feed's reader stops with its last subscriber."""
        feed = self._subscribers.pop(sub, None)
        if feed is None:
            return
        if self.metrics is not None:
            self.metrics.ws_subscribers.dec()
        feed.remove(sub)
        if not len(feed) and self._feeds.get(feed.queues) is feed:
            del self._feeds[feed.queues]
            feed.task.cancel()

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
        """Close every subscriber and stop every reader."""
        self.disconnect_all()
        feeds, self._feeds = list(self._feeds.values()), {}
        for feed in feeds:
            feed.task.cancel()
        for feed in feeds:
            with contextlib.suppress(asyncio.CancelledError):
                await feed.task
