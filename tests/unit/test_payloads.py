"""Issue 14 items 2 and 3: strict JSON both ways, and typed payloads (pydantic models).

Memory engine, fake clock, a burst worker: no I/O, no sleeps.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
from typing import Any

import pytest
from pydantic import BaseModel, Field

from conveyor import ConfigError, Conveyor, InvalidPayload, Job, JobState, Worker
from conveyor.clock import FakeClock


class Email(BaseModel):
    to: str = Field(pattern=r"^[^@]+@[^@]+$")
    subject: str
    send_at: dt.datetime | None = None


class Sent(BaseModel):
    message_id: str
    to: str


@pytest.fixture
def app() -> Conveyor:
    return Conveyor("memory://", clock=FakeClock())


async def burst(app: Conveyor) -> None:
    await asyncio.wait_for(Worker(app, queues=("default",), burst=True).run(), 10)


# --- 3. strict JSON -------------------------------------------------------------------------
@dataclasses.dataclass
class Point:
    x: int


@pytest.mark.parametrize(
    ("value", "says"),
    [
        (float("nan"), "NaN or Infinity"),
        (float("inf"), "NaN or Infinity"),
        ([1.0, float("-inf")], "NaN or Infinity"),
        (dt.datetime(2026, 1, 1, tzinfo=dt.UTC), "datetime"),
        (dt.date(2026, 1, 1), "date"),
        ({1: "one"}, "Dict key must be str"),
        ({1, 2}, "set"),
        (b"raw", "bytes"),
        (Point(1), "Point"),
        (2**70, "64-bit"),
    ],
)
async def test_a_payload_that_is_not_strict_json_is_refused(
    app: Conveyor, value: Any, says: str
) -> None:
    with pytest.raises(InvalidPayload, match="not strict JSON") as caught:
        await app.enqueue("t", {"k": value}, queue="default")
    assert says in str(caught.value)
    assert await app.queue_names() == [] or (await app.counts("default")).pending == 0


async def test_null_and_finite_floats_still_pass(app: Conveyor) -> None:
    job = await app.enqueue("t", {"a": None, "b": 1.5, "c": [None, 2]}, queue="default")
    assert (await app.get_job(job.id)).payload == {"a": None, "b": 1.5, "c": [None, 2]}
    # reads back different (a tuple becomes a list) but holds no NaN: still accepted
    job = await app.enqueue("t", {"t": (1, None)}, queue="default")
    assert (await app.get_job(job.id)).payload == {"t": [1, None]}


async def test_nan_next_to_null_is_still_found(app: Conveyor) -> None:
    with pytest.raises(InvalidPayload, match="NaN or Infinity"):
        await app.enqueue("t", {"a": None, "b": [None, float("nan")]}, queue="default")


async def test_a_result_that_is_not_json_fails_the_attempt_with_invalid_result(
    app: Conveyor,
) -> None:
    @app.task("bad", max_attempts=1)
    async def bad(job: Job) -> Any:
        return {1, 2, 3}

    job = await app.enqueue("bad", {})
    await burst(app)
    stored = await app.get_job(job.id)
    assert stored.state == JobState.FAILED and stored.result is None
    assert stored.errors[-1].type == "InvalidResult"
    assert "returned set" in stored.errors[-1].message
    assert "not JSON serializable: set" in stored.errors[-1].message


async def test_a_nan_result_is_refused_not_stored_as_null(app: Conveyor) -> None:
    @app.task("nan", max_attempts=2, backoff=0)
    async def nan(job: Job) -> Any:
        return {"ratio": float("nan")}

    job = await app.enqueue("nan", {})
    await burst(app)
    stored = await app.get_job(job.id)
    assert stored.state == JobState.FAILED and stored.attempt == 2  # retried, like any error
    assert [e.type for e in stored.errors] == ["InvalidResult", "InvalidResult"]
    assert "NaN or Infinity" in stored.errors[-1].message


# --- 2. typed payloads ----------------------------------------------------------------------
async def test_an_invalid_typed_payload_names_the_field_and_enqueues_nothing(
    app: Conveyor,
) -> None:
    @app.task("email.send", payload=Email)
    async def send(job: Job[Email]) -> None: ...

    with pytest.raises(InvalidPayload, match="subject: Field required") as caught:
        await app.enqueue("email.send", {"to": "a@example.com"})
    assert caught.value.fields == {"subject": "Field required"}
    with pytest.raises(InvalidPayload) as caught:
        await app.enqueue("email.send", {"to": "nobody", "subject": "hi"})
    assert list(caught.value.fields) == ["to"]
    with pytest.raises(InvalidPayload, match="to: Field required"):
        await app.enqueue("email.send")  # no payload is an empty one, checked too
    assert await app.queue_names() == [] or (await app.counts("default")).pending == 0


async def test_the_handler_receives_the_model_and_may_return_one(app: Conveyor) -> None:
    seen: list[Any] = []

    @app.task("email.send")  # the model comes from the annotation alone
    async def send(job: Job[Email]) -> Sent:
        seen.append(job.payload)
        return Sent(message_id="m-1", to=job.payload.to)

    when = dt.datetime(2026, 1, 2, 3, 4, tzinfo=dt.UTC)
    job = await app.enqueue("email.send", Email(to="a@example.com", subject="hi", send_at=when))
    # stored as the model's JSON: the datetime as the model writes it, not refused
    assert (await app.get_job(job.id)).payload["send_at"] == "2026-01-02T03:04:00Z"
    await burst(app)
    assert seen == [Email(to="a@example.com", subject="hi", send_at=when)]
    stored = await app.get_job(job.id)
    assert stored.state == JobState.COMPLETED
    assert stored.result == {"message_id": "m-1", "to": "a@example.com"}


async def test_sync_handlers_and_enqueue_many_are_typed_too(app: Conveyor) -> None:
    seen: list[Any] = []

    @app.task("email.sync", payload=Email)
    def send(job: Job[Email]) -> None:
        seen.append(type(job.payload))

    await app.enqueue_many([{"task": "email.sync", "payload": {"to": "a@b.c", "subject": "s"}}])
    with pytest.raises(InvalidPayload, match="item 1") as caught:
        await app.enqueue_many(
            [
                {"task": "email.sync", "payload": {"to": "a@b.c", "subject": "s"}},
                {"task": "email.sync", "payload": {"to": "a@b.c"}},
            ]
        )
    assert caught.value.fields == {"subject": "Field required"}
    await burst(app)
    assert seen == [Email]


async def test_a_stored_payload_that_does_not_fit_fails_the_job_once(app: Conveyor) -> None:
    """A producer that enqueued by name, without the model, cannot make the worker crash
    or retry forever: the job fails at once, saying which field is wrong."""

    @app.task("email.send", max_attempts=5)
    async def send(job: Job[Email]) -> None: ...

    other = Conveyor("memory://")  # a producer without the task builds the job
    new = other.build("email.send", {"to": "a@b.c"}, queue="default")
    await (await app.connect()).enqueue([new])
    await burst(app)
    stored = await app.get_job(new.id)
    assert stored.state == JobState.FAILED and stored.attempt == 1
    assert stored.errors[-1].type == "InvalidPayload"
    assert "subject: Field required" in stored.errors[-1].message


async def test_untyped_tasks_keep_their_dict(app: Conveyor) -> None:
    seen: list[Any] = []

    @app.task("plain")
    async def plain(job: Job) -> None:
        seen.append(job.payload)

    await app.enqueue("plain", {"anything": [1, "two"]})
    await burst(app)
    assert seen == [{"anything": [1, "two"]}]


def test_a_payload_option_that_is_not_a_model_or_disagrees_is_a_config_error(
    app: Conveyor,
) -> None:
    with pytest.raises(ConfigError, match="not a pydantic model"):

        @app.task("x", payload=dict)  # type: ignore[arg-type]
        async def x(job: Job) -> None: ...

    with pytest.raises(ConfigError, match="disagrees"):

        @app.task("y", payload=Sent)
        async def y(job: Job[Email]) -> None: ...


def test_a_schedule_of_a_typed_task_with_a_bad_payload_fails_at_start_up(app: Conveyor) -> None:
    @app.task("email.send")
    async def send(job: Job[Email]) -> None: ...

    with pytest.raises(ConfigError, match="subject: Field required"):
        app.every(60, task="email.send", payload={"to": "a@b.c"})
