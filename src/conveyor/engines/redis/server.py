"""Reading a Redis server's version and durability settings (INFO, CONFIG GET).

INFO works on managed services that rename or block CONFIG, so the policy and AOF state
come from INFO; `appendfsync` exists only in CONFIG and is left unknown when refused.
"""

from __future__ import annotations

import contextlib
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import ResponseError

from ...durability import ServerSettings
from .errors import server_version


async def read_server(
    client: aioredis.Redis | RedisCluster, **route: Any
) -> tuple[tuple[int, ...], ServerSettings, bool]:
    """(version, durability settings, cluster mode on) of the server `client` talks to
    (`route`: redis-py's `target_nodes=` on a cluster).

    Raises:
        redis.exceptions.RedisError: the server cannot be reached (callers translate).
    """
    fsync: Any = None
    if isinstance(client, RedisCluster):
        # One call each, once per connect: a cluster pipeline cannot aim at one node.
        server = await client.info("server", **route)
        persistence = await client.info("persistence", **route)
        memory = await client.info("memory", **route)
        cluster = await client.info("cluster", **route)
        with contextlib.suppress(ResponseError):  # CONFIG disabled or renamed (managed Redis)
            fsync = (await client.config_get("appendfsync", **route)).get("appendfsync")
    else:
        # One round trip: every worker start waits for it (issue 15, point 7).
        async with client.pipeline(transaction=False) as pipe:
            for section in ("server", "persistence", "memory", "cluster"):
                pipe.info(section)
            pipe.config_get("appendfsync")
            *infos, config = await pipe.execute(raise_on_error=False)
        for reply in infos:
            if isinstance(reply, Exception):
                raise reply
        server, persistence, memory, cluster = infos
        if not isinstance(config, ResponseError):  # CONFIG disabled or renamed (managed)
            fsync = config.get("appendfsync")
    aof = persistence.get("aof_enabled")
    policy = memory.get("maxmemory_policy")
    settings = ServerSettings(
        maxmemory_policy=None if policy is None else str(policy),
        appendonly=None if aof is None else ("yes" if int(aof) else "no"),
        appendfsync=None if fsync is None else str(fsync),
    )
    return server_version(server), settings, bool(int(cluster.get("cluster_enabled") or 0))


async def read_servers(
    cluster: RedisCluster,
) -> tuple[tuple[int, ...], ServerSettings, bool]:
    """`read_server` over every master of a cluster: the oldest version, and settings
    that are durable only if every master's are (a job lives on one master).

    Raises:
        redis.exceptions.RedisError: a master cannot be reached (callers translate).
    """
    readings = [await read_server(cluster, target_nodes=n) for n in cluster.get_primaries()]
    version = min(r[0] for r in readings)
    settings = [r[1] for r in readings]
    worst = next((s for s in settings if s.durable is False), None)
    unknown = next((s for s in settings if s.durable is None), None)
    return version, worst or unknown or settings[0], True
