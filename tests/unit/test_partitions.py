"""The rules of `conveyor.partitions`, without an engine: names, routing, the claim
rotation, limit shares, and the fixed home of scheduled occurrences."""

from __future__ import annotations

from datetime import timedelta

import pytest

from conveyor import Conveyor
from conveyor.errors import ConfigError
from conveyor.job import QUEUE_NAME
from conveyor.limits import QueueLimits
from conveyor.partitions import (
    PartitionMap,
    Rotation,
    fixed_home,
    join_limits,
    layout,
    logical,
    parse,
    route_index,
    split_limits,
)
from conveyor.scheduler import Scheduler


def test_names_round_trip_and_never_collide_with_a_queue() -> None:
    assert layout("mail", 3) == ["mail~0of3", "mail~1of3", "mail~2of3"]
    assert layout("mail", 1) == ["mail"]
    assert parse("mail~2of3") == ("mail", 2, 3)
    assert all(QUEUE_NAME.match(name) is None for name in layout("mail", 3))
    for plain in ("mail", "mail~", "mail~3of3", "mail~xof3", "~0of2", "a~0of2~1of2"):
        assert parse(plain) is None and logical(plain) == plain


def test_routing_is_stable_and_keyed_by_tenant_then_dedupe_key() -> None:
    # CRC-32: the same partition in every process and release (not Python's hash()).
    assert route_index(8, "acme", None, 0) == route_index(8, "acme", "other", 5)
    assert route_index(8, None, "k", 0) == route_index(8, None, "k", 7)
    assert [route_index(4, None, None, t) for t in range(6)] == [0, 1, 2, 3, 0, 1]
    homes = {route_index(8, f"tenant-{i}", None, 0) for i in range(200)}
    assert homes == set(range(8))


def test_partition_map_routes_and_scopes_tenant_dedupe_keys() -> None:
    parts = PartitionMap()
    parts.declare("mail", 4)
    assert parts.route("other", "acme", "k") == ("other", "k")  # not partitioned
    home, key = parts.route("mail", "acme", "k")
    assert home == f"mail~{route_index(4, 'acme', None, 0)}of4"
    assert key == "tenant:4:acme:k"
    assert parts.route("mail", None, "k") == (f"mail~{route_index(4, None, 'k', 0)}of4", "k")
    assert [parts.route("mail", None, None)[0] for _ in range(4)] == layout("mail", 4)
    with pytest.raises(ConfigError, match="partitions=4 and partitions=2"):
        parts.declare("mail", 2)


def test_rotation_starts_one_partition_further_each_claim() -> None:
    parts = PartitionMap()
    parts.declare("b", 3)
    rotation = Rotation(("a", "b", "c"), parts, stick=1)
    assert rotation.all == ("a", "b~0of3", "b~1of3", "b~2of3", "c")
    assert rotation.next() == ("a", "b~0of3", "b~1of3", "b~2of3", "c")
    assert rotation.next(claiming=False) == rotation.all  # outcomes only: no turn
    assert rotation.next() == ("a", "b~1of3", "b~2of3", "b~0of3", "c")
    assert rotation.next() == ("a", "b~2of3", "b~0of3", "b~1of3", "c")
    sticky = Rotation(("b",), parts, stick=2)
    turns = [sticky.next()[0] for _ in range(6)]
    assert turns == ["b~0of3", "b~0of3", "b~1of3", "b~1of3", "b~2of3", "b~2of3"]
    plain = Rotation(("a", "c"), parts)
    assert plain.next() is plain.all


def test_limits_are_split_so_their_sum_is_the_total() -> None:
    limits = QueueLimits.build(concurrency=10, rate="7/1s", tenant_concurrency=2)
    shares = split_limits(limits, 4)
    assert [s.concurrency for s in shares] == [3, 3, 2, 2]
    assert [s.rate for s in shares] == [2, 2, 2, 1]
    assert {(s.tenant_concurrency, s.rate_window_ms) for s in shares} == {(2, 1000)}
    assert join_limits(shares) == limits
    assert split_limits(limits, 1) == [limits]
    with pytest.raises(ConfigError, match="rate=7 is below the queue's 8 partitions"):
        split_limits(limits, 8)
    assert join_limits(split_limits(QueueLimits(), 3)) == QueueLimits()


def test_a_scheduled_occurrence_lands_in_one_partition_whoever_builds_it() -> None:
    """Two scheduler processes build the same occurrence: round-robin would give each
    its own partition (and id), so the occurrence would run twice."""
    assert fixed_home("mail~1of4", None, None, "s@1") == fixed_home("mail~3of4", None, None, "s@1")
    assert fixed_home("mail~1of4", "acme", None, "s@1") == "mail~1of4"  # tenant decides
    assert fixed_home("mail", None, None, "s@1") == "mail"

    app = Conveyor("memory://")
    app.limits("mail", partitions=4)
    spec = app.every(timedelta(minutes=1), task="tick", queue="mail", name="tick")
    schedulers = [Scheduler(app), Scheduler(app)]
    # Each build advances the app's round-robin turn; the occurrence's home must not move.
    ids = {s._occurrence_job(spec, 60_000).id for s in schedulers * 3}
    assert len(ids) == 1 and ids.pop().startswith("mail~")
