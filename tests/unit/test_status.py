"""The operations read model: durations, queue overviews and the status document."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from conveyor import ConfigError, Conveyor
from conveyor.clock import FakeClock
from conveyor.status import (
    format_duration,
    parse_duration,
    policy_in_effect,
    queue_overview,
    status_document,
)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("7d", 7 * 86_400),
        ("12h", 43_200),
        ("30m", 1_800),
        ("45s", 45),
        ("90", 90),
        ("0", 0),
        ("1.5h", 5_400),
        ("1h30m", 5_400),
        ("2w", 1_209_600),
        (" 7D ", 7 * 86_400),
    ],
)
def test_parse_duration_reads_what_operators_write(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "7x", "-5", "d", "7 d", "1h junk", "1e3", "seven days"])
def test_parse_duration_rejects_anything_else(text: str) -> None:
    with pytest.raises(ConfigError, match=r"duration .* is invalid: use seconds \(90\)"):
        parse_duration(text)


@pytest.mark.parametrize(
    ("seconds", "shown"),
    [
        (None, "-"),
        (0.25, "250ms"),
        (42, "42s"),
        (192, "3m12s"),
        (18_420, "5h07m"),
        (183_600, "2d03h"),
    ],
)
def test_format_duration_is_compact(seconds: float | None, shown: str) -> None:
    assert format_duration(seconds) == shown


async def test_queue_overview_counts_ages_and_order() -> None:
    clock = FakeClock()
    app = Conveyor("memory://", clock=clock)
    await app.enqueue("mail.send", {}, queue="mail")
    await app.enqueue("mail.send", {}, queue="mail", delay=60)
    await app.enqueue("sms.send", {}, queue="sms")
    await app.pause("sms")
    clock.advance(90)

    rows = await queue_overview(app)
    assert [r["queue"] for r in rows] == ["mail", "sms"]
    mail, sms = rows
    assert (mail["pending"], mail["scheduled"], mail["paused"]) == (1, 1, False)
    assert mail["oldest_pending_age_seconds"] == 90
    # A point in time, in seconds like every job timestamp, under a name that says so.
    assert mail["oldest_pending_created_at"] == pytest.approx(clock.now() - 90)
    assert "oldest_pending_ms" not in mail
    assert sms["paused"] is True
    assert mail["throughput_per_min"] == mail["completed_1m"] + mail["failed_1m"]

    (only,) = await queue_overview(app, ["sms"])
    assert only["queue"] == "sms"
    (empty,) = await queue_overview(app, ["never-used"])
    assert (empty["pending"], empty["oldest_pending_age_seconds"]) == (0, None)
    assert empty["oldest_pending_created_at"] is None


async def test_status_document_on_the_memory_engine() -> None:
    app = Conveyor("memory://")
    await app.enqueue("mail.send", {}, queue="mail")
    await app.engine.register_worker(
        "w1", '{"queues": ["mail"], "concurrency": 8, "in_flight": 3, "last_seen": 0}', 30_000
    )

    doc = await status_document(app)
    engine = doc["engine"]
    assert (engine["status"], engine["durable"], engine["error"]) == ("ok", False, None)
    assert engine["url"] == "memory://" and isinstance(engine["latency_ms"], float)
    assert [q["queue"] for q in doc["queues"]] == ["mail"]
    (worker,) = doc["workers"]
    assert (worker["id"], worker["in_flight"], worker["concurrency"]) == ("w1", 3, 8)
    assert doc["totals"]["pending"] == 1 and doc["totals"]["in_flight"] == 3
    assert doc["generated_at"].endswith("+00:00")


async def test_status_document_hides_the_password() -> None:
    app = Conveyor("redis://ops:hunter2@127.0.0.1:1/0")
    doc = await status_document(app, timeout=5)
    assert "hunter2" not in str(doc)
    assert doc["engine"]["status"] == "unavailable"


async def test_status_document_renders_when_redis_is_unreachable() -> None:
    app = Conveyor("redis://127.0.0.1:1/0")
    doc = await status_document(app, timeout=5)
    assert doc["engine"]["status"] == "unavailable"
    assert "127.0.0.1:1" in doc["engine"]["error"]
    assert (doc["queues"], doc["workers"], doc["totals"]["workers"]) == ([], [], 0)
    assert doc["engine"]["durable"] is True and doc["engine"]["latency_ms"] is None


async def test_status_document_renders_when_sqlite_cannot_open(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    doc = await status_document(Conveyor(f"sqlite:///{blocker}/conveyor.db"))
    assert doc["engine"]["status"] == "unavailable" and doc["engine"]["error"]


async def test_status_document_times_out_instead_of_hanging() -> None:
    class Hanging(Conveyor):
        async def queue_names(self) -> list[str]:
            await asyncio.sleep(60)
            return []

    doc = await status_document(Hanging("memory://"), timeout=0.05)
    assert isinstance(doc["engine"].pop("latency_ms"), float)  # the ping answered
    assert doc["engine"] == {
        "url": "memory://",
        "status": "unavailable",
        "durable": False,
        "server": None,  # no server settings on memory:// (Redis: policy and AOF)
        "error": "engine did not answer within 0.05s",
    }
    assert doc["queues"] == [] and doc["workers"] == []


async def test_a_bad_url_scheme_is_a_setup_error_not_an_outage() -> None:
    with pytest.raises(ConfigError, match="not supported"):
        await status_document(Conveyor("mysql://db/jobs"))


async def test_overview_shows_limits_in_effect_and_why_pending_jobs_wait() -> None:
    app = Conveyor("memory://")
    for tenant in ("acme", "acme", "globex"):
        await app.enqueue("mail.send", {}, queue="mail", tenant=tenant)
    await app.set_limits("mail", concurrency=1, tenant_concurrency=1, rate="100/1s")
    engine = await app.connect()
    claimed = await engine.exchange([], queues=["mail"], limit=5, worker_id="w", lease_ms=60_000)
    assert len(claimed.jobs) == 1  # the queue's limit holds the rest back

    (row,) = await queue_overview(app, ["mail"])
    assert row["limits"] == {"concurrency": 1, "tenant_concurrency": 1, "rate": "100/1s"}
    reasons = row["held_back"]
    assert "no live worker consumes this queue" in reasons
    assert any(r.startswith("queue concurrency limit 1 reached (1 running)") for r in reasons)
    tenant = claimed.jobs[0].tenant
    assert any(f"tenant concurrency limit 1 reached for {tenant}" in r for r in reasons)
    assert any("rate 100/1s limit" in r for r in reasons)

    await engine.register_worker("w", '{"queues": ["mail"]}', ttl_ms=60_000)
    await app.pause("mail")
    (row,) = await queue_overview(app, ["mail"])
    assert "paused: `conveyor resume mail`" in row["held_back"]
    assert "no live worker consumes this queue" not in row["held_back"]

    (idle,) = await queue_overview(app, ["empty"])
    assert (idle["limits"], idle["held_back"]) == ({}, [])


async def test_policy_in_effect_names_each_value_and_its_source() -> None:
    app = Conveyor("memory://")

    @app.task("mail.send", queue="mail", max_attempts=5, backoff=[1, 5, 30], timeout=12)
    async def send(job: Any) -> None: ...

    default = await app.enqueue("mail.send", {})
    own = await app.enqueue("mail.send", {}, timeout=3, backoff=7, max_attempts=2)
    foreign = await app.enqueue("sms.send", {}, queue="sms")
    assert policy_in_effect(app, await app.get_job(default.id)) == {
        "timeout_seconds": 12,
        "timeout_from": "task",
        "backoff": {"kind": "list", "delays": [1, 5, 30]},
        "backoff_text": "1s, 5s, 30s (the last repeats)",
        "backoff_from": "task",
        "max_attempts": 5,
    }
    mine = policy_in_effect(app, await app.get_job(own.id))
    assert (mine["timeout_seconds"], mine["timeout_from"]) == (3, "job")
    assert (mine["backoff_text"], mine["backoff_from"], mine["max_attempts"]) == (
        "fixed 7s",
        "job",
        2,
    )
    other = policy_in_effect(Conveyor("memory://"), await app.get_job(foreign.id))
    assert (other["timeout_from"], other["backoff_from"], other["backoff"]) == (
        "unknown",
        "unknown",
        None,
    )
