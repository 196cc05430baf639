"""Sampling queue depths for the health server's /metrics and /health/detailed.

Only a worker with a health server samples (leases.py), and it spreads the cost over
time: one sample of a queue is a counts script of ~14 Redis commands.
"""

from __future__ import annotations

from ..engines import Engine, QueueCounts
from ..partitions import Rotation, merge_counts

SAMPLE_EVERY_S = 5.0  # queue-depth sampling for metrics and /health/detailed
# ... and at most this many queues' depths per second on average: one sample is a counts
# script of ~14 Redis commands, so 50 queues every 5 s was 140 of an idle worker's
# commands/s (issue 15, point 8). A worker on many queues refreshes each less often.
SAMPLED_QUEUES_PER_S = 2.0


def sample_interval(queues: int) -> float:
    """Seconds between two samplings of the depths of a worker's `queues` queues."""
    return max(SAMPLE_EVERY_S, queues / SAMPLED_QUEUES_PER_S)


async def sample_depths(engine: Engine, rotation: Rotation) -> list[QueueCounts]:
    """The counts of each of the worker's queues, its partitions merged into one."""
    return [
        merge_counts(queue, [await engine.counts(name) for name in names])
        for queue, names in rotation.groups
    ]
