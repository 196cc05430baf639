"""`/jobs`: enqueue, inspect, list and act on single jobs.

Tenant scope is enforced here, once per route: a tenant token's enqueues carry its
tenant, its listings are filtered to it, and any job of another tenant answers 404
exactly like a missing one (a 403 would confirm the id exists).

Idempotency (`Idempotency-Key` header, as Stripe and the IETF draft use it): the key
becomes the job's dedupe key, namespaced by caller (`scoped_key`), so
a retried request returns the job the first one created (200 and
`Idempotent-Replayed: true` instead of 201), and two tenants can never collide or read
each other's jobs through a shared key. The window is the job's active life
(scheduled, pending, running) in that queue — like BullMQ's job-id dedupe, unlike
Stripe's 24 hours: once the job has finished, the same key enqueues a new job. That
covers network retries (seconds); it does not make a late replay a no-op, so handlers
should still be idempotent. Reusing an active key with a different task, queue or
payload is a 422, as the IETF draft asks.

A plain `dedupe_key` from a tenant token is scoped the same way, because dedupe keys
are per queue and queues are shared. The caller's part is length-prefixed: tenant
names may contain `:`, so a plain `tenant:<tenant>:<key>` would let tenant `acme` with
key `eu:x` hit tenant `acme:eu`'s job with key `x`.
"""

from __future__ import annotations

import contextlib
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Header, Path, Query, Request
from starlette.responses import Response

from ..errors import InvalidArgument, JobNotFound
from ..job import FINISHED_STATES, Job, JobState
from ..partitions import logical
from ..status import policy_in_effect
from ..tracing import without_trace
from .auth import CurrentPrincipal, Principal, scoped_tenant
from .errors import ERROR_RESPONSES, STATE_CONFLICT, ApiError, json_response
from .models import (
    QUEUE_PATTERN,
    EnqueueRequest,
    JobDetailOut,
    JobOut,
    JobPageOut,
    JobStateName,
)
from .state import ApiState, api_state

router = APIRouter(tags=["jobs"], responses=ERROR_RESPONSES)

JobId = Annotated[str, Path(min_length=1, max_length=256, description="job id")]
IDEMPOTENCY_HEADER = "Idempotency-Key"


def scoped_key(kind: str, tenant: str | None, key: str) -> str:
    """The stored dedupe key for `key` sent by `tenant` (None: the admin).

    `<kind>:<len(tenant)>:<tenant>:<key>`: the length says where the tenant ends, so
    two different (tenant, key) pairs never give the same string whatever characters
    they hold, and the admin (length 0) never meets a tenant (names are not empty).
    """
    owner = tenant or ""
    return f"{kind}:{len(owner)}:{owner}:{key}"


async def visible_job(state: ApiState, principal: Principal, job_id: str) -> Job:
    """The job, if this caller may see it.

    Raises:
        JobNotFound: no such job, or it belongs to another tenant (same answer).
    """
    job = await state.conveyor.get_job(job_id)
    if not principal.sees(job.tenant, job.queue, job.task):
        raise JobNotFound(f"no job with id {job_id!r}: check the id, or it was cleaned")
    return job


@router.post(
    "/jobs",
    status_code=201,
    response_model=JobOut,
    responses={
        200: {"model": JobOut, "description": "An active job already held this key"},
        413: ERROR_RESPONSES[422] | {"description": "Payload over max_payload_bytes"},
        **STATE_CONFLICT,
    },
    summary="Enqueue a job",
)
async def enqueue(
    body: EnqueueRequest,
    request: Request,
    principal: CurrentPrincipal,
    idempotency_key: Annotated[
        str | None,
        Header(
            alias=IDEMPOTENCY_HEADER,
            min_length=1,
            max_length=255,
            description="retrying with the same key returns the same job while it is active",
        ),
    ] = None,
) -> Response:
    """Enqueue one job; 201 with the job, or 200 with the active job that already holds
    its `dedupe_key` / `Idempotency-Key`."""
    state = api_state(request)
    app = state.conveyor
    options: dict[str, Any] = body.model_dump(exclude={"task", "payload"}, exclude_none=True)
    options["tenant"] = scoped_tenant(principal, body.tenant)
    if idempotency_key is not None:
        if body.dedupe_key is not None:
            raise ApiError.invalid(
                "dedupe_key", "pass either dedupe_key or the Idempotency-Key header, not both"
            )
        options["dedupe_key"] = scoped_key("idem", principal.tenant, idempotency_key)
    elif body.dedupe_key is not None and not principal.admin:
        # Dedupe keys are per queue, and queues are shared by tenants: unscoped, tenant
        # B's key would hand back (and so reveal) tenant A's job.
        options["dedupe_key"] = scoped_key("tenant", principal.tenant, body.dedupe_key)
    if not principal.may_use_task(body.task):
        raise ApiError(403, "Forbidden", f"this token may not enqueue task {body.task[:80]!r}")
    # Validation and encoding happen once, in the facade; `enqueue_built` says whether
    # the job is new (201) or deduplicated (200).
    new = app.build(body.task, body.payload, **{k: v for k, v in options.items() if v is not None})
    if not principal.may_use_queue(logical(new.queue)):
        raise ApiError(403, "Forbidden", f"this token may not use queue {logical(new.queue)!r}")
    result = await app.enqueue_built(new)
    job = result.job
    if not result.created and not principal.sees(job.tenant, job.queue, job.task):
        # Only an admin can store a key in a tenant's scope; even then the tenant must
        # not see the other job. Same answer as an id that is not visible.
        raise ApiError(
            409, "Conflict", "this dedupe key is held by another caller's job: use another key"
        )
    replayed = not result.created and idempotency_key is not None
    # Compared as stored (a payload model fills defaults; a trace carrier differs per call).
    if replayed and (job.task, job.queue, job.tenant, without_trace(job.payload)) != (
        new.task,
        logical(new.queue),
        new.tenant,
        without_trace(orjson.loads(new.payload_json)),
    ):
        raise ApiError.invalid(
            IDEMPOTENCY_HEADER,
            "this key was used for a different request (task, queue, tenant or payload) "
            "that is still active: use a new key",
            location="header",
        )
    headers = {"Idempotent-Replayed": "true"} if replayed else None
    return json_response(job.to_dict(), 201 if result.created else 200, headers)


