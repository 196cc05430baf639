"""The Redis engine's connection layer: URL, pools, scripts, error mapping, plumbing.

`RedisBase` holds everything the engine's parts share: the redis-py pool (reads,
pub/sub, TLS), the hot-path `Lane` (script calls), the registered Lua scripts (each
assembled from `lua/` with the lifecycle prelude, see `_script_source`), the per-queue
KEYS/ARGV header, and `driver_errors`, which turns redis-py's connection errors and the
server's "not now" replies into `EngineUnavailable` / `EngineFull` (see errors.py). The
parts (`flow`, `wakeups`, `operations`, `reads`, `coordination`) are subclasses of it
that `engine.RedisEngine` puts together.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Sequence
from collections.abc import Set as AbstractSet
from importlib import resources
from typing import Any, Concatenate, ParamSpec, TypeVar, cast

import hiredis
import redis.asyncio as aioredis
from redis.asyncio.client import PubSub
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff
from redis.commands.core import AsyncScript
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from ... import lifecycle
from ...clock import Clock
from ...durability import ServerSettings
from ...errors import ConfigError, EngineUnavailable, InvalidState
from ...job import Job, decode_job, decode_lenient, queue_of
from .assembly import Definition, assemble, definitions
from .cluster_lane import ClusterLane
from .errors import classify, misrouted, with_flags
from .keys import KeyLayout, LruCache, QueueKeys
from .lane import Lane, Prefix, pack_prefix, url_timeouts
from .replicas import ACKED_SCRIPTS, ReplicaAck
from .sentinel_lane import SentinelLane
from .server import read_server, read_servers
from .topology import cluster_client, parse_url, sentinel_client

P = ParamSpec("P")
R = TypeVar("R")
B = TypeVar("B", bound="RedisBase")

# Scripts that share the per-queue KEYS/ARGV layout: they get the lifecycle prelude and
# `_lib.lua` prepended.
_QUEUE_SCRIPTS = (
    "enqueue",
    "exchange",
    "heartbeat",
    "set_progress",
    "recover",
    "retry_job",
    "cancel_job",
    "promote_job",
    "retry_all",
    "clean",
    "purge",
    "pause",
    "resume",
    "counts",
    "set_limits",
    "tenant_backfill",
    "enqueue_flow",
    "list_fifo",
)
_PICKUP_SCRIPTS = ("enqueue", "exchange")
_WORKER_SCRIPTS = ("register_worker", "unregister_worker", "workers")
# Scripts that read the time: they get `_clock.lua` (see there: Redis TIME, or a test
# clock's now passed in ARGV).
_TIMED_SCRIPTS = (*_QUEUE_SCRIPTS, "register_worker", "workers", "schedule_put",
                  "schedule_pause", "throughput_history", "idle_look")  # fmt: skip

_DRIVER_DOWN = (RedisConnectionError, RedisTimeoutError, OSError)
_MAX_CONNECTIONS = 1000  # per engine (process); far above what one process keeps busy
# Queues whose keys and ARGV header a process keeps ready (the hot path's queues: a
# worker's, a producer's); more than any process works on at once, and a bound on what
# names chosen by clients could make it hold (issue 12 item 7).
QUEUE_CACHE_MAX = 512


def _shared(name: str) -> list[Definition]:
    """The shared definitions a script of `name`'s kind may draw on."""
    return _shared_of_kind(name in _TIMED_SCRIPTS, name in _QUEUE_SCRIPTS, name in _PICKUP_SCRIPTS)


