"""Reads across queues on Redis Cluster, where one command cannot name keys of two slots.

Every queue has its own hash tag, so on a cluster its streams live on different
masters, and `XREAD STREAMS q1 q2` is refused (CROSSSLOT). `read_streams` reads each
stream on its own master instead, in one cluster pipeline (one round trip per master),
and, when nothing is there yet, polls again until the block time is up:

    XREAD BLOCK 5000 STREAMS {p:a}:events {p:b}:events $ $     one server
    XREVRANGE each stream COUNT 1  ->  concrete ids for "$"     cluster, once
    XREAD STREAMS {p:a}:events <id>   (master A) ┐ every POLL_S until an event
    XREAD STREAMS {p:b}:events <id>   (master B) ┘ or the block time is up

"$" (only new events) is resolved to each stream's last id first: polling with "$"
would skip events added between two polls.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from redis.asyncio.cluster import RedisCluster

POLL_S = 0.1  # between reads of a multi-queue event subscription on a cluster

Entries = list[tuple[str, list[tuple[str, dict[str, str]]]]]


async def read_streams(
    cluster: RedisCluster, streams: dict[str, str], *, count: int, block_ms: int | None
) -> Entries:
    """Like `XREAD [BLOCK block_ms] COUNT count STREAMS ...` over streams of any slots.

    Args:
        cluster: the engine's cluster client.
        streams: stream key -> last id seen ("$": only entries added from now on).
        count: at most this many entries per stream.
        block_ms: wait up to this long for a first entry (None: do not wait).
    """
    streams = dict(streams)
    fresh = [key for key, after in streams.items() if after == "$"]
    if fresh:
        async with cluster.pipeline() as pipe:
            for key in fresh:
                pipe.xrevrange(key, count=1)
            for key, last in zip(fresh, await pipe.execute(), strict=True):
                streams[key] = last[0][0] if last else "0"
    deadline = time.monotonic() + (block_ms or 0) / 1000
    while True:
        async with cluster.pipeline() as pipe:
            for key, after in streams.items():
                pipe.xread({key: after}, count=count)
            replies: list[Any] = await pipe.execute()
        out: Entries = [entry for reply in replies if reply for entry in reply]
        remaining = deadline - time.monotonic()
        if out or remaining <= 0:
            return out
        await asyncio.sleep(min(POLL_S, remaining))
