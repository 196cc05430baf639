"""The engine contract, transitions: every engine applies `conveyor.lifecycle.TRANSITIONS`.

One table-driven test per outcome (and per delay, where the outcome takes one) checks
each flag of the transition on the stored job: target state, error appended, attempt
given back, start time cleared, result stored, finish time set, dedupe key freed, event
emitted. The place in line (`Place`) is checked in test_flow.py. Every test runs on
memory, SQLite and Redis (conftest.py).
"""

from __future__ import annotations

import pytest

from conveyor import Conveyor, JobState
from conveyor.engines import Engine, Outcome
from conveyor.lifecycle import TRANSITIONS
from conveyor.testing import eventually

from .helpers import claim, err, finish, settled_events

# (outcome, delay_ms): every worker outcome, and each with a delay where it has a state
# for "later" (retry, defer).
CASES = [
    (kind, delay)
    for kind in ("complete", "fail", "retry", "release", "defer")
    for delay in (0, 3_600_000)
    if delay == 0 or TRANSITIONS[kind].later_state is not None
]


async def job_events(engine: Engine, start: dict[str, str], job_id: str) -> list[str]:
    """The kinds of the job's events after `start` (its three: enqueued, started, the
    outcome's), once settled."""
    return [e.kind for e in await settled_events(engine, start, 3) if e.job_id == job_id]


@pytest.mark.parametrize(("kind", "delay_ms"), CASES)
async def test_outcome_applies_its_transition(
    engine: Engine, app: Conveyor, kind: str, delay_ms: int
) -> None:
    t = TRANSITIONS[kind]  # type: ignore[index]
    start = await engine.last_event_ids(["q"])
    await engine.enqueue([app.build("t", {}, dedupe_key="k")])
    [job] = await claim(engine)
    # Every field an outcome can carry: the table, not their presence, decides what is kept.
    outcome = Outcome(
        job.id,
        str(job.token),
        kind,  # type: ignore[arg-type]
        result_json='{"r": 1}',
        error_json=err(1),
        delay_ms=delay_ms,
        reason="why",
    )
    assert await finish(engine, outcome) == []
    stored = await engine.get_job(job.id)
    assert stored.state == t.target(delay_ms)
    assert len(stored.errors) == (1 if t.append_error else 0)
    assert stored.attempt == (0 if t.give_back_attempt else 1)
    assert (stored.started_at is None) == t.clear_started
    assert stored.result == ({"r": 1} if t.store_result else None)
    assert (stored.finished_at is not None) == t.finishes
    assert stored.token is None  # no longer running: no lease
    assert await job_events(engine, start, job.id) == ["enqueued", "started", t.event]
    [again] = await engine.enqueue([app.build("t", {}, dedupe_key="k")])
    assert again.created == t.finishes  # a finished job frees its dedupe key


@pytest.mark.parametrize("kind", ["expire", "expire_last"])
async def test_lease_expiry_applies_its_transition(
    engine: Engine, app: Conveyor, kind: str
) -> None:
    t = TRANSITIONS[kind]  # type: ignore[index]
    start = await engine.last_event_ids(["q"])
    attempts = 1 if kind == "expire_last" else 3
    await engine.enqueue([app.build("t", {}, dedupe_key="k", max_attempts=attempts)])
    [job] = await claim(engine, lease_ms=50)

    async def recovered() -> bool:
        await engine.recover_expired(["q"])
        return (await engine.get_job(job.id)).state != JobState.RUNNING

    await eventually(recovered, timeout=5, message="expired lease recovered")
    stored = await engine.get_job(job.id)
    assert stored.state == t.state
    assert [e.type for e in stored.errors] == (["LeaseExpired"] if t.append_error else [])
    assert stored.attempt == 1  # the lost attempt counts
    assert (stored.started_at is None) == t.clear_started
    assert (stored.finished_at is not None) == t.finishes
    assert stored.token is None
    assert await job_events(engine, start, job.id) == ["enqueued", "started", t.event]
    [again] = await engine.enqueue([app.build("t", {}, dedupe_key="k")])
    assert again.created == t.finishes