@functools.cache
def _shared_of_kind(timed: bool, queue: bool, pickup: bool) -> list[Definition]:
    """The shared definitions of one kind of script (read and parsed once per kind).

    Cached by kind, not by script: the ~20 scripts share 4 kinds, and parsing the
    shared text for each script was most of the engine's set-up (~15 ms of a worker's
    start-up, issue 15 point 7)."""
    lua = resources.files(__package__) / "lua"
    parts = []
    files = []
    if timed:
        parts.append((lua / "_clock.lua").read_text("utf-8"))
        files.append("_clock.lua")
    if queue:
        # The job rules (lifecycle) and the shared helpers.
        parts += [
            lifecycle.lua_prelude(),
            (lua / "_lib.lua").read_text("utf-8"),
            (lua / "_flows.lua").read_text("utf-8"),
        ]
        files += ["the lifecycle prelude", "_lib.lua", "_flows.lua"]
    if pickup:  # claim helpers and the one-hop pickup, after _lib
        parts.append((lua / "_pickup.lua").read_text("utf-8"))
        files.append("_pickup.lua")
    return definitions("\n".join(parts), f"the shared Lua ({', '.join(files)})")


@functools.cache
def _script_source(name: str) -> str:
    """The Lua text of one operation: its code after the shared definitions it uses
    (see assembly.py; built once per process)."""
    code = (resources.files(__package__) / "lua" / f"{name}.lua").read_text("utf-8")
    return assemble(_shared(name), code)


def driver_errors(
    fn: Callable[Concatenate[B, P], Awaitable[R]],
) -> Callable[Concatenate[B, P], Coroutine[Any, Any, R]]:
    """Turn redis-py's connection errors and the server's "not now" replies into
    `EngineUnavailable` / `EngineFull` naming the URL (errors.py), and never let a
    cancellation get lost inside redis-py.

    Python 3.11's `asyncio.wait_for`, which redis-py uses around socket I/O, returns the
    result and drops the cancellation when a cancel lands just as the read completes:

        worker shutdown: heartbeat_task.cancel()
        heartbeat task:  await engine.register_worker(...)  -> returns normally
                         await asyncio.sleep(interval)      -> sleeps on, never cancelled

    The task still counts the request (`Task.cancelling()`), so a request that arrived
    during the call and was swallowed is raised here. The operation itself did run, as
    it could have with a cancel arriving just after the reply.
    """

    async def wrapper(self: B, /, *args: P.args, **kwargs: P.kwargs) -> R:
        task = asyncio.current_task()
        cancels = task.cancelling() if task is not None else 0
        try:
            result = await fn(self, *args, **kwargs)
        except _DRIVER_DOWN as exc:  # LOADING is one for redis-py (BusyLoadingError)
            raise (classify(exc, self.url) or self._unavailable(exc)) from exc
        except ResponseError as exc:  # LOADING, OOM, READONLY...: see errors.py
            error = classify(exc, self.url)
            if error is None:
                raise (misrouted(exc, self.url) if self._cluster is None else exc) from exc
            raise error from exc
        if task is not None and task.cancelling() > cancels:
            raise asyncio.CancelledError
        return result

    functools.update_wrapper(wrapper, fn)
    return wrapper


def job_fields(flat: Sequence[Any], job_id: str | None = None) -> dict[str, Any]:
    """A flat HGETALL reply from a script as the fields `decode_job` reads (the script
    adds the job's `id` to a reply whose id the caller does not know: a claim)."""
    it = iter(flat)
    return hash_fields(dict(zip(it, it, strict=True)), job_id)


def hash_fields(fields: dict[str, Any], job_id: str | None = None) -> dict[str, Any]:
    """A job hash's fields (HGETALL of the job `job_id`) as the fields `decode_job` reads.

    The hash does not store what its key says: the id and the queue (a job stored before
    that still has both, with the same values), nor the fields equal to their default
    (`decode_job` applies those). Errors live in numbered fields err:1..err:<nerr>.
    """
    if "id" not in fields and job_id is not None:
        fields["id"] = job_id
    if "queue" not in fields and "id" in fields:
        fields["queue"] = queue_of(fields["id"])
    # Most jobs have no errors, so the presence of `nerr` is checked first and the hot
    # path pays nothing.
    if "nerr" in fields:
        try:
            count = int(fields["nerr"])
        except ValueError:
            count = 0
        fields["errors"] = [
            fields[key] for i in range(1, count + 1) if (key := f"err:{i}") in fields
        ]
    return fields


