"""The hot-path lane on Sentinel: a pipelined `Lane` to the master the sentinels name.

redis-py's Sentinel pool asks the sentinels for the master on every new connection, which
is right for reads and operator calls but puts the hot path back on redis-py's per-command
cost (see lane.py). This keeps one `Lane` to the current master and replaces it when that
master goes away:

    call ──▶ Lane(master A) ──▶ ConnectionError (A died)       ─┐ drop the lane; the
                             └─▶ READONLY (A demoted to replica) ─┘ next call asks the
                                                                   sentinels again -> B

The call that met the failure raises (`EngineUnavailable`: its outcome is unknown, as on
one server); callers retry with backoff, by which time the sentinels name the new master.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any
from urllib.parse import quote

from redis.asyncio.sentinel import Sentinel
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

from .errors import code_of
from .lane import Lane


class SentinelLane:
    """Same interface as `Lane`; the master's address comes from the sentinels."""

    def __init__(
        self,
        sentinel: Sentinel,
        master: str,
        *,
        db: int,
        username: str | None,
        password: str | None,
        connect_timeout: float,
        timeout: float,
    ) -> None:
        self._sentinel = sentinel
        self._master = master
        self._db = db
        self._auth = (
            f"{quote(username or '', safe='')}:{quote(password, safe='')}@" if password else ""
        )
        self._connect_timeout = connect_timeout
        self._timeout = timeout
        self._lane: Lane | None = None

    async def _current(self) -> Lane:
        if self._lane is None:
            # Raises MasterNotFoundError (a ConnectionError) when no sentinel names one.
            host, port = await self._sentinel.discover_master(self._master)
            host = f"[{host}]" if ":" in str(host) else host
            self._lane = Lane(
                f"redis://{self._auth}{host}:{port}/{self._db}",
                connect_timeout=self._connect_timeout,
                timeout=self._timeout,
            )
        return self._lane

    def _drop(self, lane: Lane) -> None:
        if self._lane is lane:
            self._lane = None
        lane.close()

    async def call(self, *command: Any) -> Any:
        """One command; an error reply is raised as `ResponseError`."""
        lane = await self._current()
        try:
            return await lane.call(*command)
        except RedisConnectionError:
            self._drop(lane)
            raise
        except ResponseError as exc:
            if code_of(exc) == "READONLY":
                self._drop(lane)
            raise

    async def call_many(self, commands: Sequence[tuple[Any, ...]]) -> list[Any]:
        """Commands in one write; replies in order, error replies in place."""
        lane = await self._current()
        try:
            replies = await lane.call_many(commands)
        except RedisConnectionError:
            self._drop(lane)
            raise
        if any(isinstance(r, ResponseError) and code_of(r) == "READONLY" for r in replies):
            self._drop(lane)
        return replies

    def close(self) -> None:
        if self._lane is not None:
            self._lane.close()
            self._lane = None
