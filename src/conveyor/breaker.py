"""Circuit breakers: stop calling a dependency that keeps failing, try again later.

```python
smtp = app.breaker("smtp", failure_threshold=5, reset_timeout=60)

@app.task("email.send")
async def send(job: Job) -> None:
    async with smtp:               # or `with smtp:` in a sync handler, or @smtp
        await deliver(job.payload)
```

States, as opossum and pybreaker have them:

* **closed** (0): calls go through. `failure_threshold` failures in a row open it.
* **open** (1): calls fail fast with `BreakerOpen` without touching the dependency.
  A handler that lets it propagate has its job *deferred* by the worker until the
  breaker half-opens, without spending an attempt (see `RateLimited`).
* **half-open** (2): `reset_timeout` seconds after opening, one trial call goes through
  (others still get `BreakerOpen`). Its success closes the breaker; its failure opens it
  for another `reset_timeout`.

The state is **per worker process** (held in memory, like opossum and pybreaker): each
process finds out on its own that a dependency is down, after `failure_threshold`
failures of its own. That costs a few failed calls per process and needs no round trip
per call; fleet-wide limits belong to the engine (`app.limits`). Each worker exports the
state as `conveyor_circuit_state{name}` and lists it under `/health/detailed`
"dependencies".

What counts as a failure: any exception except `RateLimited` (the dependency answered,
it said "not now"), the types in `exclude`, and cancellation (a shutdown or a job
timeout says nothing about the dependency).
"""

from __future__ import annotations

import functools
import inspect
import threading
from collections.abc import Callable
from types import TracebackType
from typing import Any, Literal, TypeVar

from .clock import Clock
from .errors import BreakerOpen, ConfigError, RateLimited

State = Literal["closed", "open", "half-open"]
STATE_VALUES: dict[State, int] = {"closed": 0, "open": 1, "half-open": 2}
F = TypeVar("F", bound=Callable[..., Any])


