"""Guarantee 8 at the API's front door, over real HTTP: bounded request bodies, no
cross-site control of an open API, tokens never in URLs or logs, `/metrics` behind the
admin token, `conveyor dev` honouring the token settings.

Processes whose memory or logs are measured run as `conveyor api` / `conveyor dev`
subprocesses; the rest use the in-thread `api_server` of test_api.py.
"""

from __future__ import annotations

import asyncio
import base64
import os
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets

from conveyor.api import Tokens
from conveyor.serving import redact_tokens
from tests.acceptance.test_api import StartApi, api_server, subscribed
from tests.apps.probe import PROBE_QUEUE
from tests.conftest import ROOT, free_port

__all__ = ["api_server"]  # the fixture, re-exported for pytest

Q = PROBE_QUEUE
ADMIN = "admin-token-0123456789abcdef"
ACME = "acme-token-0123456789abcdef"
TOKENS = Tokens(admin=ADMIN, tenants={ACME: "acme"})
MB = 1024 * 1024


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONVEYOR_")}
    return {**env, **extra}


class Process:
    """A `conveyor` subprocess serving HTTP on `port`, its output kept for the test."""

    def __init__(self, *args: str, port: int, env: dict[str, str], log: Path) -> None:
        self.port = port
        self.log = log
        self._out = log.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "conveyor", *args],
            cwd=ROOT,
            env=env,
            stdout=self._out,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 20
        while True:
            try:
                httpx.get(f"{self.url}/health", timeout=2)
                return
            except httpx.TransportError:
                assert self.proc.poll() is None, self.output()
                assert time.monotonic() < deadline, self.output()
                time.sleep(0.1)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def rss(self) -> int:
        """Resident memory of the process, in bytes."""
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise AssertionError("no VmRSS")

    def output(self) -> str:
        if not self._out.closed:
            self._out.flush()
        return self.log.read_text(errors="replace")

    def stop(self) -> str:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._out.close()
        return self.output()


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[list[Process]]:
    started: list[Process] = []
    yield started
    for proc in started:
        proc.stop()


def conveyor_api(
    processes: list[Process], tmp_path: Path, sqlite_url: str, *flags: str, **env: str
) -> Process:
    port = free_port()
    proc = Process(
        *("api", "tests.apps.probe:app", "--url", sqlite_url, "--port", str(port), *flags),
        port=port,
        env=clean_env(**env),
        log=tmp_path / f"api-{port}.log",
    )
    processes.append(proc)
    return proc


