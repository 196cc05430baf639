"""The HTTP API: enqueue and inspect jobs, operate queues, watch jobs live.

Run it with `conveyor api [MODULE:ATTR]`, or mount it into your own ASGI app with
`app.asgi()`. Layers point one way: routes call the app facade and the shared read
model (`conveyor.status`); nothing here knows storage.

Modules, by concept:

* `jobs` — `POST /jobs` (idempotency), `GET /jobs`, `GET /jobs/{id}`, retry/cancel/promote
* `queues` — depths, pause/resume, retry-all, clean (admin)
* `system` — `/health`, `/health/ready`, `/metrics`, `/admin/workers/status`
* `live` — `WS /ws/jobs` (fed by the hub in `conveyor.live`)
* `auth` — bearer tokens, tenant scope; `errors` — the one error-to-HTTP mapping
* `server` — uvicorn and the refusal to serve an open API beyond loopback
"""

from __future__ import annotations

from .app import create_api
from .auth import ADMIN, Principal, Tokens
from .server import check_exposure, openapi_json, serve

__all__ = [
    "ADMIN",
    "Principal",
    "Tokens",
    "check_exposure",
    "create_api",
    "openapi_json",
    "serve",
]
