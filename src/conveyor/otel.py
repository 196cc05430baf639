"""OpenTelemetry traces for jobs (the `conveyor-jobs[otel]` extra).

```python
from conveyor.otel import instrument

instrument(app)      # in producers and in workers: the same app module is the natural place
```

* **Enqueue** (`app.enqueue`, `enqueue_many`, `POST /jobs`, schedules): a `PRODUCER` span
  `enqueue <task>`, child of whatever span is current (your request handler's, when
  FastAPI/Django/Flask are instrumented). Its context is stored with the job (see
  `conveyor.tracing`), through the globally configured propagator (W3C trace context
  by default).
* **Each attempt**: a `CONSUMER` span `run <task>` in the worker, child of the enqueue
  span, with `conveyor.task`, `conveyor.queue`, `conveyor.job_id`, `conveyor.attempt`,
  `conveyor.tenant` and `conveyor.outcome` (`complete`, `retry`, `fail`, `defer`,
  `release`); a failed attempt sets the span's status to ERROR with the error. Spans the
  handler opens are children of it (async and sync handlers alike).

Spans go to the tracer provider you configure (`opentelemetry-sdk` and an exporter);
`instrument` only uses the API.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import TYPE_CHECKING, Any

from opentelemetry import propagate, trace

from .tracing import RecordOutcome

if TYPE_CHECKING:
    from .app import Conveyor
    from .job import Job

_FAILED = frozenset({"retry", "fail"})


class OtelTracing:
    """`conveyor.tracing.Tracing` on the OpenTelemetry API.

    Args:
        tracer_provider: where spans go (default: the global provider).
    """

    def __init__(self, tracer_provider: trace.TracerProvider | None = None) -> None:
        self.tracer = trace.get_tracer("conveyor", tracer_provider=tracer_provider)

    def enqueued(self, task: str, queue: str, job_id: str) -> dict[str, str] | None:
        """Record a `PRODUCER` span for the enqueue, child of the current span.

        Returns:
            The propagator's carrier for that span, or None without a recording SDK.
        """
        attributes = {"conveyor.task": task, "conveyor.queue": queue, "conveyor.job_id": job_id}
        with self.tracer.start_as_current_span(
            f"enqueue {task}", kind=trace.SpanKind.PRODUCER, attributes=attributes
        ) as span:
            if not span.get_span_context().is_valid:  # no SDK configured: nothing to carry
                return None
            carrier: dict[str, str] = {}
            propagate.inject(carrier)
            return carrier or None

    def attempt(
        self, job: Job[Any], carrier: dict[str, str] | None
    ) -> AbstractContextManager[RecordOutcome]:
        """A `CONSUMER` span around one attempt, child of the span in `carrier`; what it
        yields records the outcome (attribute, and ERROR status for a failed attempt)."""
        return self._attempt(job, carrier)

    @contextmanager
    def _attempt(self, job: Job[Any], carrier: dict[str, str] | None) -> Iterator[RecordOutcome]:
        parent = propagate.extract(carrier) if carrier else None
        attributes: dict[str, str | int] = {
            "conveyor.task": job.task,
            "conveyor.queue": job.queue,
            "conveyor.job_id": job.id,
            "conveyor.attempt": job.attempt,
        }
        if job.tenant is not None:
            attributes["conveyor.tenant"] = job.tenant
        with self.tracer.start_as_current_span(
            f"run {job.task}", context=parent, kind=trace.SpanKind.CONSUMER, attributes=attributes
        ) as span:

            def record(kind: str, message: str | None) -> None:
                span.set_attribute("conveyor.outcome", kind)
                if kind in _FAILED:
                    span.set_status(trace.Status(trace.StatusCode.ERROR, message))

            yield record


def instrument(app: Conveyor, *, tracer_provider: trace.TracerProvider | None = None) -> None:
    """Trace `app`'s enqueues and job attempts with OpenTelemetry (see the module
    docstring). Call it once, where the app is defined.

    Args:
        app: the app.
        tracer_provider: where spans go (default: the global provider).
    """
    app.tracing = OtelTracing(tracer_provider)
