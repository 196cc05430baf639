"""Shared pieces for the Python peers: the completion rule and the job payload.

Completion rule (the same for every library): the handler does exactly one
``INCR bench:done`` on its own Redis connection when the job's work is finished. A latency job
(``t != 0``) first does ``RPUSH bench:lat <start_ns - t>``. An io job (``s != 0``) first sleeps
``s`` milliseconds (``asyncio.sleep`` in async libraries, ``time.sleep`` in threaded ones).

Every job takes two positional integers: ``t`` (enqueue time in ``time.time_ns()``, 0 when the
workload does not measure latency) and ``s`` (milliseconds to sleep, 0 for noop jobs).
"""

from __future__ import annotations

import asyncio
import os
import time

import redis
import redis.asyncio as aioredis

DONE_KEY = "bench:done"
LAT_KEY = "bench:lat"
QUEUE = os.environ.get("BENCH_QUEUE", "bench")


def redis_url() -> str:
    return os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6390/0")


def concurrency() -> int:
    return int(os.environ.get("BENCH_CONCURRENCY", "10"))


_sync_client: redis.Redis | None = None
_sync_pid = 0


def sync_client() -> redis.Redis:
    """One thread-safe client (connection pool) per process, recreated after a fork."""
    global _sync_client, _sync_pid
    if _sync_client is None or _sync_pid != os.getpid():
        _sync_client = redis.Redis.from_url(redis_url())
        _sync_pid = os.getpid()
    return _sync_client


def mark_done_sync(t: int, s: int, client: redis.Redis | None = None) -> None:
    start = time.time_ns()
    r = client if client is not None else sync_client()
    if s:
        time.sleep(s / 1000)
    if t:
        r.rpush(LAT_KEY, start - t)
    r.incr(DONE_KEY)


_async_clients: dict[int, aioredis.Redis] = {}


def async_client() -> aioredis.Redis:
    """One asyncio client per event loop (and per process)."""
    key = id(asyncio.get_running_loop()) ^ os.getpid()
    client = _async_clients.get(key)
    if client is None:
        client = aioredis.Redis.from_url(redis_url())
        _async_clients[key] = client
    return client


async def mark_done_async(t: int, s: int, client: aioredis.Redis | None = None) -> None:
    start = time.time_ns()
    r = client if client is not None else async_client()
    if s:
        await asyncio.sleep(s / 1000)
    if t:
        await r.rpush(LAT_KEY, start - t)
    await r.incr(DONE_KEY)
