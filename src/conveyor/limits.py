"""Fleet-wide queue limits: what they are, how people write them, how layers combine.

A queue's limits (running jobs per queue and per tenant, jobs started per window per
queue and per tenant) are values the app and the CLI build from user input and the
engine stores and enforces (see `conveyor.engines.base` for what each limit means to a
claim). They live here, above storage, so the CLI, the worker and the settings parse
and merge them one way and the engines only read and write them.

Limits come from three places, combined by `merge_limits`, later layers winning field
by field (a rate and its window travel together):

* code: `app.limits("mail", concurrency=5)`;
* flags and environment of `conveyor worker` (`--rate`, `CONVEYOR_RATE`, ...);
* what is stored in the engine (`conveyor limits mail --rate 10/1s` changes only the
  fields it names; `--clear` starts from no limits).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from .errors import ConfigError

_RATE = re.compile(r"^\s*(\d+)\s*/\s*(\d+(?:\.\d+)?)?\s*(ms|s|m|h)\s*$")
_UNIT_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000}
MAX_LIMIT = 100_000  # the rate log keeps one entry per start inside the window
MAX_WINDOW_MS = 86_400_000


def parse_rate(text: str, *, option: str = "rate") -> tuple[int, int]:
    """Read a rate such as ``"100/1s"``, ``"100/s"``, ``"5/250ms"``, ``"1000/1m"``.

    Returns:
        (jobs, window in milliseconds).

    Raises:
        ConfigError: not of the form N/<window>; the message shows the forms.
    """
    match = _RATE.match(text) if isinstance(text, str) else None
    fix = (
        f"{option}={text!r} is invalid: use JOBS/WINDOW such as 100/1s, 100/s, 5/250ms, "
        f"1000/1m or 10/1h (JOBS from 1 to {MAX_LIMIT:,}, WINDOW from 1ms to 24h)"
    )
    if match is None:
        raise ConfigError(fix)
    jobs = int(match.group(1))
    window_ms = round(float(match.group(2) or 1) * _UNIT_MS[match.group(3)])
    if not 1 <= jobs <= MAX_LIMIT or not 1 <= window_ms <= MAX_WINDOW_MS:
        raise ConfigError(fix)
    return jobs, window_ms


def format_rate(jobs: int | None, window_ms: int) -> str | None:
    """The inverse of `parse_rate`: (100, 1000) -> "100/1s"; None when `jobs` is None."""
    if jobs is None:
        return None
    for unit in ("h", "m", "s"):
        if window_ms % _UNIT_MS[unit] == 0:
            return f"{jobs}/{window_ms // _UNIT_MS[unit]}{unit}"
    return f"{jobs}/{window_ms}ms"


@dataclass(frozen=True, slots=True)
class QueueLimits:
    """Fleet-wide limits of one queue, stored and enforced by the engine.

    Every field is optional (None = no limit); see `conveyor.engines.base` for what each
    one means to a claim. Build one from user input with `QueueLimits.build`, which
    parses rates.

    Raises:
        ConfigError: a value is not a positive integer in range (the message names it).
    """

    concurrency: int | None = None  # running jobs of the queue, across all workers
    tenant_concurrency: int | None = None  # running jobs of one tenant
    rate: int | None = None  # jobs started per `rate_window_ms`, queue-wide
    rate_window_ms: int = 1000
    tenant_rate: int | None = None  # jobs started per `tenant_rate_window_ms`, per tenant
    tenant_rate_window_ms: int = 1000

    def __post_init__(self) -> None:
        for name in ("concurrency", "tenant_concurrency", "rate", "tenant_rate"):
            value = getattr(self, name)
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_LIMIT
            ):
                raise ConfigError(
                    f"{name}={value!r} is invalid: use an integer from 1 to {MAX_LIMIT:,}, "
                    "or leave it unset for no limit (pause the queue to stop it)"
                )
        for name in ("rate_window_ms", "tenant_rate_window_ms"):
            value = getattr(self, name)
            if (
                isinstance(value, bool)
                or not isinstance(value, int)
                or not 1 <= value <= MAX_WINDOW_MS
            ):
                raise ConfigError(f"{name}={value!r} is invalid: use 1 to {MAX_WINDOW_MS} ms")

    @classmethod
    def build(
        cls,
        *,
        concurrency: int | None = None,
        tenant_concurrency: int | None = None,
        rate: str | None = None,
        tenant_rate: str | None = None,
    ) -> QueueLimits:
        """Limits from user input; rates are strings like ``"100/1s"``.

        Raises:
            ConfigError: an invalid value; the message names the option and the fix.
        """
        rate_n, rate_ms = parse_rate(rate) if rate is not None else (None, 1000)
        trate_n, trate_ms = (
            parse_rate(tenant_rate, option="tenant_rate")
            if tenant_rate is not None
            else (None, 1000)
        )
        return cls(concurrency, tenant_concurrency, rate_n, rate_ms, trate_n, trate_ms)

    @property
    def empty(self) -> bool:
        """True when nothing is limited."""
        return (
            self.concurrency is None
            and self.tenant_concurrency is None
            and self.rate is None
            and self.tenant_rate is None
        )

    def to_dict(self) -> dict[str, Any]:
        """For people and JSON output: rates as ``"100/1s"`` strings."""
        return {
            "concurrency": self.concurrency,
            "tenant_concurrency": self.tenant_concurrency,
            "rate": format_rate(self.rate, self.rate_window_ms),
            "tenant_rate": format_rate(self.tenant_rate, self.tenant_rate_window_ms),
        }

    def fields(self) -> dict[str, int | None]:
        """For storage: every field as an integer (or None)."""
        return {
            "concurrency": self.concurrency,
            "tenant_concurrency": self.tenant_concurrency,
            "rate": self.rate,
            "rate_window_ms": self.rate_window_ms,
            "tenant_rate": self.tenant_rate,
            "tenant_rate_window_ms": self.tenant_rate_window_ms,
        }

    @classmethod
    def from_fields(cls, fields: dict[str, Any]) -> QueueLimits:
        """Inverse of `fields` (missing or empty values mean no limit)."""

        def opt(name: str) -> int | None:
            value = fields.get(name)
            return None if value in (None, "") else int(value)

        return cls(
            opt("concurrency"),
            opt("tenant_concurrency"),
            opt("rate"),
            opt("rate_window_ms") or 1000,
            opt("tenant_rate"),
            opt("tenant_rate_window_ms") or 1000,
        )


def merge_limits(*layers: QueueLimits | None) -> QueueLimits:
    """Combine limits from several places, later layers winning field by field.

    A field a later layer leaves unset (None) keeps the earlier layer's value; a rate
    and its window come from the same layer. `None` layers are skipped. Callers pass,
    in order: the stored limits or the app's `app.limits(...)`, then flags/environment.
    `conveyor limits --clear` passes an empty `QueueLimits()` instead of the stored ones.

    Args:
        *layers: limits in increasing order of precedence.

    Returns:
        The merged limits (empty when every layer is None or empty).
    """
    out = QueueLimits()
    for layer in layers:
        if layer is None:
            continue
        rate = layer if layer.rate is not None else out
        tenant_rate = layer if layer.tenant_rate is not None else out
        out = QueueLimits(
            layer.concurrency if layer.concurrency is not None else out.concurrency,
            (
                layer.tenant_concurrency
                if layer.tenant_concurrency is not None
                else out.tenant_concurrency
            ),
            rate.rate,
            rate.rate_window_ms,
            tenant_rate.tenant_rate,
            tenant_rate.tenant_rate_window_ms,
        )
    return out
