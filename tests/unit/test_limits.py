"""Queue limits above storage: parsing rates and the one merge of code, flags and stored."""

from __future__ import annotations

import pytest

from conveyor.errors import ConfigError
from conveyor.limits import QueueLimits, format_rate, merge_limits, parse_rate


def test_parse_and_format_rate_round_trip() -> None:
    assert parse_rate("100/s") == (100, 1000)
    assert parse_rate("5/250ms") == (5, 250)
    assert format_rate(*parse_rate("1000/1m")) == "1000/1m"
    assert format_rate(None, 1000) is None
    with pytest.raises(ConfigError, match="tenant_rate='fast' is invalid"):
        parse_rate("fast", option="tenant_rate")


def test_later_layers_win_field_by_field() -> None:
    code = QueueLimits.build(concurrency=5, tenant_concurrency=2, rate="10/1s")
    flags = QueueLimits.build(concurrency=8, tenant_rate="3/1m")
    assert merge_limits(code, flags) == QueueLimits.build(
        concurrency=8, tenant_concurrency=2, rate="10/1s", tenant_rate="3/1m"
    )


def test_a_rate_keeps_its_own_window() -> None:
    stored = QueueLimits.build(rate="10/1m")
    merged = merge_limits(stored, QueueLimits.build(rate="4/250ms"))
    assert (merged.rate, merged.rate_window_ms) == (4, 250)
    # A layer without a rate keeps the earlier rate *and* its window.
    merged = merge_limits(stored, QueueLimits(concurrency=1))
    assert (merged.rate, merged.rate_window_ms) == (10, 60_000)


def test_none_and_empty_layers_change_nothing() -> None:
    code = QueueLimits.build(tenant_concurrency=3)
    assert merge_limits(None, code, None, QueueLimits()) == code
    assert merge_limits() == QueueLimits()
    assert merge_limits(None).empty
