"""Partitioned queues: one logical queue stored as N physical queues (issue 17, point 3).

On Redis Cluster every key of a queue shares one hash slot, so one queue lives on one
master and can never use more than that master's CPU. A queue declared with N
partitions (`app.limits("mail", partitions=8)` or `@app.task(queue="mail",
partitions=8)`) is stored as N ordinary queues, `mail~0of8` ... `mail~7of8`, whose
hash tags differ and so spread over the cluster's slots. Engines and the lifecycle do
not know: each partition is a queue like any other, and every job rule holds inside it.
This module is the whole mapping, decided once above storage:

* **Names.** `partition_queue("mail", 3, 8) == "mail~3of8"`. `~` is not allowed in a
  queue name (`conveyor.job.QUEUE_NAME`), so no user queue can collide with a
  partition, and the count in the name lets any process that sees one partition (the
  CLI with only `--url`) know the whole layout without the application's code.
* **Routing** (`route_index`): by a stable hash of the tenant, else of the dedupe key,
  else round-robin. A tenant's jobs therefore always share one partition, so
  per-tenant fairness, `tenant_concurrency` and `tenant_rate` hold exactly.
* **Dedupe.** The dedupe check is the engine's, inside one partition, so two jobs
  that must collide have to meet in the same partition. Jobs without a tenant are
  placed by their dedupe key: the key is unique across the whole queue. Jobs with a
  tenant are placed by the tenant, so their key is stored scoped to it
  (`tenant_scoped_key`, the form the HTTP API already uses for tenant callers): it is
  unique per (queue, tenant), and two tenants never meet on a key by the accident of
  sharing a partition.
* **Claiming** (`Rotation`): a worker visits the partitions of a queue starting one
  further on each exchange, so no partition starves while another has work.
* **Queue-wide limits** (`split_limits`): `concurrency` and `rate` are split across
  partitions (partition i gets `total // N`, plus one for the first `total % N`), so
  their sum is exactly the declared total but an idle partition's share is not lent to
  a busy one. Both must be at least N. Per-tenant limits are copied unchanged.
* **Changing N** (`check_layout`): refused with `PartitionsChanged` while any other
  layout of the queue still holds live (scheduled, pending or running) jobs; finished
  jobs of an old layout stay visible under the queue and can be cleaned or purged.
"""

from __future__ import annotations

import itertools
import re
import zlib
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

from .engines.values import QueueCounts
from .errors import ConfigError
from .limits import QueueLimits

if TYPE_CHECKING:
    from .engines import Engine

MAX_PARTITIONS = 1024
_PHYSICAL = re.compile(r"^(?P<queue>[A-Za-z0-9_.\-]{1,64})~(?P<index>\d+)of(?P<count>\d+)\Z")


class PartitionsChanged(ConfigError):
    """A queue's declared partition count differs from the layout its live jobs are in."""


def check_partitions(value: object) -> int:
    """Return a partition count (an integer from 1 to `MAX_PARTITIONS`).

    Raises:
        ConfigError: anything else.
    """
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_PARTITIONS:
        raise ConfigError(
            f"partitions={value!r} is invalid: use an integer from 1 to {MAX_PARTITIONS} "
            "(1: not partitioned)"
        )
    return value


def partition_queue(queue: str, index: int, count: int) -> str:
    """The physical queue of partition `index` (0-based) of `count` of `queue`."""
    return f"{queue}~{index}of{count}"


def layout(queue: str, count: int) -> list[str]:
    """Every physical queue of `queue` stored in `count` partitions, in order (the
    queue itself when `count` is 1)."""
    if count == 1:
        return [queue]
    return [partition_queue(queue, i, count) for i in range(count)]


def parse(name: str) -> tuple[str, int, int] | None:
    """(queue, index, count) of a physical partition name; None for an ordinary queue."""
    if "~" not in name:
        return None
    match = _PHYSICAL.match(name)
    if match is None:
        return None
    index, count = int(match["index"]), int(match["count"])
    if not 0 <= index < count:
        return None
    return match["queue"], index, count


def logical(name: str) -> str:
    """The queue operators see for a physical queue name (`mail~3of8` -> `mail`)."""
    found = parse(name)
    return name if found is None else found[0]


def route_index(count: int, tenant: str | None, dedupe_key: str | None, turn: int) -> int:
    """The partition a job goes to: a stable hash (CRC-32, the same in every process
    and release) of the tenant, else of the dedupe key, else `turn` (round-robin)."""
    key = tenant if tenant is not None else dedupe_key
    if key is None:
        return turn % count
    return zlib.crc32(key.encode()) % count