# --- 1. request bodies are bounded before auth and parsing ------------------------------------
def send_chunked(port: int, total: int, chunk: int = 64 * 1024) -> tuple[bytes, int]:
    """POST /jobs with a chunked body of `total` bytes and no token; stop sending as
    soon as the server answers. Returns (status line, bytes sent).

    The server closes without reading the rest, so the kernel may reset the connection:
    the answer is read as soon as it is readable, and still after a failed send (data
    already received is read before the reset is reported)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    sock.sendall(
        b"POST /jobs HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n"
    )
    piece = f"{chunk:x}\r\n".encode() + b"7" * chunk + b"\r\n" + b"0\r\n\r\n"
    sent = 0
    sock.setblocking(False)
    answer = b""
    try:
        pending = b""
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            want_write = [sock] if sent < total or pending else []
            readable, writable, _ = select.select([sock], want_write, [], 10)
            if readable:
                break
            if writable:
                if not pending:
                    last = sent + chunk >= total
                    pending = piece if last else piece[: -len(b"0\r\n\r\n")]
                    sent += chunk
                pending = pending[sock.send(pending) :]
    except (BrokenPipeError, ConnectionResetError):
        pass
    sock.setblocking(True)
    sock.settimeout(30)
    try:
        answer = sock.recv(65536)
    except (BrokenPipeError, ConnectionResetError):
        pass
    finally:
        sock.close()
    return answer.split(b"\r\n", 1)[0], sent


def test_oversized_bodies_get_413_before_auth_and_memory_does_not_grow(
    processes: list[Process], tmp_path: Path, sqlite_url: str
) -> None:
    api = conveyor_api(processes, tmp_path, sqlite_url, CONVEYOR_API_ADMIN_TOKEN=ADMIN)
    # Warm up every code path once, so what is measured is only what bodies cost.
    status, _ = send_chunked(api.port, 4 * MB)
    assert status == b"HTTP/1.1 413 Request Entity Too Large", status
    before = api.rss()
    for _ in range(3):
        status, sent = send_chunked(api.port, 50 * MB)
        # 413, not 401: the size was checked before the (missing) token; and the answer
        # came long before the 50 MB were sent.
        assert status == b"HTTP/1.1 413 Request Entity Too Large", status
        assert sent < 20 * MB
    grown = api.rss() - before
    assert grown < 16 * MB, f"RSS grew by {grown / MB:.1f} MB for refused bodies"

    # A declared Content-Length over the limit is refused before any body byte is read:
    # the answer comes although the client sends none.
    with socket.create_connection(("127.0.0.1", api.port), timeout=10) as sock:
        sock.sendall(
            b"POST /jobs HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"Content-Length: 104857600\r\n\r\n"
        )
        head = b""
        while chunk := sock.recv(65536):  # until the server closes
            head += chunk
    assert head.startswith(b"HTTP/1.1 413"), head
    assert b'"error":"PayloadTooLarge"' in head and b"connection: close" in head.lower()


async def test_the_body_limit_is_settable_and_covers_every_route(
    sqlite_url: str, api_server: StartApi
) -> None:
    from conveyor.api import create_api
    from tests.acceptance.test_api import ApiServer
    from tests.apps.probe import probe_app

    server = ApiServer(
        create_api(probe_app(sqlite_url), tokens=TOKENS, max_body_bytes=2000, owns_app=True)
    ).start()
    try:
        async with httpx.AsyncClient(base_url=server.url, timeout=10) as http:
            small = {"task": "probe", "payload": {"x": "y" * 1000}}
            r = await http.post("/jobs", json=small, headers=auth(ADMIN))
            assert r.status_code == 201, r.text
            big = {"task": "probe", "payload": {"x": "y" * 3000}}
            for path in ("/jobs", f"/queues/{Q}/pause", "/nowhere"):
                r = await http.post(path, json=big)  # no token: the size is checked first
                assert r.status_code == 413, (path, r.text)
                assert r.json()["error"] == "PayloadTooLarge"
                assert "2000 bytes" in r.json()["message"]
            r = await http.get(f"/jobs?queue={Q}", headers=auth(ADMIN))
            assert len(r.json()["jobs"]) == 1  # nothing of the refused ones was stored
    finally:
        server.stop()


# --- 2. an open API cannot be driven by other websites ----------------------------------------
async def test_open_api_refuses_foreign_hosts_and_cross_site_writes(
    sqlite_url: str, api_server: StartApi
) -> None:
    server = api_server(sqlite_url)  # no tokens: the open loopback mode
    own = f"http://127.0.0.1:{server.port}"
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as http:
        # DNS rebinding: a page on attacker.example resolves its name to 127.0.0.1.
        r = await http.get("/queues", headers={"Host": f"attacker.example:{server.port}"})
        assert r.status_code == 403 and "Host" in r.json()["message"]
        for host in (f"localhost:{server.port}", f"127.0.0.1:{server.port}", "app.localhost"):
            assert (await http.get("/queues", headers={"Host": host})).status_code == 200, host

        # A no-cors POST from another origin changes nothing.
        for origin in ("http://attacker.example", f"http://localhost:{server.port + 1}", "null"):
            r = await http.post(f"/queues/{Q}/pause", headers={"Origin": origin})
            assert r.status_code == 403, (origin, r.text)
        r = await http.get("/queues")
        assert not any(row["paused"] for row in r.json()["queues"])
        # The dashboard's own pages (same origin) and tools (no Origin) may.
        assert (await http.post(f"/queues/{Q}/pause", headers={"Origin": own})).status_code == 200
        assert (await http.post(f"/queues/{Q}/resume")).status_code == 200

    # A cross-origin WebSocket cannot read job events; the same origin can.
    url = f"{server.ws_url}/ws/jobs?queue={Q}"
    with pytest.raises(websockets.InvalidStatus) as info:
        async with websockets.connect(url, origin="http://attacker.example"):  # type: ignore[arg-type]
            pass
    assert info.value.response.status_code == 403
    async with websockets.connect(url, origin=own) as ws:  # type: ignore[arg-type]
        await subscribed(ws)


async def test_public_hosts_are_answered_and_tokens_make_the_checks_moot(
    sqlite_url: str, api_server: StartApi
) -> None:
    from conveyor.api import create_api
    from tests.acceptance.test_api import ApiServer
    from tests.apps.probe import probe_app

    open_api = ApiServer(
        create_api(probe_app(sqlite_url), tokens=Tokens(), public_hosts=["queue.example.org"])
    ).start()
    tokened = api_server(sqlite_url, tokens=TOKENS)
    try:
        async with httpx.AsyncClient(timeout=10) as http:
            r = await http.get(f"{open_api.url}/queues", headers={"Host": "queue.example.org"})
            assert r.status_code == 200
            r = await http.post(
                f"{open_api.url}/queues/{Q}/pause",
                headers={"Host": "queue.example.org", "Origin": "https://queue.example.org"},
            )
            assert r.status_code == 200
            # With tokens, a foreign Host or Origin carries no bearer token by itself.
            headers = {"Host": "api.internal", "Origin": "https://x.example"} | auth(ADMIN)
            r = await http.post(f"{tokened.url}/queues/{Q}/pause", headers=headers)
            assert r.status_code == 200
    finally:
        open_api.stop()


async def test_responses_carry_nosniff(sqlite_url: str, api_server: StartApi) -> None:
    server = api_server(sqlite_url, tokens=TOKENS)
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as http:
        for path in ("/health", "/queues", "/jobs/nope:1", "/nowhere", "/openapi.json"):
            r = await http.get(path, headers=auth(ADMIN))
            assert r.headers["X-Content-Type-Options"] == "nosniff", path


# --- 4. WebSocket tokens stay out of URLs and logs --------------------------------------------
def bearer_protocol(token: str) -> str:
    return "conveyor.bearer." + base64.urlsafe_b64encode(token.encode()).decode().rstrip("=")


async def test_websocket_authenticates_with_a_subprotocol(
    sqlite_url: str, api_server: StartApi
) -> None:
    server = api_server(sqlite_url, tokens=TOKENS)
    url = f"{server.ws_url}/ws/jobs?queue={Q}"
    protocols: Any = ["conveyor.v1", bearer_protocol(ACME)]
    async with websockets.connect(url, subprotocols=protocols) as ws:
        assert ws.subprotocol == "conveyor.v1"
        assert (await subscribed(ws))["tenant"] == "acme"
    wrong: Any = ["conveyor.v1", bearer_protocol("wrong-token-0123456789abcdef")]
    for offered in (wrong, ["conveyor.v1", "conveyor.bearer.%%%"], ["conveyor.v1"]):
        async with websockets.connect(url, subprotocols=offered) as ws:
            with pytest.raises(websockets.ConnectionClosed) as info:
                await asyncio.wait_for(ws.recv(), 10)
        assert info.value.rcvd is not None and info.value.rcvd.code == 4401


def test_redact_tokens_in_log_text() -> None:
    line = '127.0.0.1:1 - "GET /ws/jobs?queue=a&token=s3cr3t-x_y HTTP/1.1" 101'
    assert redact_tokens(line) == '127.0.0.1:1 - "GET /ws/jobs?queue=a&token=*** HTTP/1.1" 101'
    assert redact_tokens("WebSocket /ws/jobs?token=abc&queue=q") == (
        "WebSocket /ws/jobs?token=***&queue=q"
    )


async def test_no_token_reaches_the_access_log(
    processes: list[Process], tmp_path: Path, sqlite_url: str
) -> None:
    api = conveyor_api(
        processes,
        tmp_path,
        sqlite_url,
        CONVEYOR_API_ADMIN_TOKEN=ADMIN,
        CONVEYOR_API_TENANT_TOKENS=f"{ACME}:acme",
        CONVEYOR_LOG_LEVEL="INFO",
    )
    ws_url = f"ws://127.0.0.1:{api.port}/ws/jobs?queue={Q}"
    for token in (ADMIN, ACME):
        async with websockets.connect(f"{ws_url}&token={token}") as ws:  # deprecated form
            await subscribed(ws)
            # WebSocket messages are bounded too: the server reads none it needs.
            await ws.send("x" * (1024 * 1024))
            with pytest.raises(websockets.ConnectionClosed) as info:
                await asyncio.wait_for(ws.recv(), 10)
            assert info.value.rcvd is not None and info.value.rcvd.code == 1009
        async with httpx.AsyncClient(timeout=10) as http:
            await http.get(f"{api.url}/jobs?queue={Q}&token={token}", headers=auth(token))
    out = api.stop()
    assert "/ws/jobs?queue=" in out and "token=***" in out, out  # the lines were logged
    assert ADMIN not in out and ACME not in out, out


# --- 8. /metrics needs the admin token when tokens are configured -----------------------------
async def test_metrics_need_the_admin_token_unless_public(
    sqlite_url: str, api_server: StartApi
) -> None:
    from conveyor.api import create_api
    from tests.acceptance.test_api import ApiServer
    from tests.apps.probe import probe_app

    server = api_server(sqlite_url, tokens=TOKENS)
    public = ApiServer(
        create_api(probe_app(sqlite_url), tokens=TOKENS, public_metrics=True, owns_app=True)
    ).start()
    try:
        async with httpx.AsyncClient(timeout=10) as http:
            assert (await http.get(f"{server.url}/metrics")).status_code == 401
            r = await http.get(f"{server.url}/metrics", headers=auth(ACME))
            assert r.status_code == 403
            r = await http.get(f"{server.url}/metrics", headers=auth(ADMIN))
            assert r.status_code == 200 and "conveyor_engine_up" in r.text
            assert (await http.get(f"{public.url}/metrics")).status_code == 200
    finally:
        public.stop()


# --- 5. `conveyor dev` honours the token settings and says whether the API is open ------------
def conveyor_dev(processes: list[Process], tmp_path: Path, sqlite_url: str, **env: str) -> Process:
    port = free_port()
    proc = Process(
        *("dev", "tests.apps.probe:app", "--url", sqlite_url, "--port", str(port)),
        *("--no-scheduler",),
        port=port,
        env=clean_env(**env),
        log=tmp_path / f"dev-{port}.log",
    )
    processes.append(proc)
    return proc


def test_conveyor_dev_honours_api_tokens_and_says_whether_the_api_is_open(
    processes: list[Process], tmp_path: Path, sqlite_url: str
) -> None:
    dev = conveyor_dev(
        processes,
        tmp_path,
        sqlite_url,
        CONVEYOR_API_ADMIN_TOKEN=ADMIN,
        CONVEYOR_API_TENANT_TOKENS=f"{ACME}:acme",
    )
    assert httpx.get(f"{dev.url}/queues").status_code == 401
    assert httpx.get(f"{dev.url}/queues", headers=auth(ACME)).status_code == 403
    assert httpx.get(f"{dev.url}/queues", headers=auth(ADMIN)).status_code == 200
    assert "tokens required (admin token, 1 tenant token(s))" in dev.stop()

    open_dev = conveyor_dev(processes, tmp_path, sqlite_url)
    assert httpx.get(f"{open_dev.url}/queues").status_code == 200
    assert "API auth:  OPEN, no tokens" in open_dev.stop()


# --- 9. bad input over HTTP and WebSocket: 422 / 4422, nothing stored -------------------------
async def test_bad_input_over_http_is_422_and_stores_nothing(
    durable_url: str, api_server: StartApi
) -> None:
    server = api_server(durable_url)
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as http:
        bodies = [
            b'{"task": "probe", "payload": {"x": NaN}}',
            b'{"task": "probe", "payload": {"x": [Infinity]}}',
            b'{"task": "probe", "tenant": "acme\\ud800"}',
            b'{"task": "probe", "dedupe_key": "\\udfff"}',
            b'{"task": "probe", "queue": "probe\\n"}',
        ]
        for body in bodies:
            r = await http.post("/jobs", content=body, headers={"Content-Type": "application/json"})
            assert r.status_code == 422, (body, r.text)
        for cursor in ("99999999999999999999999", "forged"):
            r = await http.get(f"/jobs?queue={Q}&state=completed&cursor={cursor}")
            assert r.status_code == 422 and r.json()["errors"][0]["field"] == "cursor", r.text
        r = await http.get(f"/jobs?queue={Q}")
        assert r.json()["jobs"] == []

    async def close_of(query: str) -> tuple[int, str]:
        async with websockets.connect(f"{server.ws_url}/ws/jobs?{query}") as ws:
            frames: list[Any] = []
            with pytest.raises(websockets.ConnectionClosed) as info:
                frames.extend([await asyncio.wait_for(ws.recv(), 10) for _ in range(5)])
        assert info.value.rcvd is not None
        return info.value.rcvd.code, info.value.rcvd.reason

    for since in ("99999999999999999999", "18446744073709551616-1", "1-99999999999999999999"):
        code, reason = await close_of(f"queue={Q}&since={since}")
        assert code == 4422 and "since" in reason, (since, code, reason)
