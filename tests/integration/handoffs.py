"""Helpers shared by the one-hop pickup tests of the engines that hand jobs to idle
workers (`engines.base.HandsOff`: test_handoffs.py, test_redis_pickup.py,
test_postgres_pickup.py)."""

from __future__ import annotations

from conveyor.engines import Engine
from conveyor.engines.base import HandsOff, Notifier
from conveyor.job import Job, NewJob, new_job_id
from conveyor.testing import eventually


def new(queue: str = "q", **kwargs: object) -> NewJob:
    """A job for queue `queue` (fields overridable)."""
    fields: dict[str, object] = {"task": "t", "payload_json": "{}", "max_attempts": 3}
    fields.update(kwargs)
    return NewJob(id=new_job_id(queue), queue=queue, **fields)  # type: ignore[arg-type]


async def handed(engine: HandsOff, worker_id: str = "w1", n: int = 1) -> list[Job]:
    """Wait like an idle worker does, then take what was handed (at least `n` jobs)."""
    assert isinstance(engine, Notifier)
    jobs: list[Job] = []

    async def arrived() -> bool:
        await engine.wait_for_jobs(["q"], 0.2)
        jobs.extend(engine.take_handed(worker_id))
        return len(jobs) >= n

    await eventually(arrived, timeout=5, message="a handed job")
    return jobs


async def go_idle(
    engine: Engine, worker_id: str = "w1", lease_ms: int = 30_000, limit: int = 5
) -> None:
    """An exchange that finds nothing (it registers the worker where it may)."""
    got = await engine.exchange(
        [], queues=["q"], limit=limit, worker_id=worker_id, lease_ms=lease_ms
    )
    assert got.jobs == []