def tenant_scoped_key(tenant: str, key: str) -> str:
    """The dedupe key stored for a tenant's job on a partitioned queue:
    `tenant:<len(tenant)>:<tenant>:<key>` (the length says where the tenant ends)."""
    return f"tenant:{len(tenant)}:{tenant}:{key}"


def fixed_home(queue: str, tenant: str | None, dedupe_key: str | None, key: str) -> str:
    """The partition of a job routed round-robin, moved to one `key` decides: a
    scheduled occurrence must land in the same partition (under the same fixed id) in
    every scheduler process, or a takeover would enqueue it twice."""
    found = parse(queue)
    if found is None or tenant is not None or dedupe_key is not None:
        return queue
    name, _, count = found
    return partition_queue(name, route_index(count, None, key, 0), count)


def group(names: Iterable[str]) -> dict[str, list[str]]:
    """Physical queue names grouped by the queue operators see, each group in `ordered`
    order: a queue's partitions of every layout present, and the queue itself."""
    out: dict[str, list[str]] = {}
    for name in names:
        out.setdefault(logical(name), []).append(name)
    return {queue: ordered(found) for queue, found in out.items()}


def ordered(names: Iterable[str]) -> list[str]:
    """Physical names in a stable order: the plain queue first, then by count, index."""

    def key(name: str) -> tuple[int, int]:
        found = parse(name)
        return (0, 0) if found is None else (found[2], found[1])

    return sorted(set(names), key=key)


def complete(queue: str, found: Iterable[str], declared: int | None) -> list[str]:
    """Every physical queue of `queue`: the layout of each partition count seen in
    `found` (one partition seen means all of its siblings exist, perhaps empty) and of
    `declared`, plus any plain queue found."""
    names = set(found)
    counts = {c for name in names if (p := parse(name)) is not None for c in [p[2]]}
    if declared is not None:
        counts.add(declared)
    for count in counts:
        names.update(layout(queue, count))
    return ordered(names)


def split_limits(limits: QueueLimits, count: int) -> list[QueueLimits]:
    """The limits each of `count` partitions stores so that the queue-wide totals hold.

    Raises:
        ConfigError: `concurrency` or `rate` is below `count` (a partition would get 0).
    """
    if count == 1:
        return [limits]
    for name in ("concurrency", "rate"):
        total = getattr(limits, name)
        if total is not None and total < count:
            raise ConfigError(
                f"{name}={total} is below the queue's {count} partitions: each partition "
                f"enforces a share of it and needs at least 1; raise {name} to {count} or "
                "more, or use fewer partitions"
            )

    def share(total: int | None, index: int) -> int | None:
        if total is None:
            return None
        return total // count + (1 if index < total % count else 0)

    return [
        QueueLimits(
            share(limits.concurrency, i),
            limits.tenant_concurrency,
            share(limits.rate, i),
            limits.rate_window_ms,
            limits.tenant_rate,
            limits.tenant_rate_window_ms,
        )
        for i in range(count)
    ]


def join_limits(parts: Sequence[QueueLimits]) -> QueueLimits:
    """The queue-wide limits partitions store (the inverse of `split_limits`)."""
    if len(parts) == 1:
        return parts[0]
    first = parts[0]

    def total(name: str) -> int | None:
        values = [getattr(p, name) for p in parts]
        return None if any(v is None for v in values) else sum(values)

    return QueueLimits(
        total("concurrency"),
        first.tenant_concurrency,
        total("rate"),
        first.rate_window_ms,
        first.tenant_rate,
        first.tenant_rate_window_ms,
    )


def merge_counts(queue: str, parts: Sequence[QueueCounts]) -> QueueCounts:
    """A queue's depths from its partitions' (one part: returned as it is)."""
    if len(parts) == 1:
        return parts[0]
    oldest = [c.oldest_pending_ms for c in parts if c.oldest_pending_ms is not None]
    return QueueCounts(
        queue=queue,
        scheduled=sum(c.scheduled for c in parts),
        pending=sum(c.pending for c in parts),
        running=sum(c.running for c in parts),
        completed=sum(c.completed for c in parts),
        failed=sum(c.failed for c in parts),
        cancelled=sum(c.cancelled for c in parts),
        # Paused only when every partition is: `pause` sets them all.
        paused=all(c.paused for c in parts),
        oldest_pending_ms=min(oldest) if oldest else None,
        completed_1m=sum(c.completed_1m for c in parts),
        failed_1m=sum(c.failed_1m for c in parts),
    )


