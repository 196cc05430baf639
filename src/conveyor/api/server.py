"""Run the API under uvicorn (`conveyor api`), and the checks made before listening."""

from __future__ import annotations

import contextlib
import ipaddress
import json
import signal
import threading
from collections.abc import Generator
from types import FrameType

import uvicorn
from fastapi import FastAPI

from ..errors import ConfigError
from ..serving import WS_MAX_MESSAGE_BYTES, install_log_redaction
from .auth import Tokens
from .state import ApiState


def is_loopback(host: str) -> bool:
    """True when `host` only accepts connections from this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a hostname: it may resolve to anything


def check_exposure(host: str, tokens: Tokens, *, insecure: bool) -> None:
    """Refuse to serve an open API (no tokens) beyond this machine.

    Raises:
        ConfigError: no token is configured, `host` is not loopback and `insecure` is
            false; the message names both fixes.
    """
    if tokens.enabled or insecure or is_loopback(host):
        return
    raise ConfigError(
        f"refusing to serve the API on {host} without tokens: anyone who can reach it could "
        "enqueue, cancel and read jobs. Set CONVEYOR_API_ADMIN_TOKEN (and "
        "CONVEYOR_API_TENANT_TOKENS) or --tokens-file, or pass --insecure if a proxy in "
        "front does the auth"
    )


def openapi_json(api: FastAPI) -> str:
    """The OpenAPI document as checked into `docs/openapi.json`."""
    return json.dumps(api.openapi(), indent=2, ensure_ascii=False) + "\n"


_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class _ApiServer(uvicorn.Server):
    """uvicorn that turns readiness off as soon as shutdown starts.

    SIGTERM -> readiness 503 for requests still in flight, open WebSockets get 1012
    (reconnect elsewhere with `since=`), then uvicorn drains and exits.
    """

    def __init__(self, config: uvicorn.Config, state: ApiState) -> None:
        super().__init__(config)
        self._state = state

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        """SIGTERM/SIGINT start a graceful shutdown and the process exits 0 afterwards,
        like a worker. (uvicorn's own version re-raises the signal once it is done, so
        supervisors would see every clean stop as "killed by SIGTERM".)"""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {sig: signal.signal(sig, self.handle_exit) for sig in _SIGNALS}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        self._state.stopping = True
        self._state.hub.disconnect_all()
        super().handle_exit(sig, frame)


def serve(api: FastAPI, *, host: str, port: int, log_level: str = "info") -> None:
    """Serve `api` until SIGTERM/SIGINT (blocking).

    Raises:
        ConfigError: the port cannot be bound.
    """
    config = uvicorn.Config(
        api,
        host=host,
        port=port,
        log_level=log_level.lower(),
        lifespan="on",
        timeout_graceful_shutdown=10,
        ws_max_size=WS_MAX_MESSAGE_BYTES,
    )
    install_log_redaction()  # after uvicorn.Config set up its log handlers
    server = _ApiServer(config, api.state.conveyor)
    server.run()
    if not server.started:
        raise ConfigError(f"the API could not listen on {host}:{port}: see the log above")
