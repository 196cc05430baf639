"""Bounded bulk writes: how a big `enqueue` is cut into script calls of bounded length.

A Lua script blocks Redis for as long as it runs, so no call carries more than
`lifecycle.BULK_BATCH` jobs of a queue (a few ms); see `RedisFlow.enqueue` (flow.py) for
what that promises across chunks.
"""

from __future__ import annotations


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
