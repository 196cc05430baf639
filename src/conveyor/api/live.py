"""Live job updates over WebSocket: `WS /ws/jobs`, fed by the engine's event log.

Protocol (JSON text frames, server to client):

* `{"type": "subscribed", "queues": [...], "tenant": ..., "job": ...}` once the live
  feed is attached: every event after this frame is delivered.
* `{"type": "event", "id", "kind", "job_id", "queue", "at", "task", "tenant", "attempt",
  "data"}` per state change or progress update (`kind` is one of
  `conveyor.engines.base.EVENT_KINDS`; a progress update has `data.progress`). `id` is
  the event's position in its queue's log.
* `{"type": "replayed", "count": n}` after the events a `since=` asked for.

Query parameters: `queue` (one or a comma-separated list), `job` (one job id; implies
its queue), `tenant`, `since`. `queue` or `job` is required. A tenant token only ever
sees its own tenant's events.

Auth: `Authorization: Bearer <token>`, or — for browsers, which cannot set headers on a
WebSocket — the subprotocols `conveyor.v1` and `conveyor.bearer.<base64url(token)>`
(`new WebSocket(url, ["conveyor.v1", "conveyor.bearer." + b64url(token)])`; the server
answers `conveyor.v1`). Never the URL: URLs end up in access logs and browser history.
The old `token=` query parameter still works but is deprecated; log lines redact it.

Reconnecting without a gap: remember the last `id` per queue and pass
`since=queue:id,queue:id` (or `since=id` when watching one queue). Events still in the
bounded event log after that position are replayed first, then live ones follow with
no duplicates. Close codes: 4401 no/invalid token, 4403 forbidden, 4404 unknown job,
4422 bad parameters, 1013 too slow (the client fell more than `buffer` events
behind) or engine unavailable, 1012 API restarting; reconnect with `since=` after
1012/1013.

Efficiency: one reader per API process per set of queues (`_Feed`) reads the engine's
log (one blocking XREAD on Redis; a data_version poll on SQLite) and fans each event
out to every subscriber, so 1,000 sockets cost one engine reader, not 1,000.
Subscribers watching one job are indexed by job id: an event costs O(its watchers).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import re
from collections.abc import AsyncIterator, Iterable, Sequence
from typing import TYPE_CHECKING

import orjson
from fastapi import APIRouter, WebSocket
from starlette.websockets import WebSocketDisconnect, WebSocketState

from ..errors import ConveyorError, EngineUnavailable, InvalidArgument, JobNotFound
from ..job import QUEUE_NAME, queue_of
from .auth import authenticate, scoped_tenant
from .errors import ApiError
from .state import api_state

if TYPE_CHECKING:
    from ..app import Conveyor
    from ..engines import Event
    from .metrics import ApiMetrics

log = logging.getLogger("conveyor.api.live")

DEFAULT_BUFFER = 1000  # events a subscriber may lag behind before it is disconnected
READY_TIMEOUT = 5.0  # how long a new subscriber waits for the feed to pin its position
REPLAY_BATCH = 500
# Engine reads made on behalf of *connecting* sockets (job lookup, replay) at once. After
# an API restart every client reconnects in the same second; queued here, they cannot
# exhaust the engine's connection pool (redis-py's async pool fails at 100 connections
# rather than waiting), so live traffic and other requests keep working.
ADMISSION_CONCURRENCY = 32
_EVENT_ID = re.compile(r"^\d{1,20}(-\d{1,20})?$")

CLOSE_RESTART = 1012
CLOSE_TRY_LATER = 1013

router = APIRouter()


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
        (`last_event_ids`) before `ready` is set, and subscribers are only told they
        are subscribed after `ready`, so every later event is read.
        """
        cursor: dict[str, str] = {}
        delay = 0.2
        while True:
            try:
                if not cursor:
                    engine = await self.app.connect()
                    cursor = await engine.last_event_ids(self.queues)
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
        self, app: Conveyor, metrics: ApiMetrics | None = None, *, buffer: int = DEFAULT_BUFFER
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
        self,
        queues: Iterable[str],
        *,
        tenant: str | None = None,
        job: str | None = None,
        tasks: frozenset[str] | None = None,
    ) -> Subscriber:
        """Attach a subscriber; every event after this returns is delivered to it.

        Raises:
            EngineUnavailable: the feed could not pin its position within
                `READY_TIMEOUT` (the engine is down).
        """
        key = tuple(sorted(set(queues)))
        sub = Subscriber(key, tenant=tenant, job=job, buffer=self.buffer, tasks=tasks)
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
        engine = await self.app.connect()
        positions = dict(since)
        while True:
            async with self.admission:
                batch = await engine.read_events(
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


class _Refused(Exception):
    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


def parse_since(text: str | None, queues: Sequence[str]) -> dict[str, str]:
    """Read `since`: `queue:id,queue:id`, or a bare `id` when one queue is watched.

    Raises:
        _Refused: malformed, an unknown queue, or a bare id with several queues.
    """
    if not text:
        return {}
    out: dict[str, str] = {}
    for part in text.split(","):
        queue, sep, event_id = part.strip().rpartition(":")
        if not sep:
            if len(queues) != 1:
                raise _Refused(4422, "since: use queue:id,queue:id when watching several queues")
            queue = queues[0]
        if (
            queue not in queues
            or not _EVENT_ID.match(event_id)
            # Engines hand out ids that fit 63 bits; a bigger one would reach the engine
            # as an overflow and end the socket without a reason.
            or any(int(n) >= 2**63 for n in event_id.split("-"))
        ):
            raise _Refused(4422, f"since: {part[:40]!r} is not queue:event-id of a watched queue")
        out[queue] = event_id
    return out


def _queues(queue: str | None, job: str | None) -> list[str]:
    names = [q.strip() for q in (queue or "").split(",") if q.strip()]
    for name in names:
        if not QUEUE_NAME.match(name):
            raise _Refused(4422, f"queue {name[:40]!r} is invalid: 1-64 letters, digits, _ - .")
    if job is not None:
        job_queue = queue_of(job)
        if not QUEUE_NAME.match(job_queue) or (names and job_queue not in names):
            raise _Refused(4422, "job does not belong to the queue(s) given")
        names = names or [job_queue]
    if not names:
        raise _Refused(4422, "pass queue=<name>[,<name>...] or job=<id>")
    return list(dict.fromkeys(names))


SUBPROTOCOL = "conveyor.v1"
BEARER_SUBPROTOCOL = "conveyor.bearer."


def _subprotocol_token(offered: Iterable[str]) -> str | None:
    """The token of a `conveyor.bearer.<base64url>` subprotocol, if one is offered
    (base64url because a subprotocol may only hold token characters)."""
    for protocol in offered:
        if protocol.startswith(BEARER_SUBPROTOCOL):
            encoded = protocol[len(BEARER_SUBPROTOCOL) :]
            try:
                return base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4)).decode()
            except (ValueError, UnicodeDecodeError):
                return ""  # present but unreadable: refused like a wrong token
    return None


