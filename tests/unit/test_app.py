"""Producer API: validation happens before anything is stored (guarantee 5)."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest

from conveyor import (
    ConfigError,
    Conveyor,
    InvalidJob,
    InvalidPayload,
    JobState,
    PayloadTooLarge,
    UnknownTask,
)
from conveyor.job import new_id_suffixes, new_job_id


@pytest.fixture
def app() -> Conveyor:
    app = Conveyor("memory://", max_payload_bytes=1000)

    @app.task("email.send", queue="notifications", max_attempts=5, backoff=[1, 5, 30], timeout=30)
    async def send(job: object) -> None: ...

    return app


async def nothing_stored(app: Conveyor) -> bool:
    return await app.queue_names() == []


async def test_enqueue_uses_task_defaults(app: Conveyor) -> None:
    job = await app.enqueue("email.send", {"to": "a@example.com"}, tenant="acme", priority=5)
    assert (job.queue, job.state, job.max_attempts, job.tenant) == (
        "notifications",
        JobState.PENDING,
        5,
        "acme",
    )
    stored = await app.get_job(job.id)
    assert stored.payload == {"to": "a@example.com"} and stored.priority == 5


async def test_unregistered_task_needs_a_queue(app: Conveyor) -> None:
    with pytest.raises(UnknownTask, match="pass queue="):
        await app.enqueue("billing.charge", {})
    assert await nothing_stored(app)
    job = await app.enqueue("billing.charge", {}, queue="billing")
    assert job.queue == "billing" and job.max_attempts == 3


@pytest.mark.parametrize(
    ("payload", "error"),
    [
        ({"when": object()}, InvalidPayload),
        ({"s": {1, 2}}, InvalidPayload),
        (["not", "an", "object"], InvalidPayload),
        ({"big": "x" * 2000}, PayloadTooLarge),
    ],
)
async def test_bad_payload_is_named_and_stores_nothing(
    app: Conveyor, payload: object, error: type[Exception]
) -> None:
    with pytest.raises(error) as info:
        await app.enqueue("email.send", payload)  # type: ignore[arg-type]
    assert "pickle" in str(info.value) or "object" in str(info.value) or "limit" in str(info.value)
    assert await nothing_stored(app)


@pytest.mark.parametrize(
    "options",
    [
        {"priority": 1000},
        {"priority": "high"},
        {"delay": -1},
        {"delay": "soon"},
        {"delay": 1, "run_at": "2030-01-01"},
        {"run_at": "2030-01-01"},
        {"max_attempts": 0},
        {"queue": "has space"},
        {"tenant": ""},
        {"timeout": -5},
        {"backoff": [-1]},
        {"colour": "blue"},
    ],
)
async def test_bad_options_are_named_and_store_nothing(
    app: Conveyor, options: dict[str, object]
) -> None:
    with pytest.raises(InvalidJob):
        await app.enqueue("email.send", {}, **options)
    assert await nothing_stored(app)


async def test_enqueue_many_is_all_or_nothing(app: Conveyor) -> None:
    with pytest.raises(InvalidPayload, match="item 2"):
        await app.enqueue_many(
            [
                {"task": "email.send", "payload": {"i": 0}},
                {"task": "email.send", "payload": {"i": 1}},
                {"task": "email.send", "payload": {"bad": object()}},
            ]
        )
    assert await nothing_stored(app)
    jobs = await app.enqueue_many(
        [
            {
                "task": "email.send",
                "payload": {"i": i},
                "delay": timedelta(seconds=60) if i else None,
            }
            for i in range(3)
        ]
    )
    assert [j.state for j in jobs] == [JobState.PENDING, JobState.SCHEDULED, JobState.SCHEDULED]


async def test_enqueue_many_builds_what_enqueue_builds(app: Conveyor) -> None:
    """Items of only a task and a payload take a shortcut (per task, not per job): what
    it builds is what `build` builds, id aside, whatever the items around it hold."""
    items: list[dict[str, object]] = [
        {"task": "email.send", "payload": {"i": 0}},
        {"task": "email.send"},
        {"task": "email.send", "payload": {"i": 2}, "priority": 3},
        {"task": "billing.charge", "payload": {"i": 3}, "queue": "billing"},
        {"task": "email.send", "payload": {"i": 4, "none": None}},
    ]
    built = app._build_many(items)
    for item, new in zip(items, built, strict=True):
        spec = dict(item)
        expected = app.build(spec.pop("task"), spec.pop("payload", None), **spec)  # type: ignore[arg-type]
        assert new.queue == expected.queue and new.id.startswith(f"{new.queue}:")
        assert {**vars_of(new), "id": ""} == {**vars_of(expected), "id": ""}
    assert len({new.id for new in built}) == len(built)
    jobs = await app.enqueue_many(items)
    assert [j.payload for j in jobs] == [{"i": 0}, {}, {"i": 2}, {"i": 3}, items[4]["payload"]]
    assert [(await app.get_job(j.id)).priority for j in jobs] == [0, 0, 3, 0, 0]


@pytest.mark.parametrize(
    ("item", "error", "message"),
    [
        ({"payload": {}}, InvalidJob, "item 1 has no 'task'"),
        ({"task": "email.send", "payload": {"x": object()}}, InvalidPayload, "item 1: "),
        ({"task": "email.send", "payload": {"x": "y" * 2000}}, PayloadTooLarge, "item 1: "),
        ({"task": "email.send", "payload": [1]}, InvalidPayload, "item 1: "),
        ({"task": "email.send", "payload": {"x": float("nan")}}, InvalidPayload, "item 1: "),
        ({"task": "nope", "payload": {}}, UnknownTask, "item 1: "),
        ({"task": "\ud800", "payload": {}}, InvalidJob, "item 1: "),
        ({"task": ["email.send"], "payload": {}}, InvalidJob, "item 1: "),
    ],
)
async def test_enqueue_many_names_the_bad_item(
    app: Conveyor, item: dict[str, object], error: type[Exception], message: str
) -> None:
    good = {"task": "email.send", "payload": {}}
    with pytest.raises(error, match=message):
        await app.enqueue_many([good, item, good])
    assert await nothing_stored(app)


def vars_of(new: object) -> dict[str, object]:
    return {name: getattr(new, name) for name in new.__slots__}  # type: ignore[attr-defined]


def test_id_suffixes_are_like_job_ids() -> None:
    suffixes = new_id_suffixes(1000)
    assert len(set(suffixes)) == 1000
    assert {len(s) for s in suffixes} == {len(new_job_id("q")) - 2}
    assert all(re.fullmatch(r"[A-Za-z0-9_-]+", s) for s in suffixes)
    assert new_id_suffixes(0) == []


async def test_dedupe_returns_existing_job(app: Conveyor) -> None:
    a = await app.enqueue("email.send", {"v": 1}, dedupe_key="welcome:42")
    b = await app.enqueue("email.send", {"v": 2}, dedupe_key="welcome:42")
    assert a.id == b.id and b.payload == {"v": 1}


def test_enqueue_sync_for_plain_code(tmp_path: object) -> None:
    app = Conveyor(f"sqlite:///{tmp_path}/sync.db")
    job = app.enqueue_sync("report.build", {"n": 1}, queue="reports")
    assert app.get_job_sync(job.id).payload == {"n": 1}
    assert [j.state for j in app.enqueue_many_sync([{"task": "x", "queue": "reports"}])] == [
        JobState.PENDING
    ]


def test_registration_errors_are_config_errors() -> None:
    app = Conveyor("memory://")
    with pytest.raises(ConfigError, match="max_attempts"):
        app.task("t", max_attempts=0)
    with pytest.raises(ConfigError, match="queue name"):
        app.task("t", queue="a b")

    @app.task("dup")
    def one(job: object) -> None: ...

    with pytest.raises(ConfigError, match="registered twice"):
        app.task("dup")(lambda job: None)


def test_nothing_reads_environment_until_used(monkeypatch: pytest.MonkeyPatch) -> None:
    app = Conveyor()
    monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:1/0")
    assert app.url == "redis://127.0.0.1:1/0"
