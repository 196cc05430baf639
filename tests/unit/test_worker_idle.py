"""What an idle worker asks of its engine (issue 15, point 8: a worker watching 50 empty
queues costs Redis at most 100 commands/s). Memory engine, real clock, no sleeps guessed:
the tests wait on counted engine calls.

* The claim loop keeps two exchanges in flight while claims find jobs, but a claim that
  found nothing is followed by one exchange at a time: an idle worker's periodic look at
  its queues is one script call per queue, not two.
* Queue depths are sampled for the health server's metrics only when it runs, and on
  many queues each less often.
"""

from __future__ import annotations

import asyncio
from typing import Any

from conveyor import Conveyor, Job, Worker
from conveyor.testing import eventually
from conveyor.worker.runtime import SAMPLE_EVERY_S, SAMPLED_QUEUES_PER_S, sample_interval


class ExchangeSpy:
    """Counts exchange calls and the most in flight at once, on the app's engine."""

    def __init__(self, app: Conveyor) -> None:
        self.calls = 0
        self.in_flight = 0
        self.most = 0
        engine: Any = app.engine
        original = engine.exchange

        async def exchange(*args: Any, **kwargs: Any) -> Any:
            self.calls += 1
            self.in_flight += 1
            self.most = max(self.most, self.in_flight)
            try:
                await asyncio.sleep(0.01)  # a round trip, so overlapping calls can overlap
                return await original(*args, **kwargs)
            finally:
                self.in_flight -= 1

        engine.exchange = exchange


def _app() -> Conveyor:
    app = Conveyor("memory://")

    @app.task("noop", queue="q")
    async def noop(job: Job) -> None:
        return None

    return app


async def test_an_idle_worker_looks_at_empty_queues_one_exchange_at_a_time() -> None:
    app = _app()
    await app.connect()
    spy = ExchangeSpy(app)
    counted: list[str] = []
    engine: Any = app.engine
    counts = engine.counts

    async def counting(queue: str) -> Any:
        counted.append(queue)
        return await counts(queue)

    engine.counts = counting
    # lease 0.6 s: the idle wait is its third (0.2 s), so several idle looks happen soon
    worker = Worker(app, queues=["q"], concurrency=50, lease_timeout=0.6, health_port=0)
    running = asyncio.create_task(worker.run())

    async def looked_again() -> bool:
        return spy.calls >= 4

    await eventually(looked_again, timeout=10, message="the idle worker looked again")
    worker.stop()
    await asyncio.wait_for(running, 10)
    assert spy.most == 1, "an idle worker sent two exchanges at once"
    assert counted == [], "depths sampled with no health server to serve them"


async def test_a_backlog_still_gets_two_exchanges_in_flight() -> None:
    """The control: once a claim finds jobs, the pipeline of two is back."""
    app = _app()
    await app.connect()
    await app.enqueue_many([{"task": "noop"} for _ in range(2_000)])
    spy = ExchangeSpy(app)
    await asyncio.wait_for(Worker(app, queues=["q"], concurrency=50, burst=True).run(), 30)
    assert (await app.counts("q")).completed == 2_000
    assert spy.most == 2


def test_depth_sampling_is_bounded_in_queues_per_second() -> None:
    """With a health server, depths are sampled every 5 s, but a worker on many queues
    samples each less often: at most SAMPLED_QUEUES_PER_S counts calls per second on
    average (50 queues: every 25 s, not 50 counts scripts every 5 s)."""
    assert sample_interval(1) == SAMPLE_EVERY_S
    assert sample_interval(10) == SAMPLE_EVERY_S
    for queues in (11, 50, 500):
        assert queues / sample_interval(queues) <= SAMPLED_QUEUES_PER_S
    assert sample_interval(50) == 25.0