class CircuitBreaker:
    """A circuit breaker around one dependency (see the module docstring).

    Args:
        name: what it protects ("smtp", "stripe"): the metric label and health key.
        failure_threshold: consecutive failures that open it (>= 1).
        reset_timeout: seconds it stays open before a trial call (> 0).
        exclude: exception types that are not the dependency's fault (e.g. a 404 for a
            record that does not exist): they pass through without counting.
        clock: time source (tests pass a `FakeClock`).

    Raises:
        ConfigError: an invalid threshold or timeout.
    """

    def __init__(
        self,
        name: str,
        *,
        failure_threshold: int = 5,
        reset_timeout: float = 60.0,
        exclude: tuple[type[BaseException], ...] = (),
        clock: Clock | None = None,
    ) -> None:
        if (
            isinstance(failure_threshold, bool)
            or not isinstance(failure_threshold, int)
            or failure_threshold < 1
        ):
            raise ConfigError(
                f"breaker {name!r}: failure_threshold={failure_threshold!r} is invalid: "
                "use an integer >= 1"
            )
        if (
            isinstance(reset_timeout, bool)
            or not isinstance(reset_timeout, int | float)
            or not reset_timeout > 0
        ):
            raise ConfigError(
                f"breaker {name!r}: reset_timeout={reset_timeout!r} is invalid: use seconds > 0"
            )
        self.name = name
        self.failure_threshold = failure_threshold
        self.reset_timeout = float(reset_timeout)
        self.exclude = exclude
        self.clock = clock or Clock()
        # Sync handlers run in a thread pool: every transition happens under this lock.
        self._lock = threading.Lock()
        self._failures = 0  # consecutive, while closed
        self._opened_at: float | None = None  # monotonic; None while closed
        self._opened_wall: float | None = None  # wall clock, for people
        self._trial = False  # a half-open trial call is in flight

    # --- state ------------------------------------------------------------------------
    @property
    def state(self) -> State:
        """closed, open or half-open (an open breaker half-opens by itself in time)."""
        with self._lock:
            return self._state()

    def _state(self) -> State:
        if self._opened_at is None:
            return "closed"
        if self.clock.monotonic() - self._opened_at >= self.reset_timeout:
            return "half-open"
        return "open"

    def retry_after(self) -> float:
        """Seconds until a call may go through again (0 when closed)."""
        with self._lock:
            return self._retry_after()

    def _retry_after(self) -> float:
        if self._opened_at is None:
            return 0.0
        left = self._opened_at + self.reset_timeout - self.clock.monotonic()
        # Half-open with a trial in flight: look again soon, the trial decides.
        return left if left > 0 else min(1.0, self.reset_timeout)

    def info(self) -> dict[str, Any]:
        """What /health/detailed shows under "dependencies"."""
        with self._lock:
            return {
                "state": self._state(),
                "failures": self._failures,
                "failure_threshold": self.failure_threshold,
                "reset_timeout": self.reset_timeout,
                "opened_at": self._opened_wall,
                "retry_after": round(self._retry_after(), 3),
            }

    def reset(self) -> None:
        """Close the breaker now (tests, or an operator who knows it is back)."""
        with self._lock:
            self._close()

    # --- the protocol of a call ---------------------------------------------------------
    def before(self) -> None:
        """Call before using the dependency.

        Raises:
            BreakerOpen: the breaker is open, or half-open with its trial call in flight.
        """
        with self._lock:
            state = self._state()
            if state == "closed":
                return
            if state == "half-open" and not self._trial:
                self._trial = True  # this call is the trial; the others wait
                return
            raise BreakerOpen(self.name, self._retry_after())

    def success(self) -> None:
        """The call succeeded: a half-open breaker closes, the failure count restarts."""
        with self._lock:
            self._close()

    def failure(self, exc: BaseException | None = None) -> None:
        """The call failed with `exc` (ignored if it does not count, see the module)."""
        if exc is not None and not self._counts(exc):
            self.release()
            return
        with self._lock:
            if self._trial or self._opened_at is not None:
                self._open()  # the trial failed: another full reset_timeout
                return
            self._failures += 1
            if self._failures >= self.failure_threshold:
                self._open()

    def release(self) -> None:
        """The call ended without saying anything about the dependency (cancelled, or an
        excluded error): a half-open trial slot is given back."""
        with self._lock:
            self._trial = False

    def _counts(self, exc: BaseException) -> bool:
        return isinstance(exc, Exception) and not isinstance(exc, (RateLimited, *self.exclude))

    def _open(self) -> None:
        self._opened_at = self.clock.monotonic()
        self._opened_wall = self.clock.now()
        self._trial = False

    def _close(self) -> None:
        self._failures = 0
        self._opened_at = None
        self._opened_wall = None
        self._trial = False

    def _exit(self, exc: BaseException | None) -> None:
        if exc is None:
            self.success()
        elif self._counts(exc):
            self.failure(exc)
        else:
            self.release()

    # --- ways to use it -------------------------------------------------------------------
    def __enter__(self) -> CircuitBreaker:
        self.before()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._exit(exc)

    async def __aenter__(self) -> CircuitBreaker:
        self.before()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._exit(exc)

    def __call__(self, fn: F) -> F:
        """Use as a decorator on a sync or async function."""
        if inspect.iscoroutinefunction(fn):

            @functools.wraps(fn)
            async def run_async(*args: Any, **kwargs: Any) -> Any:
                async with self:
                    return await fn(*args, **kwargs)

            return run_async  # type: ignore[return-value]

        @functools.wraps(fn)
        def run(*args: Any, **kwargs: Any) -> Any:
            with self:
                return fn(*args, **kwargs)

        return run  # type: ignore[return-value]

    def __repr__(self) -> str:
        return f"<CircuitBreaker {self.name!r} {self.state}>"
