"""Routes of the dashboard: its page, its static files, and three small read models.

Everything is excluded from the OpenAPI schema: the page and its assets are not API
surface, and the `/dashboard/api/*` reads are internal to the dashboard until the public
API grows equivalents (then the dashboard should switch to those).

Auth is the API's own: the page itself is a static shell with no data in it, so it is
served without a token; every read and action it makes goes through `CurrentPrincipal` /
`AdminPrincipal`, exactly like any other client of the API.
"""

from __future__ import annotations

import asyncio
import hashlib
import html
from functools import cache
from importlib import resources
from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query, Request
from fastapi.security import HTTPAuthorizationCredentials
from starlette.responses import Response

from ..api.auth import AdminPrincipal, authenticate, bearer
from ..api.errors import ApiError, json_response
from ..api.state import api_state
from ..job import QUEUE_NAME

DASHBOARD_PATH = "/dashboard"
# Sparkline window: the last hour, one bucket per minute.
DEFAULT_MINUTES = 60
MAX_MINUTES = 24 * 60
MAX_QUEUES = 200  # queues per throughput request (the overview asks for all of them)

# The only files served from `static/`: a fixed list, so no request path ever reaches
# the filesystem.
STATIC_TYPES = {
    "dashboard.js": "text/javascript; charset=utf-8",
    "dashboard.css": "text/css; charset=utf-8",
    "favicon.svg": "image/svg+xml",
}

# No inline script or style anywhere, so the policy can forbid both: an XSS through a
# job payload (shown on the job page) cannot run code. WebSockets go to this host only.
_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self' ws://{host} wss://{host}; base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'none'"
)


@cache
def _asset(name: str) -> bytes:
    """A packaged file of the dashboard (read once per process)."""
    return (resources.files(__package__) / name).read_bytes()


@cache
def _version() -> str:
    """A hash of the static files, appended to their URLs so browsers may cache them
    forever and still fetch new ones after an upgrade."""
    digest = hashlib.sha256()
    for name in sorted(STATIC_TYPES):
        digest.update(_asset(f"static/{name}"))
    return digest.hexdigest()[:12]


def _security_headers(request: Request) -> dict[str, str]:
    host = request.headers.get("host", "localhost").replace(";", "").replace(" ", "")
    return {
        "Content-Security-Policy": _CSP.format(host=host),
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
        "X-Frame-Options": "DENY",
    }


def dashboard_router() -> APIRouter:
    """The dashboard's routes, to include in the API app (`create_api` does).

    Returns:
        A router serving `/dashboard` (the page), `/dashboard/static/*` and
        `/dashboard/api/*`, none of it in the OpenAPI schema.
    """
    router = APIRouter(prefix=DASHBOARD_PATH, include_in_schema=False)

    @router.get("")
    @router.get("/")
    async def page(request: Request) -> Response:
        """The single page; the hash part of the URL picks the view (#/queue/emails)."""
        # root_path is set when the API is mounted under a prefix (`/queue/dashboard`):
        # the page must call `/queue/jobs`, not `/jobs`.
        root = html.escape(request.scope.get("root_path", "").rstrip("/"), quote=True)
        text = (
            _asset("templates/index.html")
            .decode()
            .replace("{{root}}", root)
            .replace("{{static}}", f"{root}{DASHBOARD_PATH}/static")
            .replace("{{version}}", _version())
        )
        headers = _security_headers(request) | {"Cache-Control": "no-store"}
        return Response(text, media_type="text/html; charset=utf-8", headers=headers)

    @router.get("/static/{name}")
    async def static(name: str, request: Request) -> Response:
        """One of `STATIC_TYPES`; 404 for anything else."""
        media_type = STATIC_TYPES.get(name)
        if media_type is None:
            raise ApiError(404, "NotFound", f"no dashboard file named {name[:40]!r}")
        headers = _security_headers(request)
        # URLs carry ?v=<content hash>: a changed file gets a new URL.
        headers["Cache-Control"] = "public, max-age=31536000, immutable"
        return Response(_asset(f"static/{name}"), media_type=media_type, headers=headers)

    @router.get("/api/session")
    async def session(
        request: Request,
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
    ) -> Response:
        """Whether the presented token (or none, on an open API) may use the API, and as
        whom: the page hides admin actions from tenant tokens (the API would refuse them
        anyway) and says which tenant it shows.

        Always 200, unlike the API's 401: this is how the page decides between the
        sign-in form and the dashboard, and a browser logs every 401 as a console error.
        """
        tokens = api_state(request).tokens
        try:
            principal = authenticate(tokens, credentials.credentials if credentials else None)
        except ApiError as exc:
            return json_response(
                {
                    "signed_in": False,
                    "admin": False,
                    "tenant": None,
                    "auth": True,
                    "reason": exc.message,
                }
            )
        return json_response(
            {
                "signed_in": True,
                "admin": principal.admin,
                "tenant": principal.tenant,
                "auth": tokens.enabled,
                "reason": None,
            }
        )

    @router.get("/api/throughput")
    async def throughput(
        request: Request,
        principal: AdminPrincipal,
        queue: Annotated[list[str] | None, Query(max_length=MAX_QUEUES)] = None,
        minutes: Annotated[int, Query(ge=1, le=MAX_MINUTES)] = DEFAULT_MINUTES,
    ) -> Response:
        """Completed and failed jobs per minute of each queue (default: every queue),
        oldest minute first: the overview's sparklines. Queue-wide, so admin only."""
        for name in queue or ():
            if not QUEUE_NAME.match(name):
                raise ApiError.invalid("queue", f"queue {name[:40]!r} is invalid", location="query")
        rows = await api_state(request).conveyor.throughput(queue, minutes)
        return json_response(
            {
                "minutes": minutes,
                "queues": {
                    row.queue: {
                        "end_ms": row.end_ms,
                        "completed": row.completed,
                        "failed": row.failed,
                    }
                    for row in rows
                },
            }
        )

    @router.get("/api/schedules")
    async def schedules(request: Request, principal: AdminPrincipal) -> Response:
        """Every stored schedule with its next and last run, and the leading scheduler.

        `configured` is false when there is neither a schedule nor a live scheduler, so
        the page can say "scheduler not configured" instead of showing an empty table.
        """
        app = api_state(request).conveyor
        rows, leader = await asyncio.gather(app.list_schedules(), app.scheduler_leader())
        return json_response(
            {
                "configured": bool(rows) or leader is not None,
                "leader": None
                if leader is None
                else {"holder": leader.holder, "ttl_seconds": leader.ttl_ms / 1000},
                "schedules": [row.to_dict() for row in rows],
            }
        )

    # `:path`: a schedule name may contain `/` (`reports/daily`); the page sends it as
    # %2F, which the server decodes before routing, so a plain segment would not match.
    @router.post("/api/schedules/{name:path}/{action}")
    async def pause_schedule(
        request: Request,
        principal: AdminPrincipal,
        name: Annotated[str, Path(min_length=1, max_length=200)],
        action: Annotated[str, Path(pattern="^(pause|resume)$")],
    ) -> Response:
        """Pause or resume one schedule (what `conveyor schedules pause|resume` does)."""
        app = api_state(request).conveyor
        if name not in {row.name for row in await app.list_schedules()}:
            raise ApiError(404, "NotFound", f"no schedule named {name[:80]!r}")
        await app.pause_schedule(name, action == "pause")
        return json_response({"name": name, "paused": action == "pause"})

    return router
