"""The hot-path lane on Redis Cluster: one pipelined `Lane` per master, routed by slot.

Every hot-path command names its keys (EVALSHA's KEYS, SADD's key), and all keys of one
queue share one hash tag, so each command goes whole to the master that owns its slot:

    call_many([enqueue q1, enqueue q2, SADD registry])
        slot(q1) -> master A ─┐  one write per master, sent concurrently; replies are
        slot(q2) -> master B ─┤  put back in input order
        slot({p}) -> master A ┘

The slot map is redis-py's (`RedisCluster.nodes_manager`). Redirections are handled
here, per command, without failing the call:

```
MOVED slot host:port   the slot lives elsewhere now (resharding done, failover): send
                       the command there and refresh the slot map before the next call
ASK slot host:port     the slot is being migrated and this key is already on the
                       target: send ASKING + the command there, once
TRYAGAIN               a multi-key command during a migration: wait and send again.
                       Every queue script declares key prefixes that never exist as
                       keys (the job prefix), so while its slot migrates Redis always
                       finds a declared key missing and answers this: a script never
                       runs on one side with some of its queue's keys on the other
CLUSTERDOWN            no master serves the slot (a failover in progress): likewise
```

up to `MAX_ATTEMPTS` sends with backoff; what is still refused then is returned as the
error reply (the engine turns it into `EngineUnavailable`: retry with backoff). A master
that cannot be reached fails its commands with `ConnectionError` (outcome unknown, as
with one server) and makes the next call refresh the slot map, which is how a promoted
replica is found.

`WAIT n timeout` (replicas.py) is appended to each master's write, on the same
connection, so it covers exactly the commands that master just ran.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any
from urllib.parse import quote

from redis.asyncio.cluster import RedisCluster
from redis.crc import key_slot
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError, ResponseError

from .errors import code_of
from .lane import Lane

MAX_ATTEMPTS = 8  # sends per command before a redirection or TRYAGAIN is given back
_BACKOFF_S = (0.02, 0.05, 0.1, 0.2, 0.4, 0.8, 1.0)
_RETRY = frozenset({"TRYAGAIN", "CLUSTERDOWN", "MOVED", "ASK"})

Address = tuple[str, int]


def command_slot(command: Sequence[Any]) -> int:
    """The hash slot of a command's first key (EVALSHA/EVAL: KEYS[1]; else argv[1])."""
    name = str(command[0]).upper()
    key = command[3] if name in ("EVALSHA", "EVAL") else command[1]
    return key_slot(key.encode() if isinstance(key, str) else key)


def _target(error: ResponseError) -> Address:
    # "MOVED 3999 127.0.0.1:6381" (the code is part of the lane's text)
    address = str(error).split()[2]
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


