"""The web dashboard: see and operate every queue from a browser.

Served by `conveyor api` at `/dashboard`, beside the HTTP API it is a client of: the
pages are static files (plain JavaScript and CSS, no framework, nothing fetched from the
internet) that call the same endpoints, with the same bearer tokens, as any other API
client, and follow jobs live over `WS /ws/jobs`. A tenant token gets a read-only view of
its own jobs.

The router adds only what the public API does not have yet, under `/dashboard/api/`
(kept out of the OpenAPI schema): who the token belongs to, per-minute throughput for
the sparklines, and the schedules with pause/resume.
"""

from __future__ import annotations

from .router import DASHBOARD_PATH, dashboard_router

__all__ = ["DASHBOARD_PATH", "dashboard_router"]
