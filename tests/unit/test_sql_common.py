"""What the SQL engines share (engines/sql_common.py): the parts a contract test does not
pin down one by one."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from conveyor.engines.sql_common import (
    JOB_COLUMNS,
    MAX_KEY,
    MIN_KEY,
    cursor_for,
    delete_in_batches,
    new_job_row,
    page_start,
    parse_cursor,
    refuse_unless,
    retry_all_pages,
    tally_minutes,
)
from conveyor.errors import InvalidState
from conveyor.job import JobState, NewJob
from conveyor.lifecycle import BULK_BATCH, MAX_PRIORITY, outcome_event_data


def _new(**kw: Any) -> NewJob:
    return NewJob(id="q-1", queue="q", task="t", payload_json="{}", max_attempts=3, **kw)


def test_a_new_job_is_scheduled_only_while_its_due_time_is_ahead() -> None:
    assert new_job_row(_new(delay_ms=5), 1_000)[0] is JobState.SCHEDULED
    assert new_job_row(_new(run_at_ms=1_000), 1_000)[0] is JobState.PENDING
    state, row = new_job_row(_new(delay_ms=5, timeout=1.5), 1_000, waits=True)
    assert state is JobState.WAITING
    assert row[4] == "waiting-children" and row[9] == 1_500 and row[12] is None
    assert new_job_row(_new(delay_ms=5), 1_000)[1][12] == 1_005  # scheduled_ms


def test_a_cursor_names_the_position_after_its_row_and_bad_ones_are_refused() -> None:
    row = [*range(len(JOB_COLUMNS)), 99]
    for state in JobState:
        key = parse_cursor(cursor_for(state, row))
        assert key is not None and page_start(state, key) == key
    assert parse_cursor(None) is None
    with pytest.raises(ValueError, match="invalid cursor"):
        parse_cursor("12")


def test_a_first_page_starts_before_the_first_job_in_listing_order() -> None:
    assert page_start(JobState.PENDING, None) == (MAX_PRIORITY + 1, 0)
    assert page_start(JobState.SCHEDULED, None) == (MIN_KEY, MIN_KEY)
    assert page_start(JobState.FAILED, None) == (MAX_KEY, MAX_KEY)


def test_a_finish_stamped_after_the_end_counts_in_the_last_minute() -> None:
    buckets = [0, 0, 0]
    tally_minutes(buckets, [(-1, 2), (0, 1), (2, 4)])
    assert buckets == [4, 0, 3]


def test_refusals_come_from_the_lifecycle() -> None:
    refuse_unless("retry", {"id": "q-1", "state": "failed"})
    with pytest.raises(InvalidState):
        refuse_unless("retry", {"id": "q-1", "state": "running"})
    with pytest.raises(InvalidState):
        refuse_unless("cancel", {"id": "q-1", "state": "completed"})
    with pytest.raises(InvalidState):
        refuse_unless("promote", {"id": "q-1", "state": "pending"})


def test_bulk_loops_stop_on_a_short_batch_and_an_empty_page() -> None:
    batches = iter([BULK_BATCH, BULK_BATCH, 3, 7])

    async def delete() -> int:
        return next(batches)

    assert asyncio.run(delete_in_batches(delete)) == 2 * BULK_BATCH + 3

    bounds: list[tuple[int, int]] = []
    woke: list[bool] = []
    pages = iter([(2, (5, 9)), (0, (4, 1)), (0, None)])

    async def page(bound: tuple[int, int]) -> tuple[int, tuple[int, int] | None]:
        bounds.append(bound)
        return next(pages)

    assert asyncio.run(retry_all_pages(page, lambda: woke.append(True))) == 2
    assert bounds == [(MAX_KEY, MAX_KEY), (5, 9), (4, 1)] and woke == [True]


def test_an_outcome_event_records_what_its_transition_says() -> None:
    err = '{"message": "boom"}'
    assert outcome_event_data("fail", err, None, 0) == {"error": "boom"}
    assert outcome_event_data("retry", "not json", None, 50) == {"error": "", "delay_ms": 50}
    assert outcome_event_data("defer", None, "busy", 10) == {"reason": "busy", "delay_ms": 10}
    assert outcome_event_data("complete", None, None, 0) == {}
