"""`conveyor.testing` holds helpers for users' tests only; Conveyor's own probe app (a
task whose payload picks a file to append to and can kill its worker) is in tests/."""

from __future__ import annotations

import pytest

import conveyor.testing
from conveyor import Conveyor
from conveyor.testing import eventually


def test_the_installed_package_has_no_app_to_run() -> None:
    assert not [n for n, v in vars(conveyor.testing).items() if isinstance(v, Conveyor)]
    assert conveyor.testing.__all__ == ["TestHarness", "eventually"]


async def test_eventually_waits_for_the_condition_and_names_it_when_it_never_holds() -> None:
    calls = 0

    async def third_time() -> bool:
        nonlocal calls
        calls += 1
        return calls >= 3

    await eventually(third_time, interval=0)
    assert calls == 3

    async def never() -> bool:
        return False

    with pytest.raises(AssertionError, match=r"the sky falling did not hold within 0\.05s"):
        await eventually(never, timeout=0.05, message="the sky falling")