class _HiredisPacking:
    """Pack commands with hiredis (C) instead of redis-py's Python packer.

    A bulk enqueue or an exchange sends thousands of arguments per call; packing them
    in Python cost ~2 us per argument, about half of the client CPU of an enqueue.
    """

    def pack_command(self, *args: Any) -> list[bytes]:
        # Like redis-py: a command name of several words ("SCRIPT LOAD") is split.
        if isinstance(args[0], str) and " " in args[0]:
            args = (*args[0].split(), *args[1:])
        return [hiredis.pack_command(args)]


class _FastConnection(_HiredisPacking, aioredis.Connection):
    pass


class _FastSSLConnection(_HiredisPacking, aioredis.SSLConnection):
    pass


class RedisBase:
    """What every part of the Redis engine shares (see `engine.RedisEngine` for the
    arguments)."""

    def __init__(
        self, url: str, *, events_maxlen: int = 10_000, clock: Clock | None = None
    ) -> None:
        target = parse_url(url)
        redis_url, self.prefix, self.url = target.redis_url, target.prefix, target.shown
        # Only a test clock replaces Redis TIME. The app hands every engine its clock, a
        # plain `Clock` unless a test chose one; passed on, each client's wall clock
        # became the scripts' "now", so scripts of different clients ran with times
        # out of order (a rate window then dropped a start too early: 52 starts in a
        # 1 s window of a 50/s limit) and leases followed the clients' clocks.
        self._clock = None if type(clock) is Clock else clock
        # `?socket_connect_timeout=` / `?socket_timeout=` (seconds), defaults 2 and 5.
        connect_timeout, self._timeout = url_timeouts(redis_url)
        self._keys = KeyLayout(self.prefix)
        self._events_maxlen = str(events_maxlen)
        self.unstreamed: AbstractSet[str] = frozenset()  # see Engine.unstreamed
        # `?replicas=N`: enqueue and outcome writes wait for N replicas (replicas.py).
        self._ack = (
            ReplicaAck(target.replicas, target.replica_timeout_ms) if target.replicas else None
        )
        self._cluster: RedisCluster | None = None
        self._pool: aioredis.ConnectionPool | None = None
        if self._ack is not None and target.kind == "cluster" and target.tls:
            raise ConfigError(
                f"?replicas is not supported on rediss+cluster:// yet ({self.url}): WAIT must "
                "follow each master's writes on their connection, which only the non-TLS "
                "cluster connection does; use redis+cluster:// on a private network, or "
                "drop ?replicas"
            )
        if target.kind == "cluster":
            self._cluster = cluster_client(target, connect_timeout, self._timeout)
            # RedisCluster offers the same command methods as Redis (another class); the
            # few that differ on a cluster (pipelined scripts, cross-slot XREAD) are
            # routed by the parts that use them (`self._cluster` is set).
            self._client = cast(aioredis.Redis, self._cluster)
        elif target.kind == "sentinel":
            self._client, sentinel = sentinel_client(target, connect_timeout, self._timeout)
        else:
            # A plain (non-blocking) pool with a high cap: redis-py's BlockingConnectionPool
            # adds a wait_for and a queue to every command (~25% of a single enqueue's client
            # CPU); bursts beyond the cap (the API bounds its own) fail with a clear error.
            pool = aioredis.ConnectionPool.from_url(
                redis_url,
                max_connections=_MAX_CONNECTIONS,
                connection_class=(
                    _FastSSLConnection if redis_url.startswith("rediss://") else _FastConnection
                ),
                decode_responses=True,
                socket_connect_timeout=connect_timeout,
                socket_timeout=self._timeout,
                socket_keepalive=True,
                # A pooled connection idle for longer is PINGed before use, so a connection
                # that died with a restarted Redis is noticed before a command is sent on it.
                health_check_interval=30,
                # Retry only connection errors: after a Redis restart the pool's connections
                # are dead and the command never reached Redis, so resending is safe. Read
                # timeouts are not retried: the script may have run.
                retry=Retry(
                    ExponentialWithJitterBackoff(cap=1.0, base=0.05),
                    3,
                    supported_errors=(RedisConnectionError,),
                ),
                retry_on_error=[RedisConnectionError],
            )
            self._pool = pool
            self._client = aioredis.Redis(connection_pool=pool)
        self._version: tuple[int, ...] | None = None  # the server's, read by connect()
        # Durable only with AOF on (issue 14.9); known once connect() read the server.
        self.durable = True
        self.server_settings: ServerSettings | None = None
        self._scripts: dict[str, AsyncScript] = {
            name: self._client.register_script(_script_source(name))
            for name in (*_QUEUE_SCRIPTS, *_WORKER_SCRIPTS)
        }
        # Script calls (every state change) use a leaner connection than redis-py's; TLS
        # stays on redis-py (see lane.py).
        self._lane: Lane | ClusterLane | SentinelLane | None = None
        if self._cluster is not None and not target.tls:
            self._lane = ClusterLane(
                self._cluster,
                username=target.username,
                password=target.password,
                connect_timeout=connect_timeout,
                timeout=self._timeout,
            )
        elif target.kind == "single" and not target.tls:
            self._lane = Lane(redis_url, connect_timeout=connect_timeout, timeout=self._timeout)
        elif target.kind == "sentinel":
            self._lane = SentinelLane(
                sentinel,
                target.master,
                db=target.db,
                username=target.username,
                password=target.password,
                connect_timeout=connect_timeout,
                timeout=self._timeout,
            )
        self._enqueue = self._scripts["enqueue"]
        self._exchange = self._scripts["exchange"]
        self._queue_args: LruCache[str, tuple[QueueKeys, list[str], list[str]]] = LruCache(
            QUEUE_CACHE_MAX
        )
        # Packed EVALSHA + KEYS + header per (script sha, queue), with the header list
        # they were packed from (see _eval_queue); bounded like the cache above.
        self._prefixes: LruCache[tuple[str, str], tuple[list[str], Prefix]] = LruCache(
            QUEUE_CACHE_MAX
        )
        # Queues SADDed to the registry by this process (forgetting one costs one more
        # idempotent SADD, so it is bounded like the cache above).
        self._known_queues: LruCache[str, bool] = LruCache(QUEUE_CACHE_MAX)
        # Queues whose tenant indexes are known to be backfilled (see reads.py).
        self._tenant_indexed: set[str] = set()
        # Wake-ups (see wait_for_jobs): one pub/sub connection, read by one listener task.
        self._pubsub: PubSub | None = None
        self._listener: asyncio.Task[None] | None = None
        self._subscribing: asyncio.Task[None] | None = None
        self._requested: set[str] = set()  # queues we sent SUBSCRIBE for
        self._subscribed: set[str] = set()  # queues whose subscription Redis confirmed
        self._woken: dict[str, bool] = {}  # a wake-up arrived since the last claim
        self._signal = asyncio.Event()
        # One-hop pickup (pickup.py): per worker that accepts handed jobs.
        self._pickups: dict[str, Any] = {}

    # --- plumbing ------------------------------------------------------------------------
    def _unavailable(self, exc: BaseException) -> EngineUnavailable:
        return EngineUnavailable(
            f"cannot reach Redis at {self.url} ({type(exc).__name__}: {exc}): is "
            "redis-server running? check CONVEYOR_URL (or REDIS_URL)"
        )

    def _q(self, queue: str, *, remember: bool = False) -> tuple[QueueKeys, list[str], list[str]]:
        """Keys and ARGV header of a queue's scripts.

        Args:
            queue: the queue.
            remember: keep them for the next call (bounded LRU). Only the hot path
                (enqueue, exchange, heartbeats) passes True: its queues are the ones
                this process works on. Reads and operator actions name queues that
                callers chose, maybe made up (a job id names a queue), so they build
                the keys afresh (a few microseconds) and keep nothing.
        """
        entry = self._queue_args.get(queue)
        # A queue without an event log gets the length that tells `emit` so (rule 7);
        # checked per call, so a queue declared after its first call is still quiet.
        maxlen = (
            self._events_maxlen
            if lifecycle.writes_events(queue, self.unstreamed)
            else str(lifecycle.UNSTREAMED_MAXLEN)
        )
        if entry is None or entry[2][1] != maxlen:
            keys = self._keys.queue(queue)
            entry = (keys, keys.all(), [keys.wake_channel, maxlen, queue, ""])
            if remember:
                self._queue_args.put(queue, entry)
        if self._clock is not None:
            keys, all_keys, header = entry
            return keys, all_keys, [*header[:3], self._now()]
        return entry

    def _now(self) -> str:
        """ARGV's "now": '' lets Redis TIME decide; a test clock's now in ms otherwise."""
        return "" if self._clock is None else str(self._clock.now_ms())

    async def _run(self, name: str, queue: str, *args: str | int, remember: bool = False) -> Any:
        """One per-queue script call (`remember`: see `_q`)."""
        _, keys, header = self._q(queue, remember=remember)
        return await self._eval(self._scripts[name], keys, [*header, *args])

    async def _eval(self, script: AsyncScript, keys: list[str], args: list[Any]) -> Any:
        if self._acked(script):  # with its WAIT, on the same connection
            return (await self._run_many([(script, keys, args)]))[0]
        if self._lane is None:
            return await script(keys=keys, args=args)
        try:
            return await self._lane.call("EVALSHA", script.sha, len(keys), *keys, *args)
        except NoScriptError:
            # Redis restarted (scripts are not persisted): this call did not run, so
            # running it through the script object (which loads it first) is safe.
            return await script(keys=keys, args=args)

    async def _eval_queue(
        self,
        script: AsyncScript,
        queue: str,
        keys: list[str],
        header: list[str],
        args: Sequence[Any],
    ) -> Any:
        """`_eval(script, keys, [*header, *args])` for a remembered queue (`_q`), with
        the EVALSHA, KEYS and header packed once per queue and script: the hot path's
        single enqueue packs its own 12 arguments only."""
        lane = self._lane
        if type(lane) is not Lane or self._ack is not None:
            return await self._eval(script, keys, [*header, *args])
        cached = self._prefixes.get((script.sha, queue))
        # The header list is the cached one of `_q` while the queue's settings hold (a
        # test clock makes one per call: then nothing is reused, and nothing is wrong).
        if cached is None or cached[0] is not header:
            cached = (header, pack_prefix(("EVALSHA", script.sha, len(keys), *keys, *header)))
            self._prefixes.put((script.sha, queue), cached)
        try:
            return await lane.call_prefixed(cached[1], args)
        except NoScriptError:
            # As in _eval: the call did not run; the script object loads it first.
            return await script(keys=keys, args=[*header, *args])

    def _acked(self, script: AsyncScript) -> bool:
        """Whether calls of `script` wait for replicas (`?replicas=N`, replicas.py)."""
        return self._ack is not None and any(script is self._scripts[n] for n in ACKED_SCRIPTS)

    async def _run_many(
        self,
        calls: Sequence[tuple[AsyncScript, list[str], list[Any]]],
        *,
        add_queues: Iterable[str] = (),
    ) -> list[Any]:
        """Several script calls in one round trip (pipelined, not a transaction).

        Each script is atomic on its own; they touch different queues, so nothing is
        gained by MULTI, which Redis Cluster would refuse across slots anyway.
        `add_queues` are SADDed to the queue registry in the same round trip.
        """
        names = list(add_queues)
        ack = self._ack if any(self._acked(c[0]) for c in calls) else None
        if len(calls) == 1 and not names and ack is None:
            script, keys, args = calls[0]
            return [await self._eval(script, keys, args)]
        return await self._checked(calls, await self._send_many(calls, names, ack), names, ack)

    async def _checked(
        self,
        calls: Sequence[tuple[AsyncScript, list[str], list[Any]]],
        replies: list[Any],
        names: Sequence[str],
        ack: ReplicaAck | None,
    ) -> list[Any]:
        """The replies of `calls` as sent by `_send_many` (or `script_commands` on a
        lane): the registry's SADD reply dropped, calls refused with NOSCRIPT sent again
        once their scripts are loaded, and the first error reply raised."""
        if names:
            if isinstance(replies[0], Exception):
                raise replies[0]
            replies = replies[1:]
        out: list[Any] = []
        reload = [i for i, r in enumerate(replies) if isinstance(r, NoScriptError)]
        if reload:
            # Redis restarted or a replica took over (scripts are not persisted or
            # replicated): these calls did not run, so load the scripts and send them
            # again the same way (with the same WAIT).
            for script in {calls[i][0].sha: calls[i][0] for i in reload}.values():
                await self._client.script_load(script.script)
            again = await self._send_many([calls[i] for i in reload], [], ack)
            for i, reply in zip(reload, again, strict=True):
                replies[i] = reply
        for reply in replies:
            if isinstance(reply, Exception):
                raise reply
            out.append(reply)
        return out

    def script_commands(
        self, calls: Sequence[tuple[AsyncScript, list[str], list[Any]]], names: Sequence[str]
    ) -> list[tuple[Any, ...]]:
        """The commands of `calls` (EVALSHA each), after a SADD of `names` to the queue
        registry when there are any."""
        commands: list[tuple[Any, ...]] = [("SADD", self._keys.queues, *names)] if names else []
        commands += [("EVALSHA", s.sha, len(k), *k, *a) for s, k, a in calls]
        return commands

    async def _send_many(
        self,
        calls: Sequence[tuple[AsyncScript, list[str], list[Any]]],
        names: list[str],
        ack: ReplicaAck | None,
    ) -> list[Any]:
        """The replies of SADD `names` to the registry (when any) and of `calls`, error
        replies in place; with `ack`, after checking that the replicas confirmed them
        (on the same connection: WAIT covers what its connection wrote)."""
        commands = self.script_commands(calls, names)
        replies: list[Any]
        if isinstance(self._lane, ClusterLane):
            replies = await self._lane.call_many(commands, wait=ack and ack.command[1:])  # type: ignore[arg-type]
        elif self._lane is not None:
            replies = await self._lane.call_many([*commands, *([ack.command] if ack else [])])
        elif self._cluster is not None:
            # rediss+cluster (no lane): one call each, concurrently; redis-py routes
            # them (a cluster pipeline refuses scripts). `?replicas` is refused at start.
            replies = list(
                await asyncio.gather(
                    *(self._cluster.execute_command(*c) for c in commands),
                    return_exceptions=True,
                )
            )
        else:
            async with self._client.pipeline(transaction=False) as pipe:
                for command in commands:
                    pipe.execute_command(*command)
                if ack is not None:
                    pipe.execute_command(*ack.command)
                replies = await pipe.execute(raise_on_error=False)
        if ack is not None:
            reached = replies.pop()
            if not any(isinstance(r, NoScriptError) for r in replies):
                enqueue = any(c[0] is self._scripts["enqueue"] for c in calls)
                ack.check(reached, self.url, enqueue=enqueue)
        return replies

    def _global_script(self, name: str) -> AsyncScript:
        """A script that works on global keys (registered on first use; redis-py loads it
        again by itself after a NOSCRIPT, e.g. when Redis restarted)."""
        script = self._scripts.get(name)
        if script is None:
            script = self._scripts[name] = self._client.register_script(self._source(name))
        return script

    @staticmethod
    def _decode_reply(
        reply: list[Any], job_id: str, refusal: Callable[[str, str], InvalidState]
    ) -> Job:
        """The job of an operator script's reply, or lifecycle's error for its refusal."""
        status = reply[0]
        if status == "missing":
            raise lifecycle.not_found(job_id)
        if status == "invalid":
            raise refusal(job_id, reply[1])
        if status == "held":
            raise lifecycle.dedupe_held(job_id, reply[1], reply[2])
        return decode_job(job_fields(reply[1], job_id))

    async def _load(self, queue: str, ids: Sequence[str]) -> list[Job]:
        if not ids:
            return []
        keys = self._keys.queue(queue)
        async with self._client.pipeline(transaction=False) as pipe:
            for job_id in ids:
                pipe.hgetall(keys.job(job_id))
            rows = await pipe.execute()
        # A job deleted between the index read and this one is skipped, not an error.
        return [
            decode_lenient(hash_fields(fields, job_id))
            for job_id, fields in zip(ids, rows, strict=True)
            if fields
        ]

    # --- connection ------------------------------------------------------------------------
    @driver_errors
    async def connect(self) -> None:
        """Check that Redis answers and load the scripts.

        Raises:
            EngineUnavailable: Redis cannot be reached; the message names the URL.
        """
        if self._cluster is not None:
            await self._cluster.initialize()  # the slot map, from the seed nodes
            version, self.server_settings, _ = await read_servers(self._cluster)
        else:
            # Read at every connect: durability and the policy can change between restarts.
            # (Its one round trip is also the check that Redis answers.)
            version, self.server_settings, clustered = await read_server(self._client)
            if clustered:
                raise ConfigError(
                    f"{self.url} is a Redis Cluster node: use "
                    f"redis+cluster://{self.url.split('://', 1)[1].split('/', 1)[0]}/ "
                    "(add more nodes after a comma; ?prefix= and the other options stay)"
                )
        self.durable = self.server_settings.durable is not False  # AOF off: not durable
        if self._version is None:  # Redis 7+: worker scripts may write past maxmemory
            self._version = version
            for name in list(self._scripts):
                self._scripts[name] = self._client.register_script(self._source(name))
            self._enqueue, self._exchange = self._scripts["enqueue"], self._scripts["exchange"]
        if self._cluster is not None:
            # SCRIPT LOAD goes to every master (redis-py's routing for it); a cluster
            # pipeline would refuse it.
            for script in self._scripts.values():
                await self._cluster.script_load(script.script)
            return
        async with self._client.pipeline(transaction=False) as pipe:
            for script in self._scripts.values():
                pipe.script_load(script.script)
            await pipe.execute()

    def _source(self, name: str) -> str:
        """Script `name` as loaded: the lifecycle prelude and helpers (`_script_source`)
        under the flags this server understands (errors.py), whose `#!lua` line
        `with_flags` puts first, where Redis looks for it."""
        return with_flags(name, _script_source(name), self._version or (0,))

    async def close(self) -> None:
        """Stop the wake-up listener and release connections. Safe to call twice."""
        tasks = [t for t in (self._listener, self._subscribing) if t is not None]
        for task in tasks:
            task.cancel()
        if tasks:
            # Bounded: a cancel swallowed inside redis-py must not hang shutdown.
            await asyncio.wait(tasks, timeout=2.0)
        self._listener = self._subscribing = None
        if self._pubsub is not None:
            with contextlib.suppress(Exception):
                await self._pubsub.aclose()  # type: ignore[no-untyped-call]
            self._pubsub = None
        self._requested.clear()
        self._subscribed.clear()
        for pickup in self._pickups.values():
            if pickup.reader is not None:
                pickup.reader.cancel()
            if pickup.lane is not None:
                pickup.lane.close()
        self._pickups.clear()
        if self._lane is not None:
            self._lane.close()
        with contextlib.suppress(Exception):
            await self._client.aclose()
        if self._pool is not None:
            with contextlib.suppress(Exception):
                await self._pool.disconnect()  # we built it, so the client does not own it

    @driver_errors
    async def ping(self) -> float:
        """Round-trip time of a PING in seconds.

        Raises:
            EngineUnavailable: Redis cannot be reached.
        """
        start = time.perf_counter()
        await self._client.ping()
        return time.perf_counter() - start
