"""The API's front door: checks made on every request before routing, auth or parsing.

One pure ASGI middleware (`RequestGuard`), outermost in the stack, so nothing behind it
ever sees a request it refuses:

* **Bounded bodies.** A body is read into memory only up to `max_body_bytes`: a
  `Content-Length` over the limit is refused before a byte of the body is read, and a
  chunked body is refused as soon as it passes the limit. The answer is 413 with
  `Connection: close` (the rest of the body is never read), before authentication, so
  an anonymous caller cannot make the API buffer 100 MB just to be told 401.
* **No cross-site control of an open API.** With no token configured, anyone who can
  make a browser send a request is a caller. So, in that mode only: the `Host` header
  must name this machine (`localhost`, `*.localhost`, a loopback address) or one of the
  configured public hosts — otherwise DNS rebinding turns a web page into a same-origin
  client — and state-changing requests and WebSocket upgrades that carry an `Origin`
  must come from the API's own origin (or a configured public host). Tools (curl,
  httpx, the CLI) send no `Origin` and are unaffected; the dashboard served by the API
  is same-origin. With tokens configured both checks are moot: a browser never attaches
  the bearer token on another site's behalf.
* **`X-Content-Type-Options: nosniff`** on every response, so no browser guesses that a
  JSON body holding user data is HTML.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from urllib.parse import urlsplit

import orjson
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

# Room for the JSON envelope around a payload (task, queue, tenant, keys, options,
# escaping): a body may be this much bigger than `max_payload_bytes` and still reach
# the payload check, which then names the payload as the problem.
ENVELOPE_BYTES = 64 * 1024
# Methods that change nothing: a cross-site page can send them, but cannot read the
# answer (the browser's same-origin policy), so only `Host` needs checking for them.
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
CLOSE_FORBIDDEN = 4403


def default_body_limit(max_payload_bytes: int) -> int:
    """The request body limit for a payload limit: the payload plus its envelope."""
    return max_payload_bytes + ENVELOPE_BYTES


def _hostname(host: str) -> str:
    """`host[:port]` or `[v6]:port` -> the lower-case host name without the port."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1 : host.find("]")] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def is_local_name(hostname: str) -> bool:
    """True for names that always mean this machine: `localhost`, `*.localhost` (RFC
    6761 keeps them off public DNS) and loopback addresses."""
    if hostname == "localhost" or hostname.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(hostname).is_loopback
    except ValueError:
        return False


class RequestGuard:
    """Body limit, Host/Origin checks and response headers (see the module docstring).

    Args:
        app: the ASGI app behind the guard.
        max_body_bytes: the largest request body read; bigger ones answer 413.
        open_api: the API has no tokens, so the Host and Origin checks apply.
        public_hosts: host names (no port) besides the loopback ones under which an
            open API is reached, e.g. through a tunnel or a proxy.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        max_body_bytes: int,
        open_api: bool,
        public_hosts: Iterable[str] = (),
    ) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.open_api = open_api
        self.public_hosts = frozenset(_hostname(h) for h in public_hosts if h.strip())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        refusal = self.cross_site_refusal(scope, headers) if self.open_api else None
        if refusal is not None:
            if scope["type"] == "websocket":
                # Refused before the handshake completes: the browser gets a 403.
                await send({"type": "websocket.close", "code": CLOSE_FORBIDDEN, "reason": refusal})
            else:
                await _answer(send, 403, "Forbidden", refusal)
            return
        if scope["type"] == "websocket":
            await self.app(scope, receive, send)
            return
        body = await self._read_body(headers, receive, send)
        if body is None:
            return
        await self.app(scope, _replay(body, receive), _with_nosniff(send))

    def cross_site_refusal(self, scope: Scope, headers: Headers) -> str | None:
        """Why a request to the open API may come from another website, or None."""
        host = headers.get("host", "")
        name = _hostname(host)
        if not (is_local_name(name) or name in self.public_hosts):
            return (
                f"Host {host[:80]!r} is not this machine: an API without tokens only "
                "answers to localhost; add the name to CONVEYOR_API_PUBLIC_HOSTS, or "
                "configure tokens"
            )
        if scope["type"] == "http" and scope.get("method") in SAFE_METHODS:
            return None
        origin = headers.get("origin")
        if origin is None:
            return None  # not a browser: curl, httpx, the CLI
        parts = urlsplit(origin)
        if parts.netloc and (
            parts.netloc.lower() == host.lower() or _hostname(parts.netloc) in self.public_hosts
        ):
            return None
        return (
            f"requests from the web page at {origin[:80]!r} are refused: an API without "
            "tokens only takes state-changing requests from its own pages; configure "
            "tokens, or add the host to CONVEYOR_API_PUBLIC_HOSTS"
        )

    async def _read_body(self, headers: Headers, receive: Receive, send: Send) -> bytes | None:
        """The whole body, or None after answering 413 (or 400 for a bad length)."""
        declared = headers.get("content-length")
        if declared is not None:
            if not declared.isdigit():
                await _answer(send, 400, "BadRequest", "Content-Length is not a number")
                return None
            if int(declared) > self.max_body_bytes:
                await self._too_large(send)
                return None
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return b""  # the client left; the app sees the disconnect next
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                await self._too_large(send)
                return None
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)

    async def _too_large(self, send: Send) -> None:
        await _answer(
            send,
            413,
            "PayloadTooLarge",
            f"the request body is over {self.max_body_bytes} bytes: send a smaller payload "
            "(or raise CONVEYOR_API_MAX_BODY_BYTES / CONVEYOR_MAX_PAYLOAD_BYTES)",
        )


def _replay(body: bytes, receive: Receive) -> Receive:
    """A `receive` that hands the app the body already read, then the real channel
    (so the app still notices a disconnect)."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


def _with_nosniff(send: Send) -> Send:
    async def send_with_headers(message: Message) -> None:
        if message["type"] == "http.response.start":
            headers = list(message.get("headers", []))
            if not any(k.lower() == b"x-content-type-options" for k, _ in headers):
                headers.append((b"x-content-type-options", b"nosniff"))
            message = {**message, "headers": headers}
        await send(message)

    return send_with_headers


async def _answer(send: Send, status: int, error: str, message: str) -> None:
    """An error in the API's `ErrorBody` shape; the connection closes after it, since
    the rest of the request body is never read."""
    body = orjson.dumps({"error": error, "message": message, "errors": []})
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
                (b"x-content-type-options", b"nosniff"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
