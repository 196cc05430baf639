"""WebSocket subscribers share the process's one engine reader, and are capped.

Guarantee 8's resource side: 150 sockets on 150 queue sets once held 150 Redis
connections (each feed its own blocking XREAD), and with `maxclients 120` every other
API request failed. Counted here on a private redis-server: `INFO clients`.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import httpx
import pytest
import redis.asyncio as redis_asyncio
import websockets

from conveyor.api import Tokens, create_api
from conveyor.testing import eventually
from tests.acceptance.test_api import ApiServer, StartApi, api_server, frames, subscribed
from tests.apps.probe import probe_app
from tests.conftest import RedisServer

__all__ = ["api_server"]  # the fixture, re-exported for pytest

SUBSCRIBERS = 1000
QUEUES = 200  # distinct queue sets: one feed per set used to mean one connection per set
ADMIN = "admin-token-0123456789abcdef"
ACME = "acme-token-0123456789abcdef"
GLOBEX = "globex-token-0123456789abcdef"


async def connected_clients(url: str) -> int:
    client = redis_asyncio.Redis.from_url(url)
    try:
        info = await client.info("clients")
        return int(info["connected_clients"]) - 1  # not this probe itself
    finally:
        await client.aclose()


async def test_a_thousand_subscribers_add_a_handful_of_engine_connections(
    private_redis: RedisServer, api_server: StartApi
) -> None:
    url = f"{private_redis.url}?prefix=fanout"
    server = api_server(url)
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
        assert (await http.get("/health/ready")).status_code == 200  # pool warmed up
        before = await connected_clients(private_redis.url)
        async with contextlib.AsyncExitStack() as stack:
            sockets: list[Any] = []
            for i in range(SUBSCRIBERS):
                queue = f"q{i % QUEUES}"
                ws = await stack.enter_async_context(
                    websockets.connect(f"{server.ws_url}/ws/jobs?queue={queue}")
                )
                sockets.append(ws)
            await asyncio.gather(*(subscribed(ws) for ws in sockets))
            during = await connected_clients(private_redis.url)
            assert during - before <= 4, f"{during - before} engine connections for 1,000 sockets"
            hub = server.asgi.state.conveyor.hub
            assert (hub.feeds, hub.subscribers) == (1, SUBSCRIBERS)

            # Every socket still gets its queue's events: the last queue joined too.
            last = f"q{QUEUES - 1}"
            r = await http.post("/jobs", json={"task": "probe", "queue": last})
            job = r.json()
            watchers = [ws for i, ws in enumerate(sockets) if i % QUEUES == QUEUES - 1]
            for ws in watchers:
                seen = await frames(ws, lambda f: f.get("job_id") == job["id"])
                assert seen[-1][1]["queue"] == last
            # ...and only those: a socket of another queue got nothing of it.
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(sockets[0].recv(), 0.5)
        hub = server.asgi.state.conveyor.hub

        async def reader_stopped() -> bool:
            return bool(hub.feeds == 0)

        await eventually(reader_stopped, message="the reader stops with the last socket")


async def test_subscriptions_are_capped_per_token_and_per_process(sqlite_url: str) -> None:
    tokens = Tokens(admin=ADMIN, tenants={ACME: "acme", GLOBEX: "globex"})
    server = ApiServer(
        create_api(
            probe_app(sqlite_url),
            tokens=tokens,
            ws_max_subscribers=3,
            ws_max_per_token=2,
            owns_app=True,
        )
    ).start()
    url = f"{server.ws_url}/ws/jobs?queue=probe"

    def connect(token: str) -> Any:
        return websockets.connect(url, additional_headers={"Authorization": f"Bearer {token}"})

    async def refused(token: str) -> tuple[int, str]:
        async with connect(token) as ws:
            with pytest.raises(websockets.ConnectionClosed) as info:
                await asyncio.wait_for(ws.recv(), 10)
        assert info.value.rcvd is not None
        return info.value.rcvd.code, info.value.rcvd.reason

    try:
        async with connect(ACME) as a1, connect(ACME) as a2:
            await subscribed(a1)
            await subscribed(a2)
            code, reason = await refused(ACME)
            assert code == 4429 and "this token" in reason
            async with connect(GLOBEX) as g1:
                await subscribed(g1)  # another token still gets in, up to the process cap
                code, reason = await refused(GLOBEX)
                assert code == 4429 and "process" in reason
        hub = server.asgi.state.conveyor.hub

        async def all_closed() -> bool:
            return bool(hub.subscribers == 0)

        await eventually(all_closed, message="the server noticed the closed sockets")
        async with connect(ACME) as again:  # slots come back when sockets close
            await subscribed(again)
    finally:
        server.stop()
