"""Engines behind one protocol, chosen by URL scheme.

`open_engine` imports an engine only when its scheme is used, so a producer that
talks to SQLite never imports redis-py.
"""

from __future__ import annotations

from ..clock import Clock
from ..errors import ConfigError
from .base import (
    Coordination,
    Engine,
    Event,
    Exchange,
    FlowLinks,
    FlowNode,
    Flows,
    HandsOff,
    JobFlow,
    JobPage,
    Notifier,
    Outcome,
    QueueCounts,
    ReadModel,
)

__all__ = [
    "Coordination",
    "Engine",
    "Event",
    "Exchange",
    "FlowLinks",
    "FlowNode",
    "Flows",
    "HandsOff",
    "JobFlow",
    "JobPage",
    "Notifier",
    "Outcome",
    "QueueCounts",
    "ReadModel",
    "open_engine",
]

REDIS_SCHEMES = (
    "redis://",
    "rediss://",
    "redis+cluster://",
    "rediss+cluster://",
    "redis+sentinel://",
)
SCHEMES = (*REDIS_SCHEMES, "sqlite://", "memory://", "postgresql://", "postgres://")


def open_engine(url: str, *, clock: Clock | None = None) -> Engine:
    """Build (not yet connect) the engine for `url`.

    Args:
        url: the engine URL; its scheme picks the engine.
        clock: for tests: a `FakeClock` that decides due times and lease deadlines
            (on Redis it replaces Redis TIME in the scripts); None is the real clock.

    Raises:
        ConfigError: the URL's scheme is not one Conveyor knows.
    """
    if url.startswith(REDIS_SCHEMES):
        from .redis import RedisEngine

        return RedisEngine(url, clock=clock)
    if url.startswith(("sqlite://", "memory://")):
        # memory:// is the SQLite engine on a private in-memory database (not durable).
        from .sqlite import SqliteEngine

        return SqliteEngine(url, clock=clock)
    if url.startswith(("postgresql://", "postgres://")):
        from .postgres import PostgresEngine

        return PostgresEngine(url, clock=clock)
    raise ConfigError(
        f"engine URL {url!r} is not supported: use one of redis://host:6379/0, "
        "rediss://..., redis+cluster://host:7000,host:7001/, "
        "redis+sentinel://host:26379/MASTER_NAME/0, sqlite:///path/to/conveyor.db, "
        "postgresql://user@host:5432/dbname?schema=conveyor or memory://"
    )
