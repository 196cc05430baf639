"""`redis://` / `rediss://` — the production engine.

Every state change is one Lua script (EVALSHA), so no job is ever half-written, and every
script uses Redis `TIME`, so due times and lease deadlines follow one clock whatever the
clients' clocks say. Each script touches only keys of one queue (one hash tag, see
`keys.py`), so the same code is legal on Redis Cluster.

Round trips are the cost (see DESIGN.md, performance model): a worker's `exchange`
acknowledges its finished jobs and claims new ones from a queue in one script call, a
producer's `enqueue` stores a batch in one script call per queue (pipelined together),
and idle workers block on a pub/sub wake-up instead of polling.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Sequence
from importlib import resources
from typing import Any, Concatenate, ParamSpec, TypeVar, cast
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import hiredis
import orjson
import redis.asyncio as aioredis
from redis.asyncio.client import PubSub
from redis.asyncio.connection import Connection
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff
from redis.commands.core import AsyncScript
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from ...durability import ServerSettings
from ...errors import ConfigError, EngineUnavailable, InvalidState, JobNotFound
from ...job import (
    FINISHED_STATES,
    EnqueueResult,
    Job,
    JobState,
    NewJob,
    decode_job,
    decode_lenient,
    queue_of,
)
from ...lifecycle import BULK_BATCH
from ...limits import QueueLimits
from ..base import (
    Event,
    Exchange,
    JobPage,
    LeaseInfo,
    Outcome,
    QueueCounts,
    StoredSchedule,
    Throughput,
)
from .bulk import bulk_waves
from .errors import classify, with_flags
from .keys import KeyLayout, QueueKeys
from .lane import Lane, url_timeouts
from .server import read_server

log = logging.getLogger(__name__)

P = ParamSpec("P")
R = TypeVar("R")

# Scripts that share the per-queue KEYS/ARGV layout and get `_lib.lua` prepended.
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
)
_WORKER_SCRIPTS = ("register_worker", "unregister_worker", "workers")

_BATCH = 1000  # jobs per script call for bulk operations: keeps each script short
_TENANT_SCAN_MAX = 5000  # entries a tenant-filtered listing examines per page
_MAX_BLOCK_MS = 20_000  # XREAD BLOCK stays under the socket timeout (see read_events)
_DRIVER_DOWN = (RedisConnectionError, RedisTimeoutError, OSError)


@functools.cache
def _script_source(name: str) -> str:
    """The Lua text of one operation (read once per process)."""
    lua = resources.files(__package__) / "lua"
    text = (lua / f"{name}.lua").read_text("utf-8")
    if name in _QUEUE_SCRIPTS:
        # The shared helpers must be defined before the operation's code runs.
        text = (lua / "_lib.lua").read_text("utf-8") + "\n" + text
    return text


def _split_url(url: str) -> tuple[str, str, str]:
    """Return (URL for redis-py, key prefix, URL safe to show: no password).

    Raises:
        ConfigError: not a redis:// or rediss:// URL, or an unusable prefix.
    """
    parts = urlsplit(url)
    if parts.scheme not in ("redis", "rediss"):
        raise ConfigError(
            f"{url!r} is not a Redis URL: use redis://host:6379/0 or rediss://host:6380/0"
        )
    prefix = "conveyor"
    rest: list[tuple[str, str]] = []
    for key, value in parse_qsl(parts.query, keep_blank_values=True):
        if key == "prefix":
            prefix = value
        else:
            rest.append((key, value))
    if not prefix or any(c in prefix for c in "{} \t\r\n"):
        raise ConfigError(
            f"Redis key prefix {prefix!r} is unusable: use letters, digits, '_', '-', '.' "
            "or ':', e.g. ?prefix=conveyor"
        )
    clean = urlunsplit(parts._replace(query=urlencode(rest)))
    shown = url
    if parts.password is not None:
        netloc = parts.netloc.rsplit("@", 1)[-1]
        user = f"{parts.username}:***@" if parts.username else ":***@"
        shown = urlunsplit(parts._replace(netloc=user + netloc))
    return clean, prefix, shown


def _driver_errors(
    fn: Callable[Concatenate[RedisEngine, P], Awaitable[R]],
) -> Callable[Concatenate[RedisEngine, P], Coroutine[Any, Any, R]]:
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

    async def wrapper(self: RedisEngine, /, *args: P.args, **kwargs: P.kwargs) -> R:
        task = asyncio.current_task()
        cancels = task.cancelling() if task is not None else 0
        try:
            result = await fn(self, *args, **kwargs)
        except _DRIVER_DOWN as exc:  # LOADING is one for redis-py (BusyLoadingError)
            raise (classify(exc, self.url) or self._unavailable(exc)) from exc
        except ResponseError as exc:  # LOADING, OOM, READONLY...: see errors.py
            error = classify(exc, self.url)
            if error is None:
                raise
            raise error from exc
        if task is not None and task.cancelling() > cancels:
            raise asyncio.CancelledError
        return result

    functools.update_wrapper(wrapper, fn)
    return wrapper


def _job_fields(flat: Sequence[Any]) -> dict[str, Any]:
    """A flat HGETALL reply from a script as the fields `decode_job` reads."""
    it = iter(flat)
    return _with_errors(dict(zip(it, it, strict=True)))


def _with_errors(fields: dict[str, Any]) -> dict[str, Any]:
    # Errors live in numbered fields err:1..err:<nerr>; most jobs have none, so the
    # presence of `nerr` is checked first and the hot path pays nothing.
    if "nerr" in fields:
        try:
            count = int(fields["nerr"])
        except ValueError:
            count = 0
        fields["errors"] = [
            fields[key] for i in range(1, count + 1) if (key := f"err:{i}") in fields
        ]
    return fields


def _event(queue: str, entry_id: str, f: dict[str, str]) -> Event:
    attempt = f.get("attempt")
    data = f.get("data")
    return Event(
        id=entry_id,
        kind=f.get("kind", ""),
        job_id=f.get("job", ""),
        queue=queue,
        at=int(f.get("at") or 0) / 1000.0,
        task=f.get("task") or None,
        tenant=f.get("tenant") or None,
        attempt=int(attempt) if attempt else None,
        data=orjson.loads(data) if data else {},
    )


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


_MAX_CONNECTIONS = 1000  # per engine (process); far above what one process keeps busy


class RedisEngine:
    """Jobs in Redis; see `conveyor.engines.base` for the contract.

    Args:
        url: `redis://[:password@]host:port/db` or `rediss://...`; an optional
            `?prefix=<name>` (default `conveyor`) namespaces every key.
        events_maxlen: approximate length each queue's event stream is trimmed to.

    Raises:
        ConfigError: the URL is not a Redis URL or its prefix is unusable.
    """

    def __init__(self, url: str, *, events_maxlen: int = 10_000) -> None:
        redis_url, self.prefix, self.url = _split_url(url)
        # `?socket_connect_timeout=` / `?socket_timeout=` (seconds), defaults 2 and 5.
        connect_timeout, self._timeout = url_timeouts(redis_url)
        self._keys = KeyLayout(self.prefix)
        self._events_maxlen = str(events_maxlen)
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
        self._lane = (
            Lane(redis_url, connect_timeout=connect_timeout, timeout=self._timeout)
            if redis_url.startswith("redis://")
            else None
        )
        self._enqueue = self._scripts["enqueue"]
        self._exchange = self._scripts["exchange"]
        self._queue_args: dict[str, tuple[QueueKeys, list[str], list[str]]] = {}
        self._known_queues: set[str] = set()  # SADDed to the queue registry already
        # Wake-ups (see wait_for_jobs): one pub/sub connection, read by one listener task.
        self._pubsub: PubSub | None = None
        self._listener: asyncio.Task[None] | None = None
        self._subscribing: asyncio.Task[None] | None = None
        self._requested: set[str] = set()  # queues we sent SUBSCRIBE for
        self._subscribed: set[str] = set()  # queues whose subscription Redis confirmed
        self._woken: dict[str, bool] = {}  # a wake-up arrived since the last claim
        self._signal = asyncio.Event()

    # --- plumbing ------------------------------------------------------------------------
    def _unavailable(self, exc: BaseException) -> EngineUnavailable:
        return EngineUnavailable(
            f"cannot reach Redis at {self.url} ({type(exc).__name__}: {exc}): is "
            "redis-server running? check CONVEYOR_URL (or REDIS_URL)"
        )

    def _q(self, queue: str) -> tuple[QueueKeys, list[str], list[str]]:
        """Keys and ARGV header of a queue's scripts (cached: built once per queue)."""
        entry = self._queue_args.get(queue)
        if entry is None:
            keys = self._keys.queue(queue)
            entry = (keys, keys.all(), [keys.wake_channel, self._events_maxlen, queue])
            self._queue_args[queue] = entry
        return entry

    async def _run(self, name: str, queue: str, *args: str | int) -> Any:
        """One per-queue script call."""
        _, keys, header = self._q(queue)
        return await self._eval(self._scripts[name], keys, [*header, *args])

    async def _eval(self, script: AsyncScript, keys: list[str], args: list[Any]) -> Any:
        if self._lane is None:
            return await script(keys=keys, args=args)
        try:
            return await self._lane.call("EVALSHA", script.sha, len(keys), *keys, *args)
        except NoScriptError:
            # Redis restarted (scripts are not persisted): this call did not run, so
            # running it through the script object (which loads it first) is safe.
            return await script(keys=keys, args=args)

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
        if len(calls) == 1 and not names:
            script, keys, args = calls[0]
            return [await self._eval(script, keys, args)]
        replies: list[Any]
        if self._lane is not None:
            commands: list[tuple[Any, ...]] = [("SADD", self._keys.queues, *names)] if names else []
            commands += [("EVALSHA", s.sha, len(k), *k, *a) for s, k, a in calls]
            replies = await self._lane.call_many(commands)
        else:
            async with self._client.pipeline(transaction=False) as pipe:
                if names:
                    pipe.sadd(self._keys.queues, *names)
                for script, keys, args in calls:
                    pipe.evalsha(script.sha, len(keys), *keys, *args)
                replies = await pipe.execute(raise_on_error=False)
        if names:
            if isinstance(replies[0], Exception):
                raise replies[0]
            replies = replies[1:]
        out: list[Any] = []
        for (script, keys, args), reply in zip(calls, replies, strict=True):
            if isinstance(reply, NoScriptError):
                # Redis restarted (scripts are not persisted): this call did not run, so
                # running it again through the script object (which reloads) is safe.
                reply = await script(keys=keys, args=args)
            elif isinstance(reply, Exception):
                raise reply
            out.append(reply)
        return out

    def _decode_reply(self, reply: list[Any], job_id: str, action: str, allowed: str) -> Job:
        status = reply[0]
        if status == "missing":
            raise JobNotFound(f"no job with id {job_id!r}: check the id, or it was cleaned")
        if status == "invalid":
            raise InvalidState(f"job {job_id} is {reply[1]}; only {allowed} jobs can be {action}")
        return decode_job(_job_fields(reply[1]))

    # --- lifecycle -----------------------------------------------------------------------
    @_driver_errors
    async def connect(self) -> None:
        """Check that Redis answers and load the scripts.

        Raises:
            EngineUnavailable: Redis cannot be reached; the message names the URL.
        """
        await self._client.ping()
        # Read at every connect: durability and the policy can change between restarts.
        version, self.server_settings = await read_server(self._client)
        self.durable = self.server_settings.durable is not False  # AOF off: not durable
        if self._version is None:  # Redis 7+: worker scripts may write past maxmemory
            self._version = version
            for name in list(self._scripts):
                self._scripts[name] = self._client.register_script(self._source(name))
            self._enqueue, self._exchange = self._scripts["enqueue"], self._scripts["exchange"]
        async with self._client.pipeline(transaction=False) as pipe:
            for script in self._scripts.values():
                pipe.script_load(script.script)
            await pipe.execute()

    def _source(self, name: str) -> str:
        """Script `name` with the flags this server understands (errors.py)."""
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
        if self._lane is not None:
            self._lane.close()
        with contextlib.suppress(Exception):
            await self._client.aclose()
        with contextlib.suppress(Exception):
            await self._pool.disconnect()  # we built the pool, so the client does not own it

    @_driver_errors
    async def ping(self) -> float:
        """Round-trip time of a PING in seconds.

        Raises:
            EngineUnavailable: Redis cannot be reached.
        """
        start = time.perf_counter()
        await self._client.ping()
        return time.perf_counter() - start

    # --- producers -----------------------------------------------------------------------
    @_driver_errors
    async def enqueue(self, jobs: Sequence[NewJob]) -> list[EnqueueResult]:
        """Store jobs: one script call per queue and chunk, pipelined per wave.

        A script blocks Redis while it runs (a 20,000-job call blocked every worker's
        claim and heartbeat for 391 ms), so each queue's jobs go in chunks of at most
        `lifecycle.BULK_BATCH` (a few ms each). Wave k holds chunk k of every queue in one
        round trip; the next wave is sent only after it succeeded, so other clients'
        commands run between chunks. What that promises (the README says it too):

            every chunk is all or nothing; if a wave fails, the call raises and the
            jobs stored are, per queue, a prefix of its jobs in input order (whole
            chunks); a call of at most BULK_BATCH jobs per queue is all or nothing.

        Args:
            jobs: validated jobs.

        Returns:
            One result per job, in input order (`created=False`: a dedupe key pointed at
            a live job, whose id and state are returned).
        """
        if not jobs:
            return []
        groups: dict[str, list[int]] = {}
        for i, job in enumerate(jobs):
            groups.setdefault(job.queue, []).append(i)
        waves = bulk_waves(groups, BULK_BATCH)
        results: list[EnqueueResult | None] = [None] * len(jobs)
        for wave in waves:
            calls = [(self._enqueue, *self._enqueue_call(q, jobs, ix)) for q, ix in wave]
            # The queue registry only grows, so each process SADDs a queue once; then a
            # single-queue enqueue is one EVALSHA, not a pipeline (half the client CPU).
            new_queues = [q for q, _ in wave if q not in self._known_queues]
            replies = await self._run_many(calls, add_queues=new_queues)
            self._known_queues.update(new_queues)
            for (_, indexes), reply in zip(wave, replies, strict=True):
                for n, i in enumerate(indexes):
                    job_id, created, state = reply[3 * n : 3 * n + 3]
                    results[i] = EnqueueResult(job_id, bool(created), JobState(state))
        return [r for r in results if r is not None]

    def _enqueue_call(
        self, queue: str, jobs: Sequence[NewJob], indexes: Sequence[int]
    ) -> tuple[list[str], list[Any]]:
        """KEYS and ARGV of one `enqueue` script call for `jobs[i] for i in indexes`."""
        _, keys, header = self._q(queue)
        args: list[Any] = [*header, len(indexes)]
        for i in indexes:
            j = jobs[i]
            args += (
                j.id,
                j.task,
                j.payload_json,
                j.max_attempts,
                j.priority,
                j.tenant or "",
                j.dedupe_key or "",
                "" if j.timeout is None else int(j.timeout * 1000),
                j.backoff_json or "",
                j.delay_ms,
                "" if j.run_at_ms is None else j.run_at_ms,
            )
        return keys, args

    # --- workers (hot path) --------------------------------------------------------------
    @_driver_errors
    async def exchange(
        self,
        outcomes: Sequence[Outcome],
        *,
        queues: Sequence[str],
        limit: int,
        worker_id: str,
        lease_ms: int,
    ) -> Exchange:
        """Apply `outcomes`, then claim up to `limit` jobs from `queues` in order.

        A queue's outcomes and its claim travel in the same script call; queues are
        visited in order until `limit` is filled (each claim depends on how many the
        previous one got). Outcomes of queues not claimed from go in one pipeline.

        Returns:
            Claimed jobs, ids whose lease was lost, and ms until the next due job.
        """
        by_queue: dict[str, list[Outcome]] = {}
        for outcome in outcomes:
            by_queue.setdefault(queue_of(outcome.job_id), []).append(outcome)
        result = Exchange()
        remaining = limit
        next_due: int | None = None
        if remaining > 0:
            claim_from = list(dict.fromkeys(queues))
            # Outcomes of queues this call will not claim from go first, together.
            others = [q for q in by_queue if q not in claim_from]
            if others:
                await self._apply_outcomes(
                    {q: by_queue.pop(q) for q in others}, worker_id, lease_ms, result
                )
            for queue in claim_from:
                outs = by_queue.pop(queue, [])
                if remaining <= 0 and not outs:
                    continue
                # A wake-up that arrives from now on is for work this claim cannot see
                # (see wait_for_jobs), so forget the ones before it.
                if queue in self._woken:
                    self._woken[queue] = False
                lost, due, claimed, recovered = await self._run(
                    "exchange",
                    queue,
                    *self._exchange_args(outs, worker_id, lease_ms, max(remaining, 0)),
                )
                result.lost.extend(lost)
                result.recovered += recovered
                for flat in claimed:
                    result.jobs.append(decode_lenient(_job_fields(flat)))
                remaining = limit - len(result.jobs)
                if due >= 0 and (next_due is None or due < next_due):
                    next_due = due
        if by_queue:
            await self._apply_outcomes(by_queue, worker_id, lease_ms, result)
        result.next_due_ms = next_due
        return result

    @staticmethod
    def _exchange_args(
        outcomes: Sequence[Outcome], worker_id: str, lease_ms: int, limit: int
    ) -> list[Any]:
        args: list[Any] = [worker_id, lease_ms, limit, len(outcomes)]
        for o in outcomes:
            if o.kind == "complete":
                body = o.result_json
            elif o.kind == "defer":
                body = o.reason
            elif o.kind == "release":
                body = None
            else:
                body = o.error_json
            args += (o.job_id, o.token, o.kind, body or "", o.delay_ms)
        return args

    async def _apply_outcomes(
        self, groups: dict[str, list[Outcome]], worker_id: str, lease_ms: int, result: Exchange
    ) -> None:
        calls = []
        for queue, outs in groups.items():
            _, keys, header = self._q(queue)
            calls.append(
                (
                    self._exchange,
                    keys,
                    [*header, *self._exchange_args(outs, worker_id, lease_ms, 0)],
                )
            )
        for lost, _, _, _ in await self._run_many(calls):
            result.lost.extend(lost)

    @_driver_errors
    async def heartbeat(self, leases: Sequence[tuple[str, str]], *, lease_ms: int) -> list[str]:
        """Extend leases `(job_id, token)` to now + lease_ms (one round trip).

        Returns:
            Ids whose lease was lost (job gone, not running, or token changed).
        """
        if not leases:
            return []
        groups: dict[str, list[str]] = {}
        for job_id, token in leases:
            groups.setdefault(queue_of(job_id), []).extend((job_id, token))
        calls = []
        for queue, pairs in groups.items():
            _, keys, header = self._q(queue)
            calls.append((self._scripts["heartbeat"], keys, [*header, lease_ms, *pairs]))
        return [job_id for lost in await self._run_many(calls) for job_id in lost]

    @_driver_errors
    async def set_progress(self, job_id: str, token: str, progress_json: str) -> bool:
        """Store progress of a running job; False when the lease is gone."""
        return bool(await self._run("set_progress", queue_of(job_id), job_id, token, progress_json))

    @_driver_errors
    async def wait_for_jobs(self, queues: Sequence[str], timeout: float) -> None:
        """Block until a wake-up for one of `queues` arrives, or `timeout` seconds pass.

        Scripts PUBLISH to `<prefix>:wake:<queue>` when they refill an empty pending set.
        Why a wake-up cannot be missed, as a timeline of the race it prevents:

            worker: exchange finds pending empty ... wait_for_jobs
            producer:                  enqueue + PUBLISH   (lands in between)

        1. The engine stays subscribed (one pub/sub connection, read by a listener task
           that records "woken" per queue), so a PUBLISH between the claim and the wait
           is recorded and the wait returns at once.
        2. `exchange` forgets a queue's wake-up just before sending its claim: anything
           published earlier is visible to that claim.
        3. The first wait for a queue subscribes, waits for Redis to confirm, and returns
           at once (a spurious wake-up): the claim before it ran while nobody listened,
           so the caller must claim again, now that it is subscribed.
        4. After the pub/sub connection is lost and re-established, every queue counts as
           woken, since messages published meanwhile are gone.

        Raises:
            EngineUnavailable: Redis cannot be reached.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        if any(q not in self._subscribed for q in queues):
            await self._ensure_subscribed(queues, deadline)
            return
        while not any(self._woken.get(q) for q in queues):
            remaining = deadline - loop.time()
            if remaining <= 0:
                return
            await self._wait_signal(remaining)

    async def _ensure_subscribed(self, queues: Sequence[str], deadline: float) -> None:
        new = [q for q in queues if q not in self._requested]
        if new:
            if self._subscribing is not None and not self._subscribing.done():
                await asyncio.shield(self._subscribing)
            # Shielded: a waiter cancelled mid-SUBSCRIBE (the worker does that when local
            # work arrives) must not cut the command in half on the shared connection.
            self._subscribing = asyncio.ensure_future(self._subscribe(new))
            await asyncio.shield(self._subscribing)
        loop = asyncio.get_running_loop()
        while any(q not in self._subscribed for q in queues):
            remaining = deadline - loop.time()
            if remaining <= 0:
                return
            await self._wait_signal(remaining)

    async def _wait_signal(self, seconds: float) -> None:
        """Wait for the listener's next notification, at most `seconds`."""
        signal = self._signal
        # asyncio.timeout, not wait_for: 3.11's wait_for can drop a cancellation.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await signal.wait()

    async def _subscribe(self, queues: list[str]) -> None:
        if self._pubsub is None:
            self._pubsub = self._client.pubsub()
        pubsub = self._pubsub
        await pubsub.subscribe(*(self._keys.queue(q).wake_channel for q in queues))
        self._requested.update(queues)
        for q in queues:
            self._woken.setdefault(q, False)
        if pubsub.connection is not None:
            pubsub.connection.register_connect_callback(self._on_pubsub_connect)
        if self._listener is None or self._listener.done():
            self._listener = asyncio.create_task(self._listen(pubsub), name="conveyor-redis-wake")

    def _on_pubsub_connect(self, connection: Connection) -> None:
        # redis-py re-subscribed after a reconnect; whatever was published while the
        # connection was down is lost, so treat every queue as woken.
        self._wake_all()

    def _wake_all(self) -> None:
        for q in self._woken:
            self._woken[q] = True
        self._notify()

    def _notify(self) -> None:
        self._signal.set()
        self._signal = asyncio.Event()

    async def _listen(self, pubsub: PubSub) -> None:
        """Read the pub/sub connection until cancelled, recording wake-ups per queue."""
        task = asyncio.current_task()
        # Checked each turn: a cancel that redis-py swallowed must still end the loop.
        while task is None or not task.cancelling():
            try:
                msg = await pubsub.get_message(ignore_subscribe_messages=False, timeout=10.0)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # connection lost and redis-py's retries exhausted
                log.warning("redis wake-up listener lost its connection (%s); retrying", exc)
                self._wake_all()
                await asyncio.sleep(0.5)
                continue
            if msg is None:
                continue
            kind = msg["type"]
            queue = self._keys.queue_of_channel(msg["channel"])
            if kind == "message":
                self._woken[queue] = True
                self._notify()
            elif kind == "subscribe":
                self._subscribed.add(queue)
                self._notify()

    @_driver_errors
    async def recover_expired(self, queues: Sequence[str]) -> int:
        """Recover running jobs whose lease expired; returns how many were recovered."""
        total = 0
        todo = list(dict.fromkeys(queues))
        while todo:
            calls = []
            for queue in todo:
                _, keys, header = self._q(queue)
                calls.append((self._scripts["recover"], keys, [*header, _BATCH]))
            replies = await self._run_many(calls)
            total += sum(int(recovered) for recovered, _ in replies)
            todo = [q for q, (_, more) in zip(todo, replies, strict=True) if more]
        return total

    # --- read model ----------------------------------------------------------------------
    @_driver_errors
    async def get_job(self, job_id: str) -> Job:
        """One job with its errors.

        Raises:
            JobNotFound: no such job.
            MalformedJob: its stored fields cannot be decoded.
        """
        key = self._keys.queue(queue_of(job_id)).job(job_id)
        fields = cast(dict[str, Any], await self._client.hgetall(key))
        if not fields:
            raise JobNotFound(f"no job with id {job_id!r}: check the id, or it was cleaned")
        return decode_job(_with_errors(fields))

    @_driver_errors
    async def queue_names(self) -> list[str]:
        """Every queue that has ever held a job, sorted."""
        return sorted(cast(set[str], await self._client.smembers(self._keys.queues)))

    @_driver_errors
    async def counts(self, queue: str) -> QueueCounts:
        """Depth per state (ZCARD), paused flag, oldest pending job, last-minute throughput.

        One read-only script: every figure is O(1) or O(log n), no scans.
        """
        reply = await self._run("counts", queue)
        sched, pend, run, done, failed, cancelled, paused, oldest, done_1m, failed_1m = reply
        return QueueCounts(
            queue=queue,
            scheduled=sched,
            pending=pend,
            running=run,
            completed=done,
            failed=failed,
            cancelled=cancelled,
            paused=bool(paused),
            oldest_pending_ms=None if oldest < 0 else int(oldest),
            completed_1m=done_1m,
            failed_1m=failed_1m,
        )

    @_driver_errors
    async def list_jobs(
        self,
        queue: str,
        state: JobState,
        *,
        tenant: str | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> JobPage:
        """Jobs in one state: pending in claim order, scheduled by due time, others newest first.

        The cursor is an offset into the state's index. With `tenant`, at most
        `_TENANT_SCAN_MAX` entries are examined per page, so a page may hold fewer than
        `limit` jobs and still have a cursor.
        """
        zkey = self._keys.queue(queue).by_state(state.value)
        desc = state not in (JobState.PENDING, JobState.SCHEDULED)
        try:
            start = int(cursor) if cursor else 0
        except ValueError:
            raise InvalidState(f"cursor {cursor!r} is not one this engine returned") from None
        if limit <= 0:
            return JobPage([], cursor)
        if state is JobState.PENDING:
            return await self._list_pending(queue, tenant, limit, start if cursor else None)
        if tenant is None:
            ids = cast(list[str], await self._client.zrange(zkey, start, start + limit, desc=desc))
            more = len(ids) > limit
            jobs = await self._load(queue, ids[:limit])
            return JobPage(jobs, str(start + limit) if more else None)
        matched: list[str] = []
        pos = start
        exhausted = False
        chunk = max(limit * 4, 200)
        job_key = self._keys.queue(queue).job
        while len(matched) < limit and pos - start < _TENANT_SCAN_MAX:
            ids = cast(list[str], await self._client.zrange(zkey, pos, pos + chunk - 1, desc=desc))
            async with self._client.pipeline(transaction=False) as pipe:
                for job_id in ids:
                    pipe.hget(job_key(job_id), "tenant")
                tenants = await pipe.execute()
            for job_id, job_tenant in zip(ids, tenants, strict=True):
                pos += 1
                if job_tenant == tenant:
                    matched.append(job_id)
                    if len(matched) == limit:
                        break
            if len(ids) < chunk and len(matched) < limit:
                exhausted = True  # read to the end of the index
                break
        if not exhausted:
            # Only hand out a cursor when something is left to scan.
            exhausted = not await self._client.zrange(zkey, pos, pos, desc=desc)
        return JobPage(await self._load(queue, matched), None if exhausted else str(pos))

    async def _list_pending(
        self, queue: str, tenant: str | None, limit: int, after: int | None
    ) -> JobPage:
        """Pending jobs in the queue's priority/FIFO order, after the score `after`.

        Jobs without a tenant and tenant jobs live in two zsets with the same scores
        (see keys.py): a page reads `limit + 1` from each and merges them. The cursor is
        the score of the page's last job (scores are unique: each comes from a counter).
        A tenant's jobs are its bucket alone.
        """
        keys = self._keys.queue(queue)
        zkeys = [keys.bucket(tenant)] if tenant is not None else [keys.pending, keys.tpending]
        low = "-inf" if after is None else f"({after}"
        async with self._client.pipeline(transaction=False) as pipe:
            for zkey in zkeys:
                pipe.zrangebyscore(zkey, low, "+inf", start=0, num=limit + 1, withscores=True)
            replies = await pipe.execute()
        entries = sorted(
            ((int(score), job_id) for reply in replies for job_id, score in reply),
        )[: limit + 1]
        more = len(entries) > limit
        entries = entries[:limit]
        jobs = await self._load(queue, [job_id for _, job_id in entries])
        return JobPage(jobs, str(entries[-1][0]) if more and entries else None)

    async def _load(self, queue: str, ids: Sequence[str]) -> list[Job]:
        if not ids:
            return []
        keys = self._keys.queue(queue)
        async with self._client.pipeline(transaction=False) as pipe:
            for job_id in ids:
                pipe.hgetall(keys.job(job_id))
            rows = await pipe.execute()
        # A job deleted between the index read and this one is skipped, not an error.
        return [decode_lenient(_with_errors(fields)) for fields in rows if fields]

    @_driver_errors
    async def read_events(
        self, queues: Sequence[str], *, since: dict[str, str] | None, count: int, block_ms: int
    ) -> list[Event]:
        """Events after `since` (queue -> last seen stream id; absent = only new ones).

        One XREAD over the queues' streams, blocking up to `block_ms` (capped below the
        socket timeout; callers loop). Event ids are stream ids.
        """
        if not queues:
            return []
        since = since or {}
        by_key = {self._keys.queue(q).events: q for q in dict.fromkeys(queues)}
        streams = {key: since.get(q, "$") for key, q in by_key.items()}
        # The block must end before the socket timeout would call the connection dead.
        cap = min(_MAX_BLOCK_MS, int(self._timeout * 1000) - 500)
        block = max(1, min(block_ms, cap)) if block_ms > 0 else None
        reply = cast(
            list[tuple[str, list[tuple[str, dict[str, str]]]]] | None,
            await self._client.xread(streams, count=count, block=block),  # type: ignore[arg-type]
        )
        events = [
            _event(by_key[stream], entry_id, fields)
            for stream, entries in reply or []
            for entry_id, fields in entries
        ]
        if len(by_key) > 1:
            events.sort(key=lambda e: tuple(int(p) for p in e.id.split("-")))
        return events[:count]

    @_driver_errors
    async def last_event_ids(self, queues: Sequence[str]) -> dict[str, str]:
        """The newest event id per queue ("0" when it has none), to resume reading from."""
        async with self._client.pipeline(transaction=False) as pipe:
            for q in queues:
                pipe.xrevrange(self._keys.queue(q).events, count=1)
            replies = await pipe.execute()
        return {q: (r[0][0] if r else "0") for q, r in zip(queues, replies, strict=True)}

    # --- operations ----------------------------------------------------------------------
    @_driver_errors
    async def pause(self, queue: str) -> None:
        """Workers stop claiming from `queue`; producers keep enqueueing."""
        await self._run("pause", queue)

    @_driver_errors
    async def resume(self, queue: str) -> None:
        """Undo `pause` and wake idle workers."""
        await self._run("resume", queue)

    @_driver_errors
    async def retry_job(self, job_id: str) -> Job:
        """failed/cancelled -> pending with a fresh attempt budget (errors are kept).

        Raises:
            JobNotFound: no such job.
            InvalidState: the job is not failed or cancelled.
        """
        reply = await self._run("retry_job", queue_of(job_id), job_id)
        return self._decode_reply(
            reply, job_id, "retried (use promote for a scheduled job)", "failed or cancelled"
        )

    @_driver_errors
    async def cancel_job(self, job_id: str) -> Job:
        """scheduled/pending/running -> cancelled (a running job's lease is revoked).

        Raises:
            JobNotFound: no such job.
            InvalidState: the job already finished.
        """
        reply = await self._run("cancel_job", queue_of(job_id), job_id)
        return self._decode_reply(reply, job_id, "cancelled", "scheduled, pending or running")

    @_driver_errors
    async def promote_job(self, job_id: str) -> Job:
        """scheduled -> pending now.

        Raises:
            JobNotFound: no such job.
            InvalidState: the job is not scheduled.
        """
        reply = await self._run("promote_job", queue_of(job_id), job_id)
        return self._decode_reply(reply, job_id, "promoted", "scheduled (delayed)")

    @_driver_errors
    async def retry_all(self, queue: str, state: JobState = JobState.FAILED) -> int:
        """Retry every job of `queue` in `state`, in batches; returns how many.

        Raises:
            InvalidState: `state` is neither failed nor cancelled.
        """
        if state not in (JobState.FAILED, JobState.CANCELLED):
            raise InvalidState(f"only failed or cancelled jobs can be retried, not {state.value}")
        total = 0
        while True:
            n = int(await self._run("retry_all", queue, state.value, _BATCH))
            total += n
            if n < _BATCH:
                return total

    @_driver_errors
    async def clean(self, queue: str, state: JobState, older_than_ms: int, limit: int) -> int:
        """Delete up to `limit` jobs in a finished `state` finished over `older_than_ms` ago.

        Raises:
            InvalidState: `state` is not completed, failed or cancelled (cancel first).
        """
        if state not in FINISHED_STATES:
            raise InvalidState(
                f"only finished jobs can be cleaned, not {state.value}: cancel them first, "
                "or purge the queue"
            )
        total = 0
        while total < limit:
            batch = min(_BATCH, limit - total)
            n = int(await self._run("clean", queue, state.value, older_than_ms, batch))
            total += n
            if n < batch:
                break
        return total

    @_driver_errors
    async def purge(self, queue: str) -> int:
        """Delete every job of `queue` (all states) and its dedupe keys; returns how many."""
        total = 0
        while True:
            n = int(await self._run("purge", queue, _BATCH))
            total += n
            if n < _BATCH:
                return total

    @_driver_errors
    async def register_worker(self, worker_id: str, info_json: str, ttl_ms: int) -> None:
        """Record that a worker is alive for `ttl_ms` (Redis clock) with its info."""
        await self._scripts["register_worker"](
            keys=[self._keys.workers, self._keys.workers_info], args=[worker_id, info_json, ttl_ms]
        )

    @_driver_errors
    async def unregister_worker(self, worker_id: str) -> None:
        """Remove a worker's record at shutdown."""
        await self._scripts["unregister_worker"](
            keys=[self._keys.workers, self._keys.workers_info], args=[worker_id]
        )

    @_driver_errors
    async def workers(self) -> list[dict[str, Any]]:
        """Live workers, each with `id`, `expires_ms`, `last_seen` (seconds) and its info."""
        flat = await self._scripts["workers"](
            keys=[self._keys.workers, self._keys.workers_info], args=[]
        )
        out: list[dict[str, Any]] = []
        for i in range(0, len(flat), 3):
            worker_id, expires, value = flat[i : i + 3]
            seen, _, info_json = value.partition("\n")
            try:
                info = orjson.loads(info_json) if info_json else {}
            except orjson.JSONDecodeError:
                info = {"info": info_json}
            if not isinstance(info, dict):
                info = {"info": info}
            out.append(
                {
                    "id": worker_id,
                    "expires_ms": int(expires),
                    "last_seen": int(seen or 0) / 1000.0,
                    **info,
                }
            )
        return sorted(out, key=lambda w: str(w["id"]))

    # --- fairness and limits ---------------------------------------------------------------
    @_driver_errors
    async def set_limits(self, queue: str, limits: QueueLimits | None) -> None:
        """Store `queue`'s limits in its `limits` hash (None: none) and wake idle workers."""
        values = (limits or QueueLimits()).fields()
        if limits is None or limits.empty:
            values = dict.fromkeys(values)
        await self._run("set_limits", queue, *("" if v is None else v for v in values.values()))

    @_driver_errors
    async def get_limits(self, queue: str) -> QueueLimits:
        """The stored limits of `queue` (empty when it has none)."""
        fields = cast(dict[str, str], await self._client.hgetall(self._keys.queue(queue).limits))
        return QueueLimits.from_fields(fields)

    @_driver_errors
    async def tenant_running(self, queue: str) -> dict[str, int]:
        """Running jobs per tenant of `queue` (the `trunning` hash claims check)."""
        raw = cast(dict[str, str], await self._client.hgetall(self._keys.queue(queue).trunning))
        return {t: int(n) for t, n in sorted(raw.items()) if int(n) > 0}

    # --- scheduler: leadership leases and the schedule store ------------------------------
    # Leases and schedules live under the global tag `{<prefix>}` (see keys.py), so the
    # fenced advance touches a lease and a schedule in one script, legal on Cluster.
    def _global_script(self, name: str) -> AsyncScript:
        """A script that works on global keys (registered on first use; redis-py loads it
        again by itself after a NOSCRIPT, e.g. when Redis restarted)."""
        script = self._scripts.get(name)
        if script is None:
            script = self._scripts[name] = self._client.register_script(self._source(name))
        return script

    @_driver_errors
    async def acquire_lease(self, name: str, holder: str, ttl_ms: int) -> bool:
        """Take lease `name` (SET NX PX on the Redis clock) or extend it if already ours."""
        script = self._global_script("lease_acquire")
        return bool(await script(keys=[self._keys.lease(name)], args=[holder, ttl_ms]))

    @_driver_errors
    async def renew_lease(self, name: str, holder: str, ttl_ms: int) -> bool:
        """Extend lease `name` only while `holder` holds it (compare-and-set)."""
        script = self._global_script("lease_renew")
        return bool(await script(keys=[self._keys.lease(name)], args=[holder, ttl_ms]))

    @_driver_errors
    async def release_lease(self, name: str, holder: str) -> bool:
        """Delete lease `name` if `holder` holds it (compare-and-delete)."""
        script = self._global_script("lease_release")
        return bool(await script(keys=[self._keys.lease(name)], args=[holder]))

    @_driver_errors
    async def lease_info(self, name: str) -> LeaseInfo | None:
        """The live holder of lease `name` and its remaining milliseconds (PTTL)."""
        async with self._client.pipeline(transaction=True) as pipe:
            pipe.get(self._keys.lease(name))
            pipe.pttl(self._keys.lease(name))
            holder, ttl = await pipe.execute()
        return None if holder is None or ttl < 0 else LeaseInfo(str(holder), int(ttl))

    @_driver_errors
    async def put_schedule(self, name: str, spec_json: str, source: str) -> None:
        """Create or update a schedule (an update keeps paused, since and last run)."""
        await self._global_script("schedule_put")(
            keys=[self._keys.schedule_names(), self._keys.schedule(name)],
            args=[name, spec_json, source],
        )

    @_driver_errors
    async def schedules(self) -> list[StoredSchedule]:
        """Every stored schedule, by name (one SMEMBERS, then one pipelined read)."""
        # decode_responses=True: members are str (redis-py types them bytes | str).
        names = sorted(str(n) for n in await self._client.smembers(self._keys.schedule_names()))
        if not names:
            return []
        async with self._client.pipeline(transaction=False) as pipe:
            for name in names:
                pipe.hgetall(self._keys.schedule(name))
            rows = await pipe.execute()
        out = []
        for name, row in zip(names, rows, strict=True):
            if not row:  # deleted between the two reads
                continue
            last = row.get("last_run_ms")
            out.append(
                StoredSchedule(
                    name=name,
                    spec_json=row.get("spec", ""),
                    source=row.get("source", "runtime"),
                    paused=row.get("paused") == "1",
                    since_ms=int(row.get("since_ms") or 0),
                    last_run_ms=int(last) if last else None,
                )
            )
        return out

    @_driver_errors
    async def delete_schedule(self, name: str) -> bool:
        """Remove a schedule; returns whether it existed."""
        return bool(
            await self._global_script("schedule_delete")(
                keys=[self._keys.schedule_names(), self._keys.schedule(name)], args=[name]
            )
        )

    @_driver_errors
    async def set_schedule_paused(self, name: str, paused: bool) -> bool:
        """Pause or resume; resuming a paused schedule moves its baseline to now."""
        return bool(
            await self._global_script("schedule_pause")(
                keys=[self._keys.schedule(name)], args=["1" if paused else "0"]
            )
        )

    @_driver_errors
    async def advance_schedule(self, name: str, run_ms: int, *, lease: str, holder: str) -> bool:
        """Set `last_run_ms` if `holder` holds the live `lease` and `run_ms` is later."""
        return bool(
            await self._global_script("schedule_advance")(
                keys=[self._keys.lease(lease), self._keys.schedule(name)], args=[holder, run_ms]
            )
        )

    # --- dashboard read model -----------------------------------------------------------
    @_driver_errors
    async def throughput_history(self, queue: str, minutes: int) -> Throughput:
        """Completed/failed jobs per minute: ZCOUNTs over the finished-time zsets in one
        read-only script (`lua/throughput_history.lua`), on the Redis clock."""
        minutes = max(1, minutes)
        keys, _, _ = self._q(queue)
        reply = await self._global_script("throughput_history")(
            keys=[keys.completed, keys.failed], args=[minutes]
        )
        counts = [int(n) for n in reply[1:]]
        return Throughput(queue, int(reply[0]), counts[:minutes], counts[minutes:])