class PartitionMap:
    """The partition counts an app declares in code, and its round-robin turn."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}
        self._turn = itertools.count()

    def declare(self, queue: str, count: int) -> None:
        """Record that `queue` has `count` partitions.

        Raises:
            ConfigError: an invalid count, or another count was declared for `queue`.
        """
        check_partitions(count)
        known = self.counts.get(queue)
        if known is not None and known != count:
            raise ConfigError(
                f"queue {queue!r} is declared with partitions={known} and partitions={count}: "
                "declare one count (app.limits or the tasks of that queue)"
            )
        self.counts[queue] = count

    def count(self, queue: str) -> int:
        """Partitions of `queue` (1 when it is not partitioned)."""
        return self.counts.get(queue, 1)

    def route(
        self, queue: str, tenant: str | None, dedupe_key: str | None
    ) -> tuple[str, str | None]:
        """The physical queue a new job of `queue` goes to (see `route_index`), and the
        dedupe key it is stored with (scoped to the tenant on a partitioned queue)."""
        count = self.counts.get(queue, 1)
        if count == 1:
            return queue, dedupe_key
        turn = next(self._turn) if tenant is None and dedupe_key is None else 0
        home = partition_queue(queue, route_index(count, tenant, dedupe_key, turn), count)
        if tenant is not None and dedupe_key is not None:
            dedupe_key = tenant_scoped_key(tenant, dedupe_key)
        return home, dedupe_key

    def physical(self, queues: Iterable[str]) -> list[str]:
        """Every physical queue of `queues` in their declared layouts, in order."""
        return [name for queue in queues for name in layout(queue, self.count(queue))]


class Rotation:
    """The order a worker claims its queues in: queues keep their priority order, and
    the partitions of a partitioned queue are visited starting one further each turn.

    The engine's exchange fills a claim from the queues in the order given, so a fixed
    order would let the first partition of a busy queue take every claim while the
    last one waits; starting one further each turn gives each partition the first pick
    once every N turns. A turn lasts `stick` claiming exchanges: an exchange reports the
    outcomes of the jobs the previous ones claimed in the same call as its claim only
    when they come from the partition it claims from (one script call per partition on
    Redis), so moving on at every exchange would cost a call per exchange more.
    """

    def __init__(self, queues: Sequence[str], partitions: PartitionMap, *, stick: int = 4) -> None:
        self.stick = stick
        # Each queue with its stored queues, in priority order.
        self.groups = [(q, layout(q, partitions.count(q))) for q in dict.fromkeys(queues)]
        self._groups = [names for _, names in self.groups]
        self.all = tuple(name for names in self._groups for name in names)
        self._rotating = any(len(names) > 1 for names in self._groups)
        self._turn = 0

    def next(self, claiming: bool = True) -> tuple[str, ...]:
        """The physical queues of this exchange; the turn moves on only when it claims
        (an exchange that only reports outcomes would otherwise skip a partition)."""
        if not self._rotating or not claiming:
            return self.all
        turn = self._turn // self.stick
        self._turn += 1
        out: list[str] = []
        for names in self._groups:
            k = turn % len(names)
            out.extend(names[k:] + names[:k])
        return tuple(out)


async def discover(engine: Engine, queue: str) -> int | None:
    """The partition count `queue` is stored with, as the engine's queue names tell: a
    process without the app's code (`conveyor enqueue --queue mail --url ...`) routes by
    it. None: no partition of it is known, or several layouts are (a change is under
    way; the declared count decides then)."""
    counts = {p[2] for name in await engine.queue_names() if (p := parse(name)) and p[0] == queue}
    return counts.pop() if len(counts) == 1 else None


async def check_layout(engine: Engine, queue: str, count: int) -> None:
    """Refuse to use `queue` in `count` partitions while another layout of it holds
    live jobs (they would be left behind, and dedupe would not see them).

    Raises:
        PartitionsChanged: names the live jobs' layout and how to move on.
        EngineUnavailable: the engine cannot be reached.
    """
    wanted = set(layout(queue, count))
    others = [
        name for name in await engine.queue_names() if logical(name) == queue and name not in wanted
    ]
    live = 0
    for name in others:
        c = await engine.counts(name)
        live += c.scheduled + c.pending + c.running
    if live:
        layouts = sorted({1 if (p := parse(n)) is None else p[2] for n in others})
        was = " or ".join(str(n) for n in layouts)
        raise PartitionsChanged(
            f"queue {queue!r} holds {live} live job(s) stored in {was} partition(s), but this "
            f"app declares partitions={count}: keep partitions={was} until they are done "
            f"(`conveyor drain {queue}` waits for that; `conveyor purge {queue}` drops them), "
            "then change it"
        )
