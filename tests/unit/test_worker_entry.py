"""One shape for a live worker on every engine (`conveyor.engines.workers`)."""

from __future__ import annotations

from conveyor.engines.workers import worker_entry


def test_the_engine_s_facts_win_over_the_worker_s_info() -> None:
    entry = worker_entry(
        "w1", b'{"host": "a", "id": "fake", "last_seen": 0}', last_seen_ms=1500, expires_ms=9
    )
    assert entry == {"host": "a", "id": "w1", "last_seen": 1.5, "expires_ms": 9}


def test_info_that_is_not_an_object_is_kept_and_bad_json_is_named() -> None:
    assert worker_entry("w", "[1, 2]", last_seen_ms=0, expires_ms=0)["info"] == [1, 2]
    bad = worker_entry("w", "{not json", last_seen_ms=0, expires_ms=0)
    assert bad["info_error"] == "stored worker info is not JSON"
    assert worker_entry("w", "", last_seen_ms=0, expires_ms=0)["id"] == "w"
