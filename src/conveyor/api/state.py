"""What one API instance holds: the app, its tokens, the live-event hub, metrics."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from starlette.requests import HTTPConnection

if TYPE_CHECKING:
    from ..app import Conveyor
    from ..live import EventHub
    from .auth import Tokens
    from .metrics import ApiMetrics


@dataclass
class ApiState:
    """Per-instance state, kept on `FastAPI.state.conveyor` (never in module globals,
    so two API instances in one process — tests, or two mounts — stay apart).

    Attributes:
        conveyor: the app whose engine the API reads and writes.
        tokens: the configured bearer tokens.
        hub: fans engine events out to WebSocket subscribers.
        metrics: Prometheus metrics of this instance.
        owns_app: close `conveyor` at shutdown (true for `conveyor api`, false when the
            API is mounted into the user's own ASGI app).
        stopping: set when shutdown begins; readiness answers 503 from then on.
        public_metrics: `/metrics` needs no token even when tokens are configured.
    """

    conveyor: Conveyor
    tokens: Tokens
    hub: EventHub
    metrics: ApiMetrics
    owns_app: bool = False
    stopping: bool = False
    public_metrics: bool = False


def api_state(connection: HTTPConnection) -> ApiState:
    """The state of the API instance serving this request or WebSocket."""
    state: ApiState = connection.app.state.conveyor
    return state
