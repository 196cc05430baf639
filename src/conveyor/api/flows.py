"""`/flows`: store a flow (a parent job that runs once its children have finished) and
read one back as a tree.

Tenant scope as for `/jobs`, once per route: a tenant token's flow carries its tenant on
every job, its parent's `dedupe_key` is scoped to it, and reading a flow shows only the
jobs the caller may see (a flow whose job named in the path is not visible is a 404,
like a missing one). The body is bounded like every request (`RequestGuard`).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import Response

from ..errors import JobNotFound
from .auth import CurrentPrincipal, Principal, scoped_tenant
from .errors import ERROR_RESPONSES, ApiError, json_response
from .jobs import JobId, scoped_key, visible_job
from .models import EnqueueRequest, FlowItem, FlowRequest, JobOut
from .state import api_state

router = APIRouter(tags=["flows"], responses=ERROR_RESPONSES)


def _item(principal: Principal, body: EnqueueRequest, *, root: bool = False) -> dict[str, Any]:
    """A request item as `app.flow` takes it, with the caller's tenant on it; checks
    the caller may use its task."""
    if not principal.may_use_task(body.task):
        raise ApiError(403, "Forbidden", f"this token may not enqueue task {body.task[:80]!r}")
    item = body.model_dump(exclude={"children"}, exclude_none=True)
    item["tenant"] = scoped_tenant(principal, body.tenant)
    if item["tenant"] is None:
        del item["tenant"]
    if root and body.dedupe_key is not None and not principal.admin:
        item["dedupe_key"] = scoped_key("tenant", principal.tenant, body.dedupe_key)
    if isinstance(body, FlowItem) and body.children:
        item["children"] = [_item(principal, kid) for kid in body.children]
    return item


@router.post(
    "/flows",
    status_code=201,
    response_model=JobOut,
    responses={
        200: {"model": JobOut, "description": "A live flow already held this key"},
        413: ERROR_RESPONSES[422] | {"description": "Body or a payload over its limit"},
    },
    summary="Enqueue a flow",
)
async def enqueue_flow(
    body: FlowRequest, request: Request, principal: CurrentPrincipal
) -> Response:
    """Store the parent and its children in one atomic step; 201 with the parent (state
    `waiting-children`), or 200 with the live parent that already holds the parent's
    `dedupe_key`."""
    app = api_state(request).conveyor
    parent = _item(principal, body.parent, root=True)
    children = [_item(principal, kid) for kid in body.children]
    nodes = app.build_flow(parent, children)
    queue = nodes[0].job.queue  # a flow lives in one queue (the facade checked)
    if not principal.may_use_queue(queue):
        raise ApiError(403, "Forbidden", f"this token may not use queue {queue!r}")
    result = await app.store_flow(nodes)
    job = result.job
    if not result.created and not principal.sees(job.tenant, job.queue, job.task):
        raise ApiError(
            409, "Conflict", "this dedupe key is held by another caller's job: use another key"
        )
    return json_response(job.to_dict(), 201 if result.created else 200)


@router.get("/flows/{job_id}", summary="Get the flow a job belongs to, as a tree")
async def get_flow(job_id: JobId, request: Request, principal: CurrentPrincipal) -> Response:
    """The whole flow `job_id` belongs to, from its root: each job's id, task, state,
    policy and children. Jobs the caller may not see are left out (with their subtree)."""
    state = api_state(request)
    await visible_job(state, principal, job_id)
    tree = await state.conveyor.flow_tree(job_id)

    def visible(node: dict[str, Any]) -> dict[str, Any] | None:
        if not principal.sees(node["tenant"], node["queue"], node["task"]):
            return None
        kids = [v for k in node["children"] if (v := visible(k)) is not None]
        return {**node, "children": kids}

    shown = visible(tree)
    if shown is None:  # the root is another tenant's: show the caller's part only
        raise JobNotFound(f"no job with id {job_id!r}: check the id, or it was cleaned")
    return json_response(shown)
