"""Prometheus metrics, with a configurable name prefix (default `conveyor_`).

Each worker owns a `Metrics` with its own registry, so two workers in one process
(tests) never collide. Names here are the contract for `ops/` alert rules and the
Grafana dashboard; `tests/unit/test_ops_assets.py` checks they match.

A worker without a health server has nobody to read its metrics: it records into
`Unexported` instead, and prometheus_client (imported by `Metrics` only) is never loaded,
~5% of a Redis worker's start-up instructions (issue 15, point 7; bench/RESULTS.md).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Protocol

from .engines import QueueCounts

if TYPE_CHECKING:
    from prometheus_client import Counter, Histogram

    from .breaker import CircuitBreaker

DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)
STATES = ("scheduled", "pending", "running", "completed", "failed", "cancelled")

# name (without prefix) -> (type, help); the README's metrics table is generated from this.
METRICS: dict[str, tuple[str, str]] = {
    "jobs_processed_total": ("counter", "Jobs completed successfully, by queue and task"),
    "jobs_failed_total": ("counter", "Jobs that reached the failed (dead-letter) state"),
    "jobs_retried_total": ("counter", "Failed attempts that were scheduled for a retry"),
    "jobs_released_total": ("counter", "Jobs handed back unfinished at shutdown"),
    "jobs_deferred_total": (
        "counter",
        "Jobs deferred without spending an attempt (rate limited, circuit breaker open)",
    ),
    "jobs_stalled_total": ("counter", "Expired leases this worker recovered (crashed peers)"),
    "job_duration_seconds": ("histogram", "Handler run time per attempt, by queue and task"),
    "queue_depth": ("gauge", "Jobs per queue and state (sampled by each worker)"),
    "dead_letter_depth": ("gauge", "Jobs in the failed state, per queue"),
    "oldest_pending_age_seconds": ("gauge", "Age of the oldest pending job, per queue"),
    "queue_paused": ("gauge", "1 while the queue is paused"),
    "jobs_in_flight": ("gauge", "Jobs this worker is running now"),
    "concurrency_limit": ("gauge", "Jobs this worker may run at once"),
    "engine_up": ("gauge", "1 when the engine answered the last call, else 0"),
    "circuit_state": (
        "gauge",
        "Circuit breaker state in this worker process: 0 closed, 1 open, 2 half-open",
    ),
}


class Metrics:
    """The metric objects of one worker."""

    def __init__(self, prefix: str = "conveyor_") -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.prefix = prefix
        self.registry = CollectorRegistry(auto_describe=True)
        r, p = self.registry, prefix
        labels = ("queue", "task")
        self.processed = Counter(
            p + "jobs_processed", METRICS["jobs_processed_total"][1], labels, registry=r
        )
        self.failed = Counter(
            p + "jobs_failed", METRICS["jobs_failed_total"][1], labels, registry=r
        )
        self.retried = Counter(
            p + "jobs_retried", METRICS["jobs_retried_total"][1], labels, registry=r
        )
        self.released = Counter(
            p + "jobs_released", METRICS["jobs_released_total"][1], labels, registry=r
        )
        self.deferred = Counter(
            p + "jobs_deferred", METRICS["jobs_deferred_total"][1], labels, registry=r
        )
        self.stalled = Counter(p + "jobs_stalled", METRICS["jobs_stalled_total"][1], registry=r)
        self.duration = Histogram(
            p + "job_duration_seconds",
            METRICS["job_duration_seconds"][1],
            labels,
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.depth = Gauge(
            p + "queue_depth", METRICS["queue_depth"][1], ("queue", "state"), registry=r
        )
        self.dead_letter = Gauge(
            p + "dead_letter_depth", METRICS["dead_letter_depth"][1], ("queue",), registry=r
        )
        self.oldest = Gauge(
            p + "oldest_pending_age_seconds",
            METRICS["oldest_pending_age_seconds"][1],
            ("queue",),
            registry=r,
        )
        self.paused = Gauge(p + "queue_paused", METRICS["queue_paused"][1], ("queue",), registry=r)
        self.in_flight = Gauge(p + "jobs_in_flight", METRICS["jobs_in_flight"][1], registry=r)
        self.concurrency = Gauge(
            p + "concurrency_limit", METRICS["concurrency_limit"][1], registry=r
        )
        self._children: dict[tuple[str, str, str], tuple[Counter, Histogram]] = {}
        self.engine_up = Gauge(p + "engine_up", METRICS["engine_up"][1], registry=r)
        self.circuit = Gauge(
            p + "circuit_state", METRICS["circuit_state"][1], ("name",), registry=r
        )

    def record_outcome(self, kind: str, queue: str, task: str, seconds: float | None) -> None:
        """Count one finished run (`complete`, `fail`, `retry`, `release`, `defer`)."""
        # `labels()` costs a lock and a tuple hash per call; this runs once per job, so
        # the children are looked up once per (kind, queue, task) and kept.
        key = (kind, queue, task)
        children = self._children.get(key)
        if children is None:
            counter = {
                "complete": self.processed,
                "fail": self.failed,
                "retry": self.retried,
                "release": self.released,
                "defer": self.deferred,
            }[kind]
            children = self._children[key] = (
                counter.labels(queue, task),
                self.duration.labels(queue, task),
            )
        children[0].inc()
        if seconds is not None and kind not in ("release", "defer"):  # not attempts
            children[1].observe(seconds)

    def record_depths(self, counts: Iterable[QueueCounts], now_ms: int) -> None:
        """Update the queue gauges from a fresh read of the engine."""
        for c in counts:
            for state in STATES:
                self.depth.labels(c.queue, state).set(getattr(c, state))
            self.dead_letter.labels(c.queue).set(c.failed)
            self.paused.labels(c.queue).set(1 if c.paused else 0)
            age = (
                0.0 if c.oldest_pending_ms is None else max(0, now_ms - c.oldest_pending_ms) / 1000
            )
            self.oldest.labels(c.queue).set(age)

    def record_breakers(self, breakers: Iterable[CircuitBreaker]) -> None:
        """Set `circuit_state{name}` from each breaker's current state."""
        from .breaker import STATE_VALUES

        for breaker in breakers:
            self.circuit.labels(breaker.name).set(STATE_VALUES[breaker.state])

    def exposition(self) -> bytes:
        """The Prometheus text format of every metric."""
        from prometheus_client import generate_latest

        return generate_latest(self.registry)

    def names(self) -> list[str]:
        """Every exported sample family name (with prefix)."""
        return [self.prefix + name for name in METRICS]


