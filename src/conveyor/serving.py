"""Serve an ASGI app inside a running event loop (worker health port, `conveyor dev`).

The process that embeds the server owns SIGTERM/SIGINT (a worker drains its jobs
first), so uvicorn must not install its own handlers here.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import socket
from collections.abc import Generator
from typing import Any, Literal

import uvicorn

from .errors import ConfigError

# `token=` (and `access_token=`) in a query string: old clients put WebSocket tokens
# there, and uvicorn's access and WebSocket log lines print the full URL.
_TOKEN_IN_URL = re.compile(r"(?i)((?:^|[?&;\s])(?:access_)?token=)[^&\s\"';]*")
_LOGGERS = ("", "conveyor", "uvicorn", "uvicorn.error", "uvicorn.access")
# Largest WebSocket message a client may send (uvicorn's default is 16 MiB). Clients of
# `WS /ws/jobs` send nothing the server reads, so a small bound costs nothing and keeps
# a socket from making the server buffer megabytes; past it the socket closes with 1009.
WS_MAX_MESSAGE_BYTES = 64 * 1024


def redact_tokens(text: str) -> str:
    """`text` with the value of every `token=` query parameter replaced by `***`."""
    return _TOKEN_IN_URL.sub(r"\1***", text)


class RedactTokens(logging.Filter):
    """A log filter that hides `token=` values in the formatted message."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if "token=" in message.lower():
            record.msg, record.args = redact_tokens(message), None
        return True


def install_log_redaction() -> None:
    """Put `RedactTokens` on every handler of the root, conveyor and uvicorn loggers.

    On handlers, not loggers: a logger's filter does not see records propagated from
    its children, a handler's sees every line it writes. Call after uvicorn configured
    its logging (`uvicorn.Config` does it in its constructor); idempotent.
    """
    for name in _LOGGERS:
        for handler in logging.getLogger(name).handlers:
            if not any(isinstance(f, RedactTokens) for f in handler.filters):
                handler.addFilter(RedactTokens())


class _QuietServer(uvicorn.Server):
    """uvicorn without its own signal handlers: the embedding process owns them."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


class EmbeddedServer:
    """Serves an ASGI app on `host:port` as a task of the current event loop."""

    def __init__(
        self, asgi: Any, host: str, port: int, *, lifespan: Literal["on", "off"] = "off"
    ) -> None:
        config = uvicorn.Config(
            asgi,
            host=host,
            port=port,
            log_level="warning",
            lifespan=lifespan,
            access_log=False,
            ws_max_size=WS_MAX_MESSAGE_BYTES,
        )
        self._server = _QuietServer(config)
        install_log_redaction()
        self._task: asyncio.Task[None] | None = None
        self._socket: socket.socket | None = None

    async def start(self) -> None:
        """Bind and start serving; connections queue from the moment this returns.

        We bind the socket ourselves: uvicorn answers a bind failure with `sys.exit`,
        which would take the whole process down instead of giving a readable error.

        Raises:
            ConfigError: the port cannot be bound (in use, or not permitted).
        """
        config = self._server.config
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((config.host, config.port))
        except OSError as exc:
            sock.close()
            raise ConfigError(
                f"cannot listen on {config.host}:{config.port} ({exc.strerror}): "
                "choose a free port, or 0 to disable this server"
            ) from exc
        sock.listen(128)
        sock.setblocking(False)
        self._socket = sock
        self._task = asyncio.create_task(self._server.serve(sockets=[sock]), name="conveyor-http")

    @property
    def port(self) -> int:
        """The port actually bound."""
        assert self._socket is not None, "start() first"
        return int(self._socket.getsockname()[1])

    async def stop(self) -> None:
        """Stop serving and wait for the server task."""
        self._server.should_exit = True
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError, SystemExit):
                await self._task
