"""Where a queue's data lives in Redis: the one place that builds key names.

Every key of queue `q` carries the hash tag `{<prefix>:q}`, so all of them hash to one
slot and a script that touches them is legal on Redis Cluster. Per queue:

```
{p:q}:job:<job id>   hash    one job (fields read by `conveyor.job.decode_job`; not
                             the id and queue, which the key has, nor fields equal to
                             their default: see `new_job_fields` in lua/_lib.lua;
                             errors as `err:<n>` fields, `score`: its pending score when
                             last pushed or claimed, kept by a job recovered from an
                             expired lease; a job stored pending has it in its bucket only)
{p:q}:fifo           list    jobs WITHOUT a tenant at priority 0 queued at the back (most
                             jobs) in FIFO order, two entries each: seq, then the id after
                             "<q>:" (':' + id for an id that does not start with it). Its
                             score is MAX_PRIORITY * PRIORITY_BAND + PRIORITY_MID + seq, so
                             the list is in score order and merges with `pending` (the
                             claim takes the lower head; see lua/_lib.lua). ~30 B a job,
                             where a zset entry costs ~120 B.
{p:q}:pending        zset    the other jobs WITHOUT a tenant, score = (MAX_PRIORITY - priority) *
                             PRIORITY_BAND + PRIORITY_MID + seq (claim order; constants in
                             `conveyor.lifecycle`); released jobs use PRIORITY_MID - front,
                             so they lead their priority
{p:q}:tpending       zset    jobs WITH a tenant, same scores (listings, counts, age)
{p:q}:tp:<tenant>    zset    one tenant's pending jobs, same scores: its bucket
{p:q}:ready          zset    the rotation: buckets with pending jobs (a tenant, or '' for
                             the jobs without one), score = turn when last served
{p:q}:trunning       hash    tenant -> running jobs (what tenant_concurrency counts)
{p:q}:limits         hash    concurrency, tenant_concurrency, rate, rate_window_ms,
                             tenant_rate, tenant_rate_window_ms (absent = no limit)
{p:q}:rate           zset    start times inside the queue's rate window (member: token)
{p:q}:trate:<tenant> zset    the same per tenant (expires with its window)
{p:q}:turn           string  INCR counter: rotation turns
{p:q}:served         hash    bucket -> the turn it was last served at, for a bucket out of
                             the rotation (it rejoins there when it refills)
{p:q}:scheduled      zset    score = due time (ms, Redis clock)
{p:q}:running        zset    score = lease deadline (ms, Redis clock)
{p:q}:completed      zset    score = finished time (ms)
{p:q}:failed         zset    score = finished time (ms)   (the dead-letter set)
{p:q}:cancelled      zset    score = finished time (ms)
{p:q}:parents        zset    flow parents in waiting-children, score = created time (ms)
{p:q}:job:<id>:wait  set     a waiting flow parent's unfinished children (derived from
                             the job hash's name, like it: same tag, same slot); a child
                             hash has `parent` and `policy`, a parent hash `children`
                             (JSON list of ids, in the order given); see lua/_flows.lua
{p:q}:dedupe         hash    dedupe key -> id of the active job holding it
{p:q}:paused         string  present while the queue is paused
{p:q}:events         stream  the queue's bounded event log (XADD MAXLEN ~); an entry is
                             one event, or (`at`, `batch`) up to 64 events of one
                             script call (see flush_events in lua/_lib.lua; reads.py
                             gives each its own id)
{p:q}:seq            string  INCR counter: FIFO order and lease tokens
{p:q}:front          string  INCR counter: order of released jobs (front of priority)
{p:q}:ts:<state>:<tenant>
                     zset    one tenant's jobs in `state` (scheduled, running, completed,
                             failed, cancelled; pending has the buckets above), same
                             scores as the state's zset except running: claim time (a
                             heartbeat does not move it). What tenant listings read.
{p:q}:waiting        zset    idle workers that take a job handed to them (one-hop pickup,
                             see lua/_pickup.lua): member "<lease ms>:<worker id>",
                             score = when the registration lapses (ms, Redis clock)
{p:q}:inbox:<worker> list    jobs handed to that worker, already claimed for it (JSON of
                             the job's fields); it reads them with BLPOP (expires)
{p:q}:tindexed       string  present once the jobs stored before those indexes existed
                             were backfilled into them (see `RedisReads.list_jobs`)
```

A tenant's bucket, rate log and state indexes are the only keys besides job hashes that
a script derives (prefix from KEYS .. tenant): tenants are not known before the script
runs, and the prefix carries the queue's tag, so they live in the queue's slot too.

Global keys live under the tag `{<prefix>}` (the worker scripts touch both worker keys, so
they must share a slot; a queue tag always has a `:` after the prefix, so they never
collide): `{p}:queues` (set of queue names), `{p}:workers` (zset id -> expiry ms),
`{p}:workers:info` (hash id -> "<last seen ms>\\n<info json>").
The scheduler's keys share that tag, so the fenced `schedule_advance` and
`schedule_error` scripts may touch a lease and a schedule together: `{p}:lease:<name>`
(string: holder, PX = lease time), `{p}:schedules` (set of schedule names),
`{p}:schedule:<name>` (hash: spec, source, paused, since_ms, last_run_ms, last_error).
Wake-ups go to the pub/sub channel `<p>:wake:<q>` (channels are not keys).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")


@dataclass(frozen=True, slots=True)
class QueueKeys:
    """The keys of one queue, in the order every per-queue script receives them."""

    queue: str
    job_prefix: str
    pending: str
    scheduled: str
    running: str
    completed: str
    failed: str
    cancelled: str
    dedupe: str
    paused: str
    events: str
    seq: str
    front: str
    tpending: str
    tenant_prefix: str
    ready: str
    trunning: str
    limits: str
    rate: str
    trate_prefix: str
    turn: str
    served: str
    tstate_prefix: str
    waiting: str
    inbox_prefix: str
    parents: str
    fifo: str
    tindexed: str
    wake_channel: str

    def all(self) -> list[str]:
        """KEYS for a per-queue script (see `lua/_lib.lua`, which names them)."""
        return [
            self.job_prefix,
            self.pending,
            self.scheduled,
            self.running,
            self.completed,
            self.failed,
            self.cancelled,
            self.dedupe,
            self.paused,
            self.events,
            self.seq,
            self.front,
            self.tpending,
            self.tenant_prefix,
            self.ready,
            self.trunning,
            self.limits,
            self.rate,
            self.trate_prefix,
            self.turn,
            self.served,
            self.tstate_prefix,
            self.waiting,
            self.inbox_prefix,
            self.parents,
            self.fifo,
        ]

    def job(self, job_id: str) -> str:
        """The hash of one job of this queue."""
        return self.job_prefix + job_id

    def inbox(self, worker_id: str) -> str:
        """The list of jobs handed to one idle worker (see `lua/_pickup.lua`)."""
        return self.inbox_prefix + worker_id

    def bucket(self, tenant: str) -> str:
        """The zset of one tenant's pending jobs."""
        return self.tenant_prefix + tenant

    def tenant_state(self, state: str, tenant: str) -> str:
        """The zset of one tenant's jobs in `state` (not pending: see `bucket`).

        Unambiguous although tenants may hold ':': the state before it is a fixed word.
        """
        return f"{self.tstate_prefix}{state}:{tenant}"

    def by_state(self, state: str) -> str:
        """The zset that indexes jobs in `state`."""
        return {
            "pending": self.pending,
            "scheduled": self.scheduled,
            "running": self.running,
            "completed": self.completed,
            "failed": self.failed,
            "cancelled": self.cancelled,
            "waiting-children": self.parents,
        }[state]