def _bearer(websocket: WebSocket, token: str | None) -> str | None:
    header = websocket.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    from_protocol = _subprotocol_token(websocket.scope.get("subprotocols", ()))
    return from_protocol if from_protocol is not None else token


@router.websocket("/ws/jobs")
async def watch_jobs(
    websocket: WebSocket,
    queue: str | None = None,
    job: str | None = None,
    tenant: str | None = None,
    since: str | None = None,
    token: str | None = None,
) -> None:
    """Push every matching job event as it happens (see the module docstring)."""
    state = api_state(websocket)
    # Accept first, then refuse with a close code: a browser cannot read the HTTP status
    # of a rejected handshake, but it can read a close code and reason.
    offered = websocket.scope.get("subprotocols", ())
    # A browser that offered subprotocols fails the handshake unless one is chosen.
    await websocket.accept(subprotocol=SUBPROTOCOL if SUBPROTOCOL in offered else None)
    try:
        principal = authenticate(state.tokens, _bearer(websocket, token))
        watch_tenant = scoped_tenant(principal, tenant)
        queues = _queues(queue, job)
        if job is None and not all(principal.may_use_queue(q) for q in queues):
            raise _Refused(4403, "this token may not watch these queues")
        positions = parse_since(since, queues)
        if job is not None:
            async with state.hub.admission:
                found = await state.conveyor.get_job(job)
            if not principal.sees(found.tenant, found.queue, found.task):
                raise JobNotFound(f"no job with id {job!r}")
        sub = await state.hub.subscribe(queues, tenant=watch_tenant, job=job, tasks=principal.tasks)
    except ApiError as exc:
        await websocket.close(4000 + exc.status, exc.message[:120])
        return
    except _Refused as exc:
        await websocket.close(exc.code, exc.reason[:120])
        return
    except JobNotFound:
        await websocket.close(4404, "no such job")
        return
    except ConveyorError as exc:
        await websocket.close(CLOSE_TRY_LATER, f"{type(exc).__name__}: {exc}"[:120])
        return
    try:
        await _serve(websocket, state.hub, sub, queues, watch_tenant, job, positions)
    finally:
        state.hub.unsubscribe(sub)


async def _serve(
    websocket: WebSocket,
    hub: EventHub,
    sub: Subscriber,
    queues: list[str],
    tenant: str | None,
    job: str | None,
    positions: dict[str, str],
) -> None:
    metrics = hub.metrics

    async def send_events() -> None:
        await websocket.send_text(
            orjson.dumps(
                {"type": "subscribed", "queues": queues, "tenant": tenant, "job": job}
            ).decode()
        )
        if positions:
            count = 0
            try:
                async for frame in hub.replay(sub, positions):
                    await websocket.send_text(frame)
                    count += 1
            except (ValueError, InvalidArgument) as exc:
                sub.close(4422, f"since: {exc}")
            except ConveyorError as exc:
                sub.close(CLOSE_TRY_LATER, f"{type(exc).__name__}: {exc}")
            else:
                await websocket.send_text(
                    orjson.dumps({"type": "replayed", "count": count}).decode()
                )
        while (live_frame := await sub.next()) is not None:
            await websocket.send_text(live_frame)
            if metrics is not None:
                metrics.ws_events.inc()
        if sub.close_code == CLOSE_TRY_LATER and metrics is not None:
            metrics.ws_overflows.inc()

    async def read_until_closed() -> None:
        # Clients send nothing we need; reading is how a disconnect is noticed.
        while (await websocket.receive())["type"] != "websocket.disconnect":
            pass

    sender = asyncio.create_task(send_events())
    reader = asyncio.create_task(read_until_closed())
    try:
        done, _ = await asyncio.wait({sender, reader}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (sender, reader):
            task.cancel()
        for task in (sender, reader):
            # The peer may be gone already: whatever a dead socket raised is moot now.
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
    if sender in done and websocket.application_state == WebSocketState.CONNECTED:
        with contextlib.suppress(RuntimeError, WebSocketDisconnect):
            await websocket.close(sub.close_code or 1000, sub.close_reason[:120])
