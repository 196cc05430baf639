"""Issue 14 item 10: OpenTelemetry context goes from enqueue into the job, and each
attempt gets a span (child of the enqueue span) with task, queue, attempt and outcome.

Spans are collected with the SDK's in-memory exporter; the engine is memory://.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from pydantic import BaseModel

from conveyor import Conveyor, Job, JobState, Worker
from conveyor.clock import FakeClock
from conveyor.otel import instrument
from conveyor.tracing import TRACE_KEY


class Ping(BaseModel):
    n: int


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def provider(exporter: InMemorySpanExporter) -> TracerProvider:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider


@pytest.fixture
def app(provider: TracerProvider) -> Conveyor:
    app = Conveyor("memory://", clock=FakeClock())
    instrument(app, tracer_provider=provider)
    return app


async def burst(app: Conveyor) -> None:
    await asyncio.wait_for(Worker(app, queues=("default",), burst=True).run(), 10)


def by_name(exporter: InMemorySpanExporter) -> dict[str, list[ReadableSpan]]:
    out: dict[str, list[ReadableSpan]] = {}
    for span in exporter.get_finished_spans():
        out.setdefault(span.name, []).append(span)
    return out


async def test_attempt_spans_are_children_of_the_enqueue_span_inside_the_request(
    app: Conveyor, provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    seen: list[Any] = []

    @app.task("ping", max_attempts=3, backoff=0)
    async def ping(job: Job[Ping]) -> int:
        seen.append(job.payload)
        if job.attempt == 1:
            raise ConnectionError("first try fails")
        return job.payload.n

    tracer = provider.get_tracer("test")
    with tracer.start_as_current_span("POST /orders") as request:
        job = await app.enqueue("ping", {"n": 7}, tenant="acme")
    await burst(app)
    assert (await app.get_job(job.id)).state == JobState.COMPLETED
    assert seen == [Ping(n=7), Ping(n=7)]  # the carrier never reaches the handler/model

    spans = by_name(exporter)
    (enqueue,) = spans["enqueue ping"]
    assert enqueue.kind == trace.SpanKind.PRODUCER
    assert enqueue.parent is not None
    assert enqueue.parent.span_id == request.get_span_context().span_id
    assert enqueue.attributes is not None and enqueue.attributes["conveyor.job_id"] == job.id

    first, second = sorted(spans["run ping"], key=lambda s: s.start_time or 0)
    for attempt, span in ((1, first), (2, second)):
        assert span.kind == trace.SpanKind.CONSUMER
        assert span.context is not None and enqueue.context is not None
        assert span.context.trace_id == enqueue.context.trace_id
        assert span.parent is not None and span.parent.span_id == enqueue.context.span_id
        assert span.attributes is not None
        assert span.attributes["conveyor.task"] == "ping"
        assert span.attributes["conveyor.queue"] == "default"
        assert span.attributes["conveyor.attempt"] == attempt
        assert span.attributes["conveyor.tenant"] == "acme"
    assert first.attributes is not None and first.attributes["conveyor.outcome"] == "retry"
    assert first.status.status_code == trace.StatusCode.ERROR
    assert first.status.description == "first try fails"
    assert second.attributes is not None and second.attributes["conveyor.outcome"] == "complete"
    assert second.status.status_code != trace.StatusCode.ERROR


async def test_spans_a_sync_handler_opens_are_children_of_its_attempt(
    app: Conveyor, provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    tracer = provider.get_tracer("handler")

    @app.task("work")
    def work(job: Job) -> None:
        with tracer.start_as_current_span("inside"):
            pass

    await app.enqueue("work", {})
    await burst(app)
    spans = by_name(exporter)
    (inside,), (attempt,) = spans["inside"], spans["run work"]
    assert inside.parent is not None and attempt.context is not None
    assert inside.parent.span_id == attempt.context.span_id


async def test_a_worker_without_tracing_still_hides_the_carrier(
    app: Conveyor, exporter: InMemorySpanExporter
) -> None:
    seen: list[dict[str, Any]] = []

    @app.task("plain")
    async def plain(job: Job) -> None:
        seen.append(dict(job.payload))

    job = await app.enqueue("plain", {"k": 1})
    assert TRACE_KEY in (await app.get_job(job.id)).payload  # stored with the job
    app.tracing = None  # this worker process does not trace
    await burst(app)
    assert seen == [{"k": 1}]


async def test_without_an_sdk_nothing_is_added_to_the_payload() -> None:
    app = Conveyor("memory://")
    instrument(app, tracer_provider=trace.NoOpTracerProvider())
    job = await app.enqueue("t", {"k": 1}, queue="default")
    assert (await app.get_job(job.id)).payload == {"k": 1}
    await app.close()
