"""The web assembly: the HTTP API with the dashboard mounted beside it.

This is the one module that knows both web parts. The API (`conveyor.api`) does not
import the dashboard, and the dashboard (`conveyor.dashboard`) is a client of the API's
auth, errors and state; both reach the engine only through the `Conveyor` app. The app
imports this module lazily, from `Conveyor.asgi()`, so producers and workers never
import FastAPI and the app does not depend on the web layer.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .api import create_api
from .dashboard import dashboard_router

if TYPE_CHECKING:
    from fastapi import FastAPI

    from .app import Conveyor


def create_web_app(app: Conveyor, **options: Any) -> FastAPI:
    """The HTTP API for `app` with the web dashboard at `/dashboard`.

    Serve it with `conveyor api` / `conveyor dev`, or mount it in your own ASGI app
    (`starlette_app.mount("/queue", app.asgi())`).

    Args:
        app: the Conveyor app.
        **options: passed to `conveyor.api.create_api` (`tokens`, `metrics_prefix`,
            `owns_app`, `ws_buffer`).

    Returns:
        The FastAPI application.

    Raises:
        ConfigError: the settings or token configuration is invalid.
    """
    api = create_api(app, **options)
    # The dashboard is a client of the API's routes, with the same tokens; it joins the
    # same FastAPI instance so the API's middleware and error handlers cover it too.
    api.include_router(dashboard_router())
    return api