class LruCache(Generic[K, V]):
    """A dict that keeps at most `cap` entries, dropping the least recently used.

    Per-queue caches are keyed by names that callers choose (a made-up job id names a
    queue too), so an unbounded dict would let any client grow the process without end.
    """

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self._entries: OrderedDict[K, V] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: object) -> bool:
        return key in self._entries

    def get(self, key: K) -> V | None:
        """The entry for `key` (now the most recently used), or None."""
        value = self._entries.get(key)
        if value is not None:
            self._entries.move_to_end(key)
        return value

    def put(self, key: K, value: V) -> None:
        """Store `value`, dropping the least recently used entry past the cap."""
        self._entries[key] = value
        self._entries.move_to_end(key)
        while len(self._entries) > self.cap:
            self._entries.popitem(last=False)


class KeyLayout:
    """Key names for one prefix. Builds them on every call and keeps nothing: the
    engine caches the layouts of the queues it works on (bounded, see `RedisBase._q`)."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.queues = f"{{{prefix}}}:queues"
        self.workers = f"{{{prefix}}}:workers"
        self.workers_info = f"{{{prefix}}}:workers:info"

    def queue(self, name: str) -> QueueKeys:
        """The keys of queue `name`."""
        tag = f"{{{self.prefix}:{name}}}"
        return QueueKeys(
            queue=name,
            job_prefix=f"{tag}:job:",
            pending=f"{tag}:pending",
            scheduled=f"{tag}:scheduled",
            running=f"{tag}:running",
            completed=f"{tag}:completed",
            failed=f"{tag}:failed",
            cancelled=f"{tag}:cancelled",
            dedupe=f"{tag}:dedupe",
            paused=f"{tag}:paused",
            events=f"{tag}:events",
            seq=f"{tag}:seq",
            front=f"{tag}:front",
            tpending=f"{tag}:tpending",
            tenant_prefix=f"{tag}:tp:",
            ready=f"{tag}:ready",
            trunning=f"{tag}:trunning",
            limits=f"{tag}:limits",
            rate=f"{tag}:rate",
            trate_prefix=f"{tag}:trate:",
            turn=f"{tag}:turn",
            served=f"{tag}:served",
            tstate_prefix=f"{tag}:ts:",
            waiting=f"{tag}:waiting",
            inbox_prefix=f"{tag}:inbox:",
            parents=f"{tag}:parents",
            fifo=f"{tag}:fifo",
            tindexed=f"{tag}:tindexed",
            wake_channel=f"{self.prefix}:wake:{name}",
        )

    def queue_of_channel(self, channel: str) -> str:
        """The queue a wake-up channel belongs to."""
        return channel[len(self.prefix) + len(":wake:") :]

    def lease(self, name: str) -> str:
        """The string holding lease `name` (value: its holder; expiry: the lease time)."""
        return f"{{{self.prefix}}}:lease:{name}"

    def schedule_names(self) -> str:
        """The set of every stored schedule's name."""
        return f"{{{self.prefix}}}:schedules"

    def schedule(self, name: str) -> str:
        """The hash of one stored schedule."""
        return f"{{{self.prefix}}}:schedule:{name}"
