"""Live job updates over WebSocket: `WS /ws/jobs`, fed by the engine's event log.

Protocol (JSON text frames, server to client):

* `{"type": "subscribed", "queues": [...], "tenant": ..., "job": ..., "not_streamed":
  [...]}` once the live feed is attached: every event after this frame is delivered.
  `not_streamed` names the watched queues declared with `events=False`: they have no
  event log, so no event of theirs will come (poll the job or the counts instead).
* `{"type": "event", "id", "kind", "job_id", "queue", "at", "task", "tenant", "attempt",
  "data"}` per state change or progress update (`kind` is one of
  `conveyor.engines.base.EVENT_KINDS`; a progress update has `data.progress`). `id` is
  the event's position in its queue's log.
* `{"type": "replayed", "count": n}` after the events a `since=` asked for.

Query parameters: `queue` (one or a comma-separated list), `job` (one job id; implies
its queue), `tenant`, `since`. `queue` or `job` is required. A tenant token only ever
sees its own tenant's events (and, if its scope is limited, its queues and tasks).

Auth: `Authorization: Bearer <token>`, or — for browsers, which cannot set headers on a
WebSocket — the subprotocols `conveyor.v1` and `conveyor.bearer.<base64url(token)>`
(`new WebSocket(url, ["conveyor.v1", "conveyor.bearer." + b64url(token)])`; the server
answers `conveyor.v1`). Never the URL: URLs end up in access logs and browser history.
The old `token=` query parameter still works but is deprecated; log lines redact it.

Reconnecting without a gap: remember the last `id` per queue and pass
`since=queue:id,queue:id` (or `since=id` when watching one queue). Events still in the
bounded event log after that position are replayed first, then live ones follow with
no duplicates. Close codes: 4401 no/invalid token, 4403 forbidden, 4404 unknown job,
4422 bad parameters, 4429 too many subscriptions (for the process or the token), 1013
too slow (the client fell more than `buffer` events behind) or engine unavailable, 1012
API restarting; reconnect with `since=` after 1012/1013.

The events come from the process's live-events hub (`conveyor.live.EventHub`): one
engine reader for every socket of the process, whatever queues they watch.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import re
from collections.abc import Iterable, Sequence
from collections.abc import Set as AbstractSet
from typing import TYPE_CHECKING

import orjson
from fastapi import APIRouter, WebSocket
from starlette.websockets import WebSocketDisconnect, WebSocketState

from ..errors import ConveyorError, InvalidArgument, JobNotFound, TooManySubscriptions
from ..job import QUEUE_NAME, queue_of
from ..lifecycle import writes_events
from ..live import CLOSE_TRY_LATER, EventHub, Subscriber
from ..partitions import logical
from .auth import authenticate, scoped_tenant
from .errors import ApiError
from .state import api_state

if TYPE_CHECKING:
    from .metrics import ApiMetrics

_EVENT_ID = re.compile(r"^\d{1,20}(-\d{1,20})?$")

CLOSE_TOO_MANY = 4429  # like HTTP 429: over the process's or the token's subscription cap

router = APIRouter()


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
            logical(queue) not in queues  # a partitioned queue's positions name partitions
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
        job_queue = logical(queue_of(job))
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
    unstreamed = state.conveyor.unstreamed
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
        # The cap counts per principal: a token's tenant and scope (all callers of an
        # open API share one).
        sub = await state.hub.subscribe(
            queues, tenant=watch_tenant, job=job, tasks=principal.tasks, owner=principal
        )
    except ApiError as exc:
        await websocket.close(4000 + exc.status, exc.message[:120])
        return
    except _Refused as exc:
        await websocket.close(exc.code, exc.reason[:120])
        return
    except JobNotFound:
        await websocket.close(4404, "no such job")
        return
    except TooManySubscriptions as exc:
        await websocket.close(CLOSE_TOO_MANY, str(exc)[:120])
        return
    except ConveyorError as exc:
        await websocket.close(CLOSE_TRY_LATER, f"{type(exc).__name__}: {exc}"[:120])
        return
    try:
        await _serve(
            websocket, state.hub, state.metrics, sub, queues, watch_tenant, job, positions,
            unstreamed,
        )  # fmt: skip
    finally:
        state.hub.unsubscribe(sub)


async def _serve(
    websocket: WebSocket,
    hub: EventHub,
    metrics: ApiMetrics,
    sub: Subscriber,
    queues: list[str],
    tenant: str | None,
    job: str | None,
    positions: dict[str, str],
    unstreamed: AbstractSet[str],
) -> None:
    async def send_events() -> None:
        await websocket.send_text(
            orjson.dumps(
                {
                    "type": "subscribed",
                    "queues": queues,
                    "tenant": tenant,
                    "job": job,
                    # Queues with no event log (events=False): nothing will arrive.
                    "not_streamed": [q for q in queues if not writes_events(q, unstreamed)],
                }
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
            metrics.ws_events.inc()
        if sub.close_code == CLOSE_TRY_LATER:
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