class ClusterLane:
    """Hot-path calls on a cluster (same interface as `Lane`, plus `wait`).

    Args:
        client: the engine's redis-py cluster client, whose slot map routes calls.
        username / password: AUTH for every master.
        connect_timeout / timeout: as for `Lane`.
    """

    def __init__(
        self,
        client: RedisCluster,
        *,
        username: str | None,
        password: str | None,
        connect_timeout: float,
        timeout: float,
    ) -> None:
        self._client = client
        self._auth = (
            f"{quote(username or '', safe='')}:{quote(password, safe='')}@" if password else ""
        )
        self._connect_timeout = connect_timeout
        self._timeout = timeout
        self._lanes: dict[Address, Lane] = {}
        self._stale = False
        self._refreshing: asyncio.Task[None] | None = None

    def _lane(self, address: Address) -> Lane:
        lane = self._lanes.get(address)
        if lane is None:
            host, port = address
            host = f"[{host}]" if ":" in host else host
            lane = self._lanes[address] = Lane(
                f"redis://{self._auth}{host}:{port}/0",
                connect_timeout=self._connect_timeout,
                timeout=self._timeout,
            )
        return lane

    def _owner(self, command: Sequence[Any]) -> Address:
        node = self._client.nodes_manager.get_node_from_slot(command_slot(command))
        return node.host, int(node.port)

    async def _refresh(self) -> None:
        """Re-read the slot map (CLUSTER SLOTS via redis-py), one refresh at a time."""
        if self._refreshing is None or self._refreshing.done():
            self._stale = False
            self._refreshing = asyncio.ensure_future(self._client.nodes_manager.initialize())
        try:
            await asyncio.shield(self._refreshing)
        except RedisError:
            self._stale = True  # no node answered: try again on the next call

    async def call(self, *command: Any) -> Any:
        """One command; an error reply is raised as `ResponseError`."""
        reply = (await self.call_many([command]))[0]
        if isinstance(reply, ResponseError):
            raise reply
        return reply

    async def call_many(
        self, commands: Sequence[tuple[Any, ...]], *, wait: tuple[int, int] | None = None
    ) -> list[Any]:
        """Send commands, each to the master of its slot; replies in input order (an
        error reply in its place, not raised).

        Args:
            commands: keyed commands (see `command_slot`).
            wait: `(replicas, timeout_ms)`: each master's write ends with WAIT; the
                fewest replicas any master reached is returned as the last reply.

        Raises:
            redis.exceptions.ConnectionError: a master could not be reached or died
                with calls in flight (their outcome is unknown).
        """
        if self._stale:
            await self._refresh()
        replies: list[Any] = [None] * len(commands)
        todo = list(range(len(commands)))
        via: dict[int, tuple[Address, bool]] = {}  # redirected: (address, ASKING first)
        acked: int | None = None
        for attempt in range(MAX_ATTEMPTS):
            groups: dict[Address, list[int]] = {}
            for i in todo:
                address = via[i][0] if i in via else self._owner(commands[i])
                groups.setdefault(address, []).append(i)
            results = await asyncio.gather(
                *(self._send(a, ix, commands, via, wait) for a, ix in groups.items()),
                return_exceptions=True,
            )
            todo, backoff = [], False
            for (_, indexes), result in zip(groups.items(), results, strict=True):
                if isinstance(result, BaseException):
                    if isinstance(result, RedisConnectionError | OSError):
                        self._stale = True  # a master died: find its replacement
                    raise result
                got, replicas = result
                if replicas is not None:
                    acked = replicas if acked is None else min(acked, replicas)
                for i, reply in zip(indexes, got, strict=True):
                    code = code_of(reply) if isinstance(reply, ResponseError) else None
                    if code not in _RETRY or attempt == MAX_ATTEMPTS - 1:
                        replies[i] = reply
                        via.pop(i, None)
                        continue
                    todo.append(i)
                    if code in ("MOVED", "ASK"):
                        via[i] = (_target(reply), code == "ASK")
                        self._stale = self._stale or code == "MOVED"
                    else:
                        via.pop(i, None)
                        backoff = True
                        self._stale = True
            if not todo:
                break
            if backoff:
                await asyncio.sleep(_BACKOFF_S[min(attempt, len(_BACKOFF_S) - 1)])
                await self._refresh()
        if wait is not None:
            replies.append(acked if acked is not None else wait[0])
        return replies

    async def _send(
        self,
        address: Address,
        indexes: list[int],
        commands: Sequence[tuple[Any, ...]],
        via: dict[int, tuple[Address, bool]],
        wait: tuple[int, int] | None,
    ) -> tuple[list[Any], int | None]:
        batch: list[tuple[Any, ...]] = []
        asked: list[bool] = []
        for i in indexes:
            asking = i in via and via[i][1]
            if asking:
                batch.append(("ASKING",))
            batch.append(commands[i])
            asked.append(asking)
        if wait is not None:
            batch.append(("WAIT", *wait))
        got = await self._lane(address).call_many(batch)
        replicas: int | None = None
        if wait is not None:
            last = got.pop()
            replicas = last if isinstance(last, int) else 0
        out: list[Any] = []
        it = iter(got)
        for asking in asked:
            if asking:
                next(it)  # ASKING's +OK
            out.append(next(it))
        return out, replicas

    def close(self) -> None:
        for lane in self._lanes.values():
            lane.close()
        self._lanes.clear()
