from __future__ import annotations

import pytest

from conveyor import ConfigError
from conveyor.backoff import Exponential, Fixed, Schedule, coerce, from_spec


def test_list_backoff_follows_runbook_schedule_then_repeats_last() -> None:
    policy = coerce([1, 5, 30])
    assert [policy.delay_for(a) for a in (1, 2, 3, 4, 9)] == [1, 5, 30, 30, 30]


def test_exponential_grows_caps_and_jitters_within_bounds() -> None:
    policy = Exponential(base=2, factor=3, cap=50, jitter=0)
    assert [policy.delay_for(a) for a in (1, 2, 3, 4)] == [2, 6, 18, 50]
    jittered = Exponential(base=10, jitter=0.2)
    assert all(8 <= jittered.delay_for(1) <= 12 for _ in range(200))


def test_fixed_and_number() -> None:
    assert coerce(2.5) == Fixed(2.5)
    assert coerce("fixed").delay_for(7) == 1.0


@pytest.mark.parametrize("policy", [Fixed(3), Exponential(1, 2, 10, 0.1), Schedule((1.0, 5.0))])
def test_spec_roundtrip(policy: object) -> None:
    assert from_spec(policy.to_spec()) == policy  # type: ignore[attr-defined]


@pytest.mark.parametrize("bad", [[], [-1], "sometimes", True, {"kind": "weird"}, {"kind": "fixed"}])
def test_invalid_backoff_is_a_config_error(bad: object) -> None:
    with pytest.raises(ConfigError):
        coerce(bad)  # type: ignore[arg-type]
