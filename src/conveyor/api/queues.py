"""`/queues`: depths and the runbook's queue operations (admin token only).

Queue-wide numbers and operations span every tenant, so tenant tokens get 403 here.
Numbers come from the shared read model (`conveyor.status`), so the API, the CLI
(`conveyor queues`) and the dashboard agree.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Request
from starlette.responses import Response

from ..job import JobState
from ..status import queue_overview
from .auth import AdminPrincipal
from .errors import ERROR_RESPONSES, STATE_CONFLICT, json_response
from .models import (
    QUEUE_PATTERN,
    CleanRequest,
    CountOut,
    PauseOut,
    QueueOverviewOut,
    QueuesOut,
    RetryAllRequest,
)
from .state import api_state

router = APIRouter(tags=["queues"], responses=ERROR_RESPONSES)

QueueName = Annotated[str, Path(pattern=QUEUE_PATTERN, description="queue name")]


@router.get("/queues", response_model=QueuesOut, summary="Every queue's depths")
async def list_queues(request: Request, principal: AdminPrincipal) -> Response:
    """Counts per state, pause flag, backlog age and last-minute throughput per queue."""
    rows = await queue_overview(api_state(request).conveyor)
    return json_response({"queues": rows})


@router.get("/queues/{queue}/stats", response_model=QueueOverviewOut, summary="One queue's depths")
async def queue_stats(queue: QueueName, request: Request, principal: AdminPrincipal) -> Response:
    """One queue's overview (all zeros for a queue that never held a job)."""
    (row,) = await queue_overview(api_state(request).conveyor, [queue])
    return json_response(row)


@router.post("/queues/{queue}/pause", response_model=PauseOut, summary="Pause a queue")
async def pause(queue: QueueName, request: Request, principal: AdminPrincipal) -> Response:
    """Workers stop claiming from the queue; producers keep enqueueing."""
    await api_state(request).conveyor.pause(queue)
    return json_response({"queue": queue, "paused": True})


@router.post("/queues/{queue}/resume", response_model=PauseOut, summary="Resume a queue")
async def resume(queue: QueueName, request: Request, principal: AdminPrincipal) -> Response:
    """Workers claim from the queue again."""
    await api_state(request).conveyor.resume(queue)
    return json_response({"queue": queue, "paused": False})


@router.post(
    "/queues/{queue}/retry-all",
    response_model=CountOut,
    responses=STATE_CONFLICT,
    summary="Retry every dead job",
)
async def retry_all(
    queue: QueueName,
    request: Request,
    principal: AdminPrincipal,
    body: RetryAllRequest | None = None,
) -> Response:
    """Send every failed (or, with `state`, cancelled) job back to pending."""
    state = JobState((body or RetryAllRequest()).state)
    count = await api_state(request).conveyor.retry_all(queue, state)
    return json_response({"queue": queue, "state": state.value, "count": count})


@router.post(
    "/queues/{queue}/clean",
    response_model=CountOut,
    responses=STATE_CONFLICT,
    summary="Delete old finished jobs",
)
async def clean(
    queue: QueueName, body: CleanRequest, request: Request, principal: AdminPrincipal
) -> Response:
    """Delete up to `limit` jobs in `state` that finished over `older_than` seconds ago."""
    state = JobState(body.state)
    count = await api_state(request).conveyor.clean(queue, state, body.older_than, body.limit)
    return json_response({"queue": queue, "state": state.value, "count": count})
