"""Reading a Redis server's version and durability settings (INFO, CONFIG GET).

INFO works on managed services that rename or block CONFIG, so the policy and AOF state
come from INFO; `appendfsync` exists only in CONFIG and is left unknown when refused.
"""

from __future__ import annotations

import contextlib
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from ...durability import ServerSettings
from .errors import server_version


async def read_server(client: aioredis.Redis) -> tuple[tuple[int, ...], ServerSettings]:
    """(version, durability settings) of the server `client` talks to.

    Raises:
        redis.exceptions.RedisError: the server cannot be reached (callers translate).
    """
    async with client.pipeline(transaction=False) as pipe:
        pipe.info("server")
        pipe.info("persistence")
        pipe.info("memory")
        server, persistence, memory = await pipe.execute()
    fsync: Any = None
    with contextlib.suppress(ResponseError):  # CONFIG disabled or renamed (managed Redis)
        fsync = (await client.config_get("appendfsync")).get("appendfsync")
    aof = persistence.get("aof_enabled")
    policy = memory.get("maxmemory_policy")
    settings = ServerSettings(
        maxmemory_policy=None if policy is None else str(policy),
        appendonly=None if aof is None else ("yes" if int(aof) else "no"),
        appendfsync=None if fsync is None else str(fsync),
    )
    return server_version(server), settings
