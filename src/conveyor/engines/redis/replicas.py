"""Replica acknowledgement (`?replicas=N`): durability across a master's failover.

Redis replicates asynchronously: a master that dies can take its last acknowledged
writes with it, and the replica promoted in its place never had them. With
`?replicas=N` the writes that a caller is told are done (an enqueue; a worker's
outcomes, sent by `exchange`) are followed by `WAIT N <timeout>` on the same connection,
which returns once N replicas have everything that connection wrote:

    EVALSHA enqueue ...   -> job ids        (master has them)
    WAIT 1 1000           -> 1              (a replica has them too: acknowledge)
                          -> 0 after 1 s    -> NotReplicated (not claimed durable)

WAIT does not make the write synchronous: on a timeout the jobs exist on the master
and may still reach the replica. It tells the caller the truth about durability:

* an enqueue raises `NotReplicated` (the producer decides: retry, alert, give up);
* a worker's exchange logs a warning (at most every `WARN_EVERY_S`) and goes on. The
  same call claimed jobs, which are running under this worker's lease whatever the
  replicas did; raising would throw the claims away, and each would come back only
  when its lease expired, spending an attempt. An outcome that a failover then loses
  means the job runs again (at-least-once), never that it is lost.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

from ...errors import NotReplicated

# The scripts whose success a caller is told about and relies on: a producer's jobs and
# a worker's outcomes (a lost `complete` re-runs the job, a lost enqueue drops it).
ACKED_SCRIPTS = frozenset({"enqueue", "exchange"})
WARN_EVERY_S = 10.0

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReplicaAck:
    """How many replicas must confirm a write, and for how long to wait (ms)."""

    replicas: int
    timeout_ms: int
    _warned: list[float] = field(default_factory=lambda: [0.0], compare=False)

    @property
    def command(self) -> tuple[str, int, int]:
        return ("WAIT", self.replicas, self.timeout_ms)

    def check(self, reached: object, url: str, *, enqueue: bool) -> None:
        """Raise (an enqueue) or warn (outcomes) unless `reached` (WAIT's reply) is at
        least `replicas`.

        Raises:
            NotReplicated: fewer replicas confirmed an enqueue in time.
        """
        got = reached if isinstance(reached, int) else 0
        if got >= self.replicas:
            return
        if not enqueue:
            now = time.monotonic()
            if now - self._warned[0] >= WARN_EVERY_S:
                self._warned[0] = now
                log.warning(
                    "Redis at %s: worker outcomes reached %d of %d replica(s) within %d ms; "
                    "a failover now could run those jobs again",
                    url,
                    got,
                    self.replicas,
                    self.timeout_ms,
                )
            return
        raise NotReplicated(
            f"Redis at {url}: the write is on the master but only {got} of "
            f"{self.replicas} replica(s) confirmed it within {self.timeout_ms} ms "
            "(?replicas / ?replica_timeout in the URL); it may be lost if the master "
            "fails now. Retry (a dedupe key keeps a retried enqueue single), check "
            "the replicas (INFO replication), or raise replica_timeout"
        )
