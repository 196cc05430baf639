"""Bounded bulk writes: how a big `enqueue` is cut into script calls of bounded length.

A Lua script blocks Redis for as long as it runs, so no call carries more than
`ENQUEUE_CHUNK` jobs of a queue; see `RedisFlow.enqueue` (flow.py) for what that promises
across chunks.
"""

from __future__ import annotations

from typing import Final

# Jobs of one queue per enqueue script call. Measured on a private redis-server: about
# 11-13 us of Redis CPU per job, so a 1,000-job call held Redis for 11+ ms (every worker's
# claim and heartbeat waited); 250 keeps a call near 3 ms, and the extra round trips cost
# a 10,000-job enqueue_many about 30 x 0.2 ms.
ENQUEUE_CHUNK: Final = 250


def bulk_waves(groups: dict[str, list[int]], size: int) -> list[list[tuple[str, list[int]]]]:
    """Split each queue's job indexes into chunks of at most `size`; wave k holds chunk k
    of every queue that has one (see `RedisFlow.enqueue`).

    >>> bulk_waves({"a": [0, 1, 2], "b": [3]}, 2)
    [[('a', [0, 1]), ('b', [3])], [('a', [2])]]
    """
    waves: list[list[tuple[str, list[int]]]] = []
    for queue, indexes in groups.items():
        for k, start in enumerate(range(0, len(indexes), size)):
            if k == len(waves):
                waves.append([])
            waves[k].append((queue, indexes[start : start + size]))
    return waves
