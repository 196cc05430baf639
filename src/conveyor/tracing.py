"""Where tracing hooks into the app and the worker, without depending on a tracer.

`conveyor.otel.instrument(app)` (the `conveyor-jobs[otel]` extra) sets `app.tracing` to
an OpenTelemetry implementation of `Tracing`; without it `app.tracing` is None and
nothing here costs more than one dict lookup per job.

The trace context travels inside the stored payload, under `TRACE_KEY` (a W3C
`traceparent` carrier), because that is the one field every engine already stores and
copies atomically with the job; the worker removes it before the handler (or the
payload model) sees the payload.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from contextlib import AbstractContextManager
from typing import Any, Protocol

import orjson

from .engines import Outcome
from .job import Job

TRACE_KEY = "_conveyor_trace"

# Called with the attempt's outcome kind and, for a failed attempt, its error message.
RecordOutcome = Callable[[str, str | None], None]


class Tracing(Protocol):
    """What the app and the worker call when tracing is on."""

    def enqueued(self, task: str, queue: str, job_id: str) -> dict[str, str] | None:
        """Record the enqueue (a span, child of the current context) and return the
        carrier that makes the job's attempts its children (None: nothing to carry)."""
        ...

    def attempt(
        self, job: Job[Any], carrier: dict[str, str] | None
    ) -> AbstractContextManager[RecordOutcome]:
        """A span around one attempt, child of the enqueue span in `carrier`."""
        ...


def take_carrier(job: Job[Any]) -> dict[str, str] | None:
    """Remove the trace carrier from `job.payload` (whether or not this worker traces),
    so handlers and payload models see the payload they were given."""
    payload = job.payload
    if type(payload) is dict and TRACE_KEY in payload:
        carrier = payload.pop(TRACE_KEY)
        return carrier if isinstance(carrier, dict) else None
    return None


def without_trace(payload: Any) -> Any:
    """`payload` without the trace carrier (to compare two stored payloads)."""
    if isinstance(payload, dict) and TRACE_KEY in payload:
        return {k: v for k, v in payload.items() if k != TRACE_KEY}
    return payload


async def traced(
    tracing: Tracing,
    job: Job[Any],
    carrier: dict[str, str] | None,
    run: Callable[[Job[Any]], Awaitable[Outcome]],
) -> Outcome:
    """Run one attempt (`run(job)`) inside its span and record how it ended."""
    with tracing.attempt(job, carrier) as record:
        outcome = await run(job)
        record(outcome.kind, _message(outcome.error_json))
        return outcome


def _message(error_json: str | None) -> str | None:
    if not error_json:
        return None
    try:
        return str(orjson.loads(error_json).get("message"))
    except (orjson.JSONDecodeError, AttributeError):
        return None