MAX_WAIT_SECONDS = 60.0


@router.get("/jobs/{job_id}", response_model=JobDetailOut, summary="Get a job")
async def get_job(
    job_id: JobId,
    request: Request,
    principal: CurrentPrincipal,
    wait: Annotated[
        float | None,
        Query(
            ge=0,
            le=MAX_WAIT_SECONDS,
            description="long poll: answer as soon as the job is finished (completed, "
            "failed or cancelled), or after this many seconds with its state then",
        ),
    ] = None,
) -> Response:
    """The job with every failed attempt's error, and the timeout, backoff and attempt
    limit a worker applies to it (`in_effect`). With `wait`, a long poll: the answer
    comes when the job finishes (driven by the engine's events), or when `wait` seconds
    have passed; check `state` to tell which."""
    state = api_state(request)
    job = await visible_job(state, principal, job_id)
    if wait and job.state not in FINISHED_STATES:
        with contextlib.suppress(TimeoutError):
            job = await state.conveyor.wait_for_job(job_id, wait)
    return json_response({**job.to_dict(), "in_effect": policy_in_effect(state.conveyor, job)})


@router.get("/jobs", response_model=JobPageOut, summary="List jobs of one queue and state")
async def list_jobs(
    request: Request,
    principal: CurrentPrincipal,
    queue: Annotated[str, Query(pattern=QUEUE_PATTERN)],
    state: Annotated[JobStateName, Query()] = "pending",
    tenant: Annotated[str | None, Query(min_length=1, max_length=128)] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    cursor: Annotated[str | None, Query(min_length=1, max_length=256)] = None,
) -> Response:
    """One page of jobs (pending in claim order, others newest first). Pass
    `next_cursor` back as `cursor` for the next page; it is null on the last one.
    A page may hold fewer than `limit` jobs and still have a next page."""
    app = api_state(request).conveyor
    if not principal.may_use_queue(queue):
        raise ApiError(403, "Forbidden", f"this token may not use queue {queue!r}")
    try:
        page = await app.list_jobs(
            queue,
            JobState(state),
            tenant=scoped_tenant(principal, tenant),
            limit=limit,
            cursor=cursor,
        )
    except InvalidArgument as exc:  # the facade names a cursor no engine handed out
        raise ApiError.invalid("cursor", str(exc), location="query") from exc
    # A token limited to some tasks sees only those: the page may come out shorter.
    jobs = [job.to_dict() for job in page.jobs if principal.may_use_task(job.task)]
    return json_response({"jobs": jobs, "next_cursor": page.cursor})


@router.post(
    "/jobs/{job_id}/retry",
    response_model=JobOut,
    responses=STATE_CONFLICT,
    summary="Retry a dead job",
)
async def retry_job(job_id: JobId, request: Request, principal: CurrentPrincipal) -> Response:
    """failed/cancelled -> pending with a fresh attempt budget; 409 in other states."""
    state = api_state(request)
    await _check_visible(state, principal, job_id)
    return json_response((await state.conveyor.retry_job(job_id)).to_dict())


@router.post(
    "/jobs/{job_id}/cancel",
    response_model=JobOut,
    responses=STATE_CONFLICT,
    summary="Cancel a job",
)
async def cancel_job(job_id: JobId, request: Request, principal: CurrentPrincipal) -> Response:
    """scheduled/pending/running -> cancelled; 409 once it has finished."""
    state = api_state(request)
    await _check_visible(state, principal, job_id)
    return json_response((await state.conveyor.cancel_job(job_id)).to_dict())


@router.post(
    "/jobs/{job_id}/promote",
    response_model=JobOut,
    responses=STATE_CONFLICT,
    summary="Run a scheduled job now",
)
async def promote_job(job_id: JobId, request: Request, principal: CurrentPrincipal) -> Response:
    """scheduled -> pending now; 409 in other states."""
    state = api_state(request)
    await _check_visible(state, principal, job_id)
    return json_response((await state.conveyor.promote_job(job_id)).to_dict())


async def _check_visible(state: ApiState, principal: Principal, job_id: str) -> None:
    # Admins skip the extra read: the operation itself answers 404 for a missing job.
    if not principal.admin:
        await visible_job(state, principal, job_id)