class GaugeLike(Protocol):
    """What a worker does with a gauge."""

    def set(self, value: float) -> None: ...


class CounterLike(Protocol):
    """What a worker does with a counter."""

    def inc(self, amount: float = 1) -> None: ...


class WorkerMetrics(Protocol):
    """What a worker and its health server use of `Metrics` (`Unexported` too)."""

    @property
    def in_flight(self) -> GaugeLike: ...
    @property
    def concurrency(self) -> GaugeLike: ...
    @property
    def engine_up(self) -> GaugeLike: ...
    @property
    def stalled(self) -> CounterLike: ...
    def record_outcome(self, kind: str, queue: str, task: str, seconds: float | None) -> None: ...
    def record_depths(self, counts: Iterable[QueueCounts], now_ms: int) -> None: ...
    def record_breakers(self, breakers: Iterable[CircuitBreaker]) -> None: ...
    def exposition(self) -> bytes: ...


class _Nothing:
    """A gauge and a counter that keep nothing."""

    def set(self, value: float) -> None:
        pass

    def inc(self, amount: float = 1) -> None:
        pass


class Unexported:
    """The metrics of a worker that serves none (no health server): every record is
    dropped, and prometheus_client is not imported."""

    def __init__(self) -> None:
        self.in_flight = self.concurrency = self.engine_up = self.stalled = _Nothing()

    def record_outcome(self, kind: str, queue: str, task: str, seconds: float | None) -> None:
        """Dropped."""

    def record_depths(self, counts: Iterable[QueueCounts], now_ms: int) -> None:
        """Dropped."""

    def record_breakers(self, breakers: Iterable[CircuitBreaker]) -> None:
        """Dropped."""

    def exposition(self) -> bytes:
        """Nothing to expose."""
        return b""
