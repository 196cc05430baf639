"""Retry delays: fixed, exponential (base, cap, jitter) and explicit lists.

A policy maps the number of the attempt that just failed (1-based) to the delay in
seconds before the next one. Policies are plain values so they can be stored with
the job (`to_spec`) and rebuilt by any worker (`from_spec`).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeAlias

from .errors import ConfigError


@dataclass(frozen=True, slots=True)
class Fixed:
    """The same delay after every failed attempt."""

    delay: float = 1.0

    def delay_for(self, attempt: int) -> float:
        return self.delay

    def to_spec(self) -> dict[str, Any]:
        return {"kind": "fixed", "delay": self.delay}


@dataclass(frozen=True, slots=True)
class Exponential:
    """`base * factor**(attempt-1)`, capped at `cap`, with +/- `jitter` fraction."""

    base: float = 1.0
    factor: float = 2.0
    cap: float = 3600.0
    jitter: float = 0.1

    def delay_for(self, attempt: int) -> float:
        raw = min(self.cap, self.base * self.factor ** max(0, attempt - 1))
        if self.jitter:
            raw *= 1.0 + random.uniform(-self.jitter, self.jitter)
        return max(0.0, raw)

    def to_spec(self) -> dict[str, Any]:
        return {
            "kind": "exponential",
            "base": self.base,
            "factor": self.factor,
            "cap": self.cap,
            "jitter": self.jitter,
        }


@dataclass(frozen=True, slots=True)
class Schedule:
    """Explicit delays: the n-th failed attempt waits `delays[n-1]`; the last one repeats."""

    delays: tuple[float, ...]

    def delay_for(self, attempt: int) -> float:
        return self.delays[min(len(self.delays), max(1, attempt)) - 1]

    def to_spec(self) -> dict[str, Any]:
        return {"kind": "list", "delays": list(self.delays)}


Backoff: TypeAlias = Fixed | Exponential | Schedule
BackoffLike: TypeAlias = "Backoff | Sequence[float] | float | int | str | dict[str, Any] | None"

DEFAULT_BACKOFF: Backoff = Exponential()


def coerce(value: BackoffLike) -> Backoff:
    """Turn what users write into a policy.

    Accepts a policy object, a list of seconds (`[1, 5, 30]`), a number (fixed delay),
    `"fixed"` / `"exponential"`, a stored spec dict, or `None` (the default).

    Raises:
        ConfigError: the value is not a valid backoff.
    """
    if value is None:
        return DEFAULT_BACKOFF
    if isinstance(value, Fixed | Exponential | Schedule):
        return value
    if isinstance(value, bool):
        raise ConfigError(f"backoff={value!r} is not valid: use seconds, a list or a policy")
    if isinstance(value, int | float):
        return Fixed(_non_negative(float(value)))
    if isinstance(value, str):
        if value == "fixed":
            return Fixed()
        if value == "exponential":
            return Exponential()
        raise ConfigError(f"backoff={value!r} is unknown: use 'fixed', 'exponential' or a list")
    if isinstance(value, dict):
        return from_spec(value)
    delays = tuple(_non_negative(float(d)) for d in value)
    if not delays:
        raise ConfigError("backoff=[] is empty: give at least one delay in seconds")
    return Schedule(delays)


def from_spec(spec: dict[str, Any]) -> Backoff:
    """Rebuild a policy from `to_spec()` output.

    Raises:
        ConfigError: the spec is not one this version understands.
    """
    try:
        kind = spec["kind"]
        if kind == "fixed":
            return Fixed(float(spec["delay"]))
        if kind == "exponential":
            return Exponential(
                float(spec["base"]),
                float(spec["factor"]),
                float(spec["cap"]),
                float(spec["jitter"]),
            )
        if kind == "list":
            return Schedule(tuple(float(d) for d in spec["delays"]))
    except (KeyError, TypeError, ValueError) as exc:
        raise ConfigError(f"backoff spec {spec!r} is malformed: {exc}") from exc
    raise ConfigError(f"backoff kind {spec.get('kind')!r} is unknown")


def _non_negative(delay: float) -> float:
    if delay < 0 or delay != delay:  # NaN check without importing math
        raise ConfigError(f"backoff delay {delay} is invalid: delays are seconds >= 0")
    return delay
