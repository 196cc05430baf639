"""The engine contract suite's one fixture set: every test here runs on every engine.

`engine_url` (tests/conftest.py) parametrises each test over memory, SQLite, Redis,
Redis Cluster (3 masters + 3 replicas), Redis Sentinel (master, replica, 3 sentinels;
both in tests/redis_topologies.py) and Postgres.
A rule that one engine breaks today is marked, on that engine only, with
`@pytest.mark.diverges("redis", reason=...)`: the case becomes a strict xfail, so it
turns into a failure the moment the engine is fixed and the mark must go.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from conveyor import Conveyor
from conveyor.clock import FakeClock
from conveyor.engines import Engine, open_engine

ENGINES = ("memory", "sqlite", "redis", "redis+cluster", "redis+sentinel", "postgresql")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "diverges(*engines, reason): the named engines break this contract rule today "
        "(strict xfail on those engines only)",
    )


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Turn `diverges(...)` into a strict xfail on the named engines' cases only."""
    for item in items:
        callspec = getattr(item, "callspec", None)
        kind = callspec.params.get("engine_url") if callspec is not None else None
        for mark in item.iter_markers("diverges"):
            unknown = set(mark.args) - set(ENGINES)
            if unknown or "reason" not in mark.kwargs:
                raise pytest.UsageError(
                    f"{item.nodeid}: diverges() takes engines from {ENGINES} and reason=..."
                )
            if kind in mark.args:
                reason = f"divergence: {mark.kwargs['reason']}"
                item.add_marker(pytest.mark.xfail(strict=True, reason=reason))


@pytest.fixture
async def engine(engine_url: str) -> AsyncIterator[Engine]:
    """The engine under test, connected."""
    eng = open_engine(engine_url)
    await eng.connect()
    yield eng
    await eng.close()


@pytest.fixture
async def peer(engine_url: str, engine: Engine) -> AsyncIterator[Engine]:
    """A second engine on the same storage: another process, as far as storage can tell.

    `memory://` is private to its engine object, so there the peer is the engine itself.
    """
    if engine_url.startswith("memory://"):
        yield engine
        return
    other = open_engine(engine_url)
    await other.connect()
    yield other
    await other.close()


@pytest.fixture
def clock() -> FakeClock:
    """A fake clock; on Redis it replaces `TIME` in the scripts (tests only)."""
    return FakeClock()


@pytest.fixture
async def clocked(engine_url: str, clock: FakeClock) -> AsyncIterator[Engine]:
    """The engine under test, deciding time by `clock`."""
    eng = open_engine(engine_url, clock=clock)
    await eng.connect()
    yield eng
    await eng.close()


@pytest.fixture
def app(engine_url: str) -> Conveyor:
    """An app with task "t" on queue "q", used to build jobs (`app.build`)."""
    app = Conveyor(engine_url)

    @app.task("t", queue="q", max_attempts=3)
    async def t(job: object) -> None:  # never run here: the contract drives engines directly
        return None

    return app
