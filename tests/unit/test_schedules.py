"""Schedules: next-run rules (DST included), missed policies, pause, runtime changes and
leadership — pure functions and `Scheduler.tick(now)` on the memory engine with a fake
clock; nothing sleeps."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from conveyor import ConfigError, Conveyor, InvalidJob, Job, JobState
from conveyor.clock import FakeClock
from conveyor.engines import Outcome
from conveyor.job import EnqueueResult, NewJob
from conveyor.scheduler import Scheduler
from conveyor.schedules import (
    LEADER_LEASE,
    ScheduleSpec,
    cron_schedule,
    due_occurrences,
    every_schedule,
    next_run,
    occurrence_job_id,
)

BERLIN = ZoneInfo("Europe/Berlin")
MINUTE0 = 1_700_000_040.0  # a whole minute (epoch seconds divisible by 60)


def berlin(*args: int, fold: int = 0) -> datetime:
    return datetime(*args, tzinfo=BERLIN, fold=fold)  # type: ignore[misc]


# --- next run: a table, DST changes included ------------------------------------------------
# Europe/Berlin 2024: clocks go 02:00 -> 03:00 on Sunday 31 March (the last Sunday), and
# 03:00 -> 02:00 on Sunday 27 October. cronsim's (Debian cron's) rule, as documented in
# conveyor.schedules: fixed-time jobs in the gap run at the first valid minute after it,
# fixed-time jobs in the overlap run once (first pass); *-hour jobs follow real time.
NEXT_RUN_TABLE = [
    # (expr, timezone, after, expected next run)
    ("30 2 * * *", "Europe/Berlin", berlin(2024, 3, 30, 12), berlin(2024, 3, 31, 3, 0)),
    ("30 2 * * *", "Europe/Berlin", berlin(2024, 3, 31, 3, 0), berlin(2024, 4, 1, 2, 30)),
    ("30 2 * * *", "Europe/Berlin", berlin(2024, 10, 26, 12), berlin(2024, 10, 27, 2, 30)),
    # after the first 02:30 (summer time), the repeated 02:30 (winter time) does not fire
    ("30 2 * * *", "Europe/Berlin", berlin(2024, 10, 27, 2, 30), berlin(2024, 10, 28, 2, 30)),
    # from inside the second pass, the first-pass instant is past: next day, not a repeat
    (
        "50 2 * * *",
        "Europe/Berlin",
        berlin(2024, 10, 27, 2, 45, fold=1),
        berlin(2024, 10, 28, 2, 50),
    ),
    # hourly jobs follow elapsed time: both 02:00s in October, no 02:00 in March
    (
        "0 * * * *",
        "Europe/Berlin",
        berlin(2024, 10, 27, 2, 0),
        berlin(2024, 10, 27, 2, 0, fold=1),
    ),
    ("0 * * * *", "Europe/Berlin", berlin(2024, 3, 31, 1, 0), berlin(2024, 3, 31, 3, 0)),
    ("0 3 * * *", "Europe/Paris", berlin(2024, 1, 1, 3, 0), berlin(2024, 1, 2, 3, 0)),
    (
        "0 9 * * 1-5",
        "UTC",
        datetime(2024, 6, 7, 10, tzinfo=UTC),  # a Friday
        datetime(2024, 6, 10, 9, tzinfo=UTC),  # the Monday
    ),
    (
        "*/15 * * * *",
        "UTC",
        datetime(2024, 6, 7, 10, 7, 30, tzinfo=UTC),
        datetime(2024, 6, 7, 10, 15, tzinfo=UTC),
    ),
    (
        "*/10 * * * * *",  # six fields: seconds first
        "UTC",
        datetime(2024, 6, 7, 10, 0, 5, tzinfo=UTC),
        datetime(2024, 6, 7, 10, 0, 10, tzinfo=UTC),
    ),
    # strictly after: an occurrence exactly at `after` is not "next"
    (
        "0 3 * * *",
        "UTC",
        datetime(2024, 6, 7, 3, tzinfo=UTC),
        datetime(2024, 6, 8, 3, tzinfo=UTC),
    ),
]


@pytest.mark.parametrize(("expr", "tz", "after", "expected"), NEXT_RUN_TABLE)
def test_next_run_table(expr: str, tz: str, after: datetime, expected: datetime) -> None:
    spec = cron_schedule(expr, task="t", timezone=tz)
    got = next_run(spec, after)
    assert got == expected
    assert got is not None and got.utcoffset() == expected.utcoffset()  # same instant AND pass
    assert next_run(spec, after.timestamp()) == expected  # epoch seconds work too


def test_fall_back_overlap_runs_once_not_twice() -> None:
    spec = cron_schedule("30 2 * * *", task="t", timezone="Europe/Berlin")
    start = berlin(2024, 10, 27, 0, 0).timestamp()
    runs = []
    at = round(start * 1000)
    while True:
        nxt = spec.next_after_ms(at)
        assert nxt is not None
        if nxt > round(berlin(2024, 10, 27, 6, 0).timestamp() * 1000):
            break
        runs.append(nxt)
        at = nxt
    assert runs == [round(berlin(2024, 10, 27, 2, 30).timestamp() * 1000)]


def test_every_fires_at_multiples_of_the_interval_since_the_epoch() -> None:
    spec = every_schedule(timedelta(minutes=5), task="t")
    assert spec.name == "t@every 5m"
    ten_07 = datetime(2024, 6, 7, 10, 7, tzinfo=UTC)
    assert next_run(spec, ten_07) == datetime(2024, 6, 7, 10, 10, tzinfo=UTC)
    assert next_run(spec, datetime(2024, 6, 7, 10, 10, tzinfo=UTC)) == datetime(
        2024, 6, 7, 10, 15, tzinfo=UTC
    )
    assert every_schedule(1, task="t").next_after_ms(5_000) == 6_000
    assert every_schedule(90, task="t").describe == "every 1m30s"


def test_naive_datetime_is_refused() -> None:
    with pytest.raises(ConfigError, match="aware"):
        next_run(every_schedule(60, task="t"), datetime(2024, 1, 1))


def test_due_occurrences_policies() -> None:
    every_min = every_schedule(60, task="t")
    since, now = 60_000 * 10 + 30_000, 60_000 * 70 + 10_000  # an hour without a scheduler
    # skip: only the on-time window [now - grace, now]
    assert due_occurrences(every_min, since_ms=since, now_ms=now, grace_ms=5_000) == []
    assert due_occurrences(every_min, since_ms=since, now_ms=now, grace_ms=10_000) == [4_200_000]
    # run_once: one catch-up for the latest missed occurrence, then the on-time ones
    once = every_schedule(60, task="t", missed="run_once")
    assert due_occurrences(once, since_ms=since, now_ms=now, grace_ms=5_000) == [4_200_000]
    assert due_occurrences(once, since_ms=since, now_ms=now, grace_ms=10_000) == [
        4_140_000,
        4_200_000,
    ]
    # nothing missed: every occurrence since the baseline, bounded by `limit`
    assert due_occurrences(every_min, since_ms=0, now_ms=180_000, grace_ms=10**9) == [
        60_000,
        120_000,
        180_000,
    ]
    assert due_occurrences(every_min, since_ms=0, now_ms=180_000, grace_ms=10**9, limit=2) == [
        60_000,
        120_000,
    ]


def test_spec_json_roundtrip_and_job_ids() -> None:
    spec = cron_schedule(
        "0  3 * * *",
        task="reports.send",
        timezone="Europe/Paris",
        payload={"kind": "daily"},
        queue="reports",
        missed="run_once",
        options={"priority": 5, "backoff": [1, 5]},
    )
    assert spec.name == "reports.send@0 3 * * *"  # blanks normalised
    assert ScheduleSpec.from_json(spec.to_json()) == spec
    job_id = occurrence_job_id("reports", spec.name, 1_700_000_000_000)
    assert job_id == occurrence_job_id("reports", spec.name, 1_700_000_000_000)
    assert job_id.startswith("reports:sched-") and job_id.count(":") == 1
    assert occurrence_job_id("q", "a b", 1) != occurrence_job_id("q", "a_b", 1)
    with pytest.raises(ConfigError, match="malformed"):
        ScheduleSpec.from_json('{"kind": "cron"}')


@pytest.mark.parametrize(
    ("make", "fix"),
    [
        (lambda: cron_schedule("61 * * * *", task="t"), "use 5 fields"),
        (lambda: cron_schedule("* * *", task="t"), "use 5 fields"),
        (lambda: cron_schedule("", task="t"), "use 5 fields"),
        (lambda: cron_schedule("0 0 30 2 *", task="t"), "use 5 fields"),
        (lambda: cron_schedule("0 3 * * *", task="t", timezone="Mars/Olympus"), "IANA name"),
        (lambda: cron_schedule("0 3 * * *", task="t", timezone="CEST+2"), "IANA name"),
        (lambda: every_schedule(0.5, task="t"), "seconds >= 1"),
        (lambda: every_schedule(timedelta(0), task="t"), "seconds >= 1"),
        (lambda: every_schedule(-5, task="t"), "every\\(timedelta\\(minutes=5\\)\\)"),
        (lambda: every_schedule(60, task="t", missed="always"), "'skip'"),
        (lambda: every_schedule(60, task="t", options={"delay": 5}), "not supported"),
        (lambda: every_schedule(60, task="t", name=""), "printable"),
        (lambda: every_schedule(60, task=""), "name the task"),
    ],
)
def test_invalid_definitions_raise_config_error_naming_the_fix(make: object, fix: str) -> None:
    with pytest.raises(ConfigError, match=fix):
        make()  # type: ignore[operator]


# --- the app's API ------------------------------------------------------------------------------
def test_app_cron_and_every_as_calls_and_decorators() -> None:
    app = Conveyor("memory://")

    @app.cron("0 3 * * *", timezone="Europe/Paris")
    @app.task("reports.nightly", queue="reports")
    async def nightly(job: Job) -> None: ...

    @app.every(timedelta(minutes=5))
    async def poll(job: Job) -> None: ...  # not a task yet: registered by the decorator

    plain = app.every(30, task="reports.nightly", name="half-minute", payload={"x": 1})
    poll_task = f"{poll.__module__}.{poll.__qualname__}"
    assert set(app.schedules) == {
        "reports.nightly@0 3 * * *",
        f"{poll_task}@every 5m",
        "half-minute",
    }
    assert app.tasks[poll_task].fn is poll
    assert plain.payload == {"x": 1} and app.schedules["half-minute"] is plain
    with pytest.raises(ConfigError, match="pass name="):
        app.every(60, task="reports.nightly", name="half-minute")
    with pytest.raises(ConfigError, match="payload"):
        app.every(60, task="reports.nightly", name="bad", payload={"x": object()})
    with pytest.raises(ConfigError, match="priority"):
        app.cron("0 3 * * *", task="reports.nightly", name="bad2", priority=1000)


# --- Scheduler.tick with a fake clock ----------------------------------------------------------
def make_app(start: float = MINUTE0) -> tuple[Conveyor, FakeClock]:
    clock = FakeClock(start)
    app = Conveyor("memory://", clock=clock)

    @app.task("tick", queue="sched")
    async def tick(job: Job) -> None: ...

    return app, clock


async def sched_jobs(app: Conveyor) -> list[str]:
    page = await app.list_jobs("sched", JobState.PENDING, limit=1000)
    return sorted(j.id for j in page.jobs)


async def test_leader_enqueues_each_occurrence_once_with_deterministic_ids() -> None:
    app, clock = make_app()
    app.every(60, task="tick", name="m")
    a, b = Scheduler(app, lease_timeout=10), Scheduler(app, lease_timeout=10)
    assert (await a.tick()).leader and not (await b.tick()).leader
    for _ in range(12):  # three minutes in 15 s steps, both ticking
        clock.advance(15)
        await a.tick()
        await b.tick()
    ids = await sched_jobs(app)
    occurrences = [MINUTE0 + 60, MINUTE0 + 120, MINUTE0 + 180]
    assert ids == sorted(occurrence_job_id("sched", "m", round(t * 1000)) for t in occurrences)
    [info] = await app.list_schedules()
    assert info.last_run == MINUTE0 + 180 and info.next_run == MINUTE0 + 240
    assert (info.source, info.kind, info.expr) == ("code", "every", "1m")


async def test_follower_takes_over_after_the_lease_and_the_old_leader_is_fenced() -> None:
    app, clock = make_app()
    app.every(60, task="tick", name="m")
    a, b = Scheduler(app, lease_timeout=10), Scheduler(app, lease_timeout=10)
    await a.tick()
    await b.tick()
    clock.advance(9)  # a "hangs": no more ticks from it
    assert not (await b.tick()).leader  # lease still live
    clock.advance(2)
    assert (await b.tick()).leader
    for _ in range(10):  # b leads on; the first occurrence is enqueued by b
        clock.advance(5)
        await b.tick()
    stale = await a.tick()  # a wakes up

    assert not stale.leader and not a.is_leader and stale.enqueued == []
    assert len(await sched_jobs(app)) == 1
    # the stale one cannot move last_run (fenced by the lease it lost)
    assert not await app.engine.advance_schedule("m", 10**15, lease="scheduler", holder=a.id)


async def test_takeover_window_is_caught_up_within_grace() -> None:
    app, clock = make_app()
    app.every(1, task="tick", name="s")
    a, b = Scheduler(app, lease_timeout=3), Scheduler(app, lease_timeout=3)
    await a.tick()
    await b.tick()
    clock.advance(2)
    await a.tick()
    clock.advance(4)  # a died; b takes over after the lease; grace (2 x lease) covers it
    await b.tick()
    occurrences = sorted(int(i.rsplit("-", 1)[1]) for i in await sched_jobs(app))
    start = round(MINUTE0 * 1000)
    assert occurrences == [start + k * 1000 for k in range(1, 7)]  # no gap


@pytest.mark.parametrize(("missed", "expected"), [("skip", 0), ("run_once", 1)])
async def test_missed_occurrences_follow_the_policy(missed: str, expected: int) -> None:
    app, clock = make_app(MINUTE0 + 30)
    app.every(60, task="tick", name="m", missed=missed)
    scheduler = Scheduler(app, lease_timeout=10)  # grace 20 s
    await scheduler.tick()
    clock.advance(3600)  # no scheduler ran for an hour; now is 30 s past a minute
    report = await scheduler.tick()
    assert len(report.enqueued) == expected
    if expected:  # the catch-up job is the latest missed occurrence
        assert report.enqueued[0].endswith(f"-{round((MINUTE0 + 3600) * 1000)}")
    clock.advance(30)  # then the schedule continues on time
    assert (await scheduler.tick()).enqueued == [
        occurrence_job_id("sched", "m", round((MINUTE0 + 3660) * 1000))
    ]


async def test_pause_and_resume_skip_the_paused_occurrences() -> None:
    app, clock = make_app()
    app.every(60, task="tick", name="m", missed="run_once")
    scheduler = Scheduler(app, lease_timeout=10)
    await scheduler.tick()
    await app.pause_schedule("m")
    for _ in range(10):
        clock.advance(60)
        assert (await scheduler.tick()).enqueued == []
    [info] = await app.list_schedules()
    assert info.paused and info.next_run is None
    clock.advance(10)
    await app.pause_schedule("m", False)
    assert (await scheduler.tick()).enqueued == []  # no catch-up for a deliberate pause
    clock.advance(50)
    assert len((await scheduler.tick()).enqueued) == 1
    with pytest.raises(ConfigError, match="no schedule named"):
        await app.pause_schedule("nope")


async def test_runtime_add_and_remove() -> None:
    app, clock = make_app()
    app.every(3600, task="tick", name="code-one")
    scheduler = Scheduler(app, lease_timeout=10)
    await scheduler.tick()
    await app.add_schedule(every_schedule(60, task="tick", name="rt"))
    clock.advance(60)
    report = await scheduler.tick()
    assert report.enqueued == [occurrence_job_id("sched", "rt", round((MINUTE0 + 60) * 1000))]
    assert {(i.name, i.source) for i in await app.list_schedules()} == {
        ("code-one", "code"),
        ("rt", "runtime"),
    }
    await app.remove_schedule("rt")
    clock.advance(60)
    assert (await scheduler.tick()).enqueued == []
    with pytest.raises(ConfigError, match="defined in the app's code"):
        await app.remove_schedule("code-one")
    with pytest.raises(ConfigError, match="defined in the app's code"):
        await app.add_schedule(every_schedule(60, task="tick", name="code-one"))
    with pytest.raises(ConfigError, match="no schedule named"):
        await app.remove_schedule("rt")


async def test_code_schedules_removed_from_the_code_are_dropped_by_the_next_leader() -> None:
    app, clock = make_app()
    app.every(60, task="tick", name="old")
    await Scheduler(app, lease_timeout=10).tick()
    newer, _ = make_app()
    newer._engine = app.engine  # the same store, a newer version of the code
    newer.every(60, task="tick", name="new")
    clock.advance(11)  # the first leader is gone
    await Scheduler(newer, lease_timeout=10).tick()
    assert [i.name for i in await app.list_schedules()] == ["new"]


async def test_unknown_task_without_queue_is_logged_and_skipped(
    caplog: pytest.LogCaptureFixture,
) -> None:
    app, clock = make_app()
    scheduler = Scheduler(app, lease_timeout=10)
    await scheduler.tick()
    await app.engine.put_schedule(
        "ghost", every_schedule(60, task="not.here", name="ghost").to_json(), "runtime"
    )
    clock.advance(60)
    assert (await scheduler.tick()).enqueued == []
    assert "not registered" in caplog.text


async def test_a_schedule_that_cannot_be_enqueued_shows_its_last_error_until_a_run_works() -> None:
    app, clock = make_app()
    scheduler = Scheduler(app, lease_timeout=10)
    await scheduler.tick()
    await app.store_schedule(every_schedule(60, task="late.task", name="late"), "runtime")
    clock.advance(60)  # the task is not registered yet: building the job raises
    assert (await scheduler.tick()).enqueued == []
    [info] = await app.list_schedules()
    assert info.last_error is not None
    assert info.last_error["message"].startswith("task 'late.task' is not registered")
    assert (info.last_error["type"], info.last_error["at"], info.last_error["occurrence"]) == (
        "UnknownTask", MINUTE0 + 60, MINUTE0 + 60,
    )  # fmt: skip
    assert info.to_dict()["last_error"] == info.last_error
    assert info.last_run is None

    @app.task("late.task", queue="sched")
    async def late(job: Job) -> None: ...

    clock.advance(60)  # registered now: the next occurrence is enqueued and clears it
    assert len((await scheduler.tick()).enqueued) == 1
    [info] = await app.list_schedules()
    assert info.last_error is None and info.last_run == MINUTE0 + 120


async def test_an_engine_refusal_is_stored_with_its_schedule_and_does_not_block_others(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    app, clock = make_app()
    app.every(60, task="tick", name="good")
    app.every(60, task="tick", name="refused", payload={"big": True})
    store_built = app.store_built

    async def refusing(jobs: list[NewJob]) -> list[EnqueueResult]:
        # What an engine refusing one schedule's jobs looks like to the scheduler.
        if any('"big"' in job.payload_json for job in jobs):
            raise InvalidJob("the engine refused the job")
        return await store_built(jobs)

    monkeypatch.setattr(app, "store_built", refusing)
    scheduler = Scheduler(app, lease_timeout=10)
    await scheduler.tick()
    clock.advance(60)
    assert len((await scheduler.tick()).enqueued) == 1  # "good" was not held back
    good, refused = await app.list_schedules()
    assert good.last_run == MINUTE0 + 60 and good.last_error is None
    assert refused.last_run is None and refused.last_error is not None
    assert refused.last_error["type"] == "InvalidJob"
    assert refused.last_error["message"] == "the engine refused the job"


async def test_a_follower_writes_no_schedule_error() -> None:
    app, _ = make_app()
    leader, follower = Scheduler(app, lease_timeout=10), Scheduler(app, lease_timeout=10)
    await leader.tick()
    await app.store_schedule(every_schedule(60, task="late.task", name="late"), "runtime")
    assert not await app.record_schedule_error(
        "late", InvalidJob("stale"), 0, at_ms=0, lease=LEADER_LEASE, holder=follower.id
    )
    [info] = await app.list_schedules()
    assert info.last_error is None


async def test_retention_and_stalled_job_recovery() -> None:
    app, clock = make_app()
    scheduler = Scheduler(app, lease_timeout=10, keep_completed=3600, keep_failed=7200)
    engine = await app.connect()
    done, dead, _stuck = [await app.enqueue("tick", {"i": i}) for i in range(3)]
    exchange = await engine.exchange([], queues=["sched"], limit=3, worker_id="w", lease_ms=1000)
    claimed = exchange.jobs
    by_id = {j.id: j for j in claimed}
    await engine.exchange(
        [
            Outcome(done.id, str(by_id[done.id].token), "complete", result_json="1"),
            Outcome(dead.id, str(by_id[dead.id].token), "fail", error_json='{"attempt": 1}'),
        ],
        queues=["sched"],
        limit=0,
        worker_id="w",
        lease_ms=1000,
    )
    clock.advance(5)  # the third job's worker vanished: its lease expired
    report = await scheduler.tick()
    assert report.recovered == 1 and report.cleaned == 0
    clock.advance(3600)
    assert (await scheduler.tick()).cleaned == 1  # the completed one
    counts = await app.counts("sched")
    assert (counts.completed, counts.failed, counts.pending) == (0, 1, 1)
    clock.advance(3600)
    assert (await scheduler.tick()).cleaned == 1  # the failed one, kept longer
    with pytest.raises(ConfigError, match="keep-completed"):
        Scheduler(app, keep_completed=0)


async def test_next_tick_wakes_for_the_next_occurrence() -> None:
    app, _clock = make_app(MINUTE0 + 0.25)
    app.every(1, task="tick", name="s")
    scheduler = Scheduler(app, lease_timeout=30)
    report = await scheduler.tick()
    assert report.leader and report.next_tick == pytest.approx(0.75)
    follower = Scheduler(app, lease_timeout=30)
    assert (await follower.tick()).next_tick == pytest.approx(1.0)  # min(lease/3, 1 s)
