"""`redis://` / `rediss://` — the production engine.

Every state change is one Lua script (EVALSHA), so no job is ever half-written, and every
script uses Redis `TIME` (or, in tests, a clock passed in), so due times and lease
deadlines follow one clock whatever the clients' clocks say. Each script touches only
keys of one queue (one hash tag, see `keys.py`), so the same code is legal on Redis
Cluster. The job rules come from `conveyor.lifecycle`, put before the Lua at load.

The engine is put together from its parts, one module each:

* `connection`: URL, pools, scripts, error mapping (`RedisBase`, shared by the others);
* `flow`: enqueue, exchange, heartbeats, recovery (the hot path, on `lane.py`);
* `wakeups`: idle workers block on a pub/sub wake-up instead of polling;
* `operations`: operator actions and queue limits;
* `reads`: the read model (jobs, counts, listings, events, throughput);
* `coordination`: the worker registry, leadership leases, schedules.
"""

from __future__ import annotations

from .coordination import RedisCoordination
from .flow import RedisFlow
from .flows import RedisFlows
from .operations import RedisOperations
from .reads import RedisReads
from .wakeups import RedisWakeups


class RedisEngine(
    RedisFlows, RedisFlow, RedisWakeups, RedisOperations, RedisReads, RedisCoordination
):
    """Jobs in Redis; see `conveyor.engines.base` for the contract.

    Args:
        url: `redis://[:password@]host:port/db` or `rediss://...`; an optional
            `?prefix=<name>` (default `conveyor`) namespaces every key.
        events_maxlen: about how many events each queue's event stream keeps (trimmed by
            whole stream nodes; see flush_events in lua/_lib.lua for the events that
            share an entry).
        clock: for tests only: its now replaces Redis TIME in every script that reads
            the time (due times, lease deadlines, finish times, worker records), so a
            `FakeClock` drives them as it does on SQLite. Leadership leases keep
            Redis's own expiry (PX). Production passes nothing: Redis TIME is the one
            clock.

    Raises:
        ConfigError: the URL is not a Redis URL or its prefix is unusable.
    """
