"""The operations read model: queue overviews and the incident-polling status document.

Shared by the CLI (`conveyor queues`, `conveyor status`), the HTTP API and the dashboard,
so all three show the same numbers computed the same way. Nothing here runs on the
worker's hot path: every function is an on-demand read through the app facade.

Also home to the duration helpers every operator-facing surface uses to read and show
ages (`--older-than 7d`, "oldest pending 3m12s").
"""

from __future__ import annotations

import asyncio
import re
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from .engines import QueueCounts
from .errors import ConfigError, EngineUnavailable
from .job import JobState
from .settings import redact

if TYPE_CHECKING:
    from collections.abc import Sequence

    from .app import Conveyor

__all__ = [
    "DEFAULT_STATUS_TIMEOUT",
    "format_duration",
    "overview_row",
    "parse_duration",
    "queue_overview",
    "status_document",
]

# How long `status_document` waits for the engine before reporting it unavailable. An
# incident poller must get an answer even when Redis is blackholed (no RST, just silence).
DEFAULT_STATUS_TIMEOUT = 5.0

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 604_800}
_PART = re.compile(r"(\d+(?:\.\d+)?)([smhdw])")
_PLAIN = re.compile(r"\d+(?:\.\d+)?")


def parse_duration(text: str) -> float:
    """Read a duration as operators write it: `7d`, `12h`, `30m`, `45s`, `1h30m` or `90`.

    Args:
        text: a number of seconds, or numbers each followed by a unit (`s`, `m`, `h`, `d`,
            `w`), largest first or in any order; surrounding blanks are ignored.

    Returns:
        The duration in seconds (>= 0).

    Raises:
        ConfigError: the text is empty, negative or has an unknown unit; the message shows
            valid examples.
    """
    raw = text.strip().lower() if isinstance(text, str) else ""
    if _PLAIN.fullmatch(raw):
        return float(raw)
    parts = _PART.findall(raw)
    # Every character must belong to a number+unit pair: "7x" or "1h junk" are mistakes,
    # not "1 hour", because a silently misread `--older-than` deletes the wrong jobs.
    if not raw or "".join(n + u for n, u in parts) != raw:
        raise ConfigError(
            f"duration {text!r} is invalid: use seconds (90) or a number with a unit "
            "s, m, h, d or w (45s, 30m, 12h, 7d, 1h30m)"
        )
    return float(sum(float(n) * _UNITS[u] for n, u in parts))


def format_duration(seconds: float | None) -> str:
    """Show a duration compactly for people: `850ms`, `42s`, `3m12s`, `5h07m`, `2d03h`.

    Args:
        seconds: the duration; `None` (nothing to measure) shows as `-`.

    Returns:
        The text, at most two units, largest first.
    """
    if seconds is None:
        return "-"
    if seconds < 1:
        return f"{max(seconds, 0) * 1000:.0f}ms"
    whole = int(seconds)
    days, rest = divmod(whole, 86_400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d{hours:02d}h"
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"


def overview_row(counts: QueueCounts, now_ms: int) -> dict[str, Any]:
    """One queue's overview from its counts (the shape `queue_overview` returns).

    Args:
        counts: the engine's counts for the queue.
        now_ms: wall-clock milliseconds to measure the oldest pending job's age against.

    Returns:
        The counts per state plus `paused`, `oldest_pending_age_seconds` (None when
        nothing is pending), `completed_1m`, `failed_1m` and `throughput_per_min`
        (jobs that finished, either way, in the last minute).
    """
    row = counts.to_dict()
    oldest = counts.oldest_pending_ms
    # Engine and reader clocks can differ by a few ms (Redis TIME): never show a negative age.
    row["oldest_pending_age_seconds"] = None if oldest is None else max(0, now_ms - oldest) / 1000
    row["throughput_per_min"] = counts.completed_1m + counts.failed_1m
    return row


async def queue_overview(
    app: Conveyor, queues: Sequence[str] | None = None
) -> list[dict[str, Any]]:
    """Counts per state, pause flag, backlog age and last-minute throughput per queue.

    Args:
        app: the app whose engine is read.
        queues: the queues to show, in this order (default: every queue the engine knows,
            sorted).

    Returns:
        One dict per queue (see `overview_row`).

    Raises:
        EngineUnavailable: the engine cannot be reached.
    """
    names = list(queues) if queues is not None else await app.queue_names()
    # One read per queue, concurrently: on Redis that overlaps round trips, on SQLite
    # the reads share the connection pool.
    counts = await asyncio.gather(*(app.counts(name) for name in names))
    now_ms = app.clock.now_ms()
    return [overview_row(c, now_ms) for c in counts]


def _worker_row(info: dict[str, Any], now: float) -> dict[str, Any]:
    last_seen = info.get("last_seen")
    age = None if not isinstance(last_seen, int | float) else max(0.0, now - float(last_seen))
    return {
        "id": info.get("id"),
        "host": info.get("host"),
        "pid": info.get("pid"),
        "queues": info.get("queues", []),
        "concurrency": info.get("concurrency"),
        "in_flight": info.get("in_flight", 0),
        "processed": info.get("processed"),
        "failed": info.get("failed"),
        "last_heartbeat": last_seen,
        "last_heartbeat_age_seconds": age,
    }


async def status_document(
    app: Conveyor, *, timeout: float = DEFAULT_STATUS_TIMEOUT
) -> dict[str, Any]:
    """The document to poll during an incident: engine health, queues, live workers.

    It always renders: when the engine cannot be reached (or does not answer within
    `timeout`), `engine.status` is `"unavailable"` with the error, and `queues` and
    `workers` are empty, because a poller needs to see the outage, not crash on it.

    Args:
        app: the app whose engine is inspected.
        timeout: seconds to wait for the engine before calling it unavailable.

    Returns:
        `{"generated_at", "engine": {"url", "status", "latency_ms", "durable", "server",
        "error"},
        "queues": [...], "workers": [...], "totals": {...}}`; the URL has no password.

    Raises:
        ConfigError: the engine URL is not one Conveyor supports (a setup mistake, not
            an outage).
    """
    durable = app.durable  # builds (does not connect): a bad URL scheme raises ConfigError
    doc: dict[str, Any] = {
        "generated_at": datetime.fromtimestamp(app.clock.now(), UTC).isoformat(),
        "engine": {
            "url": redact(app.url),
            "status": "ok",
            "latency_ms": None,
            "durable": durable,
            "server": None,
            "error": None,
        },
        "queues": [],
        "workers": [],
    }

    async def read() -> None:
        # The outer timeout bounds the whole read; ping's own stays the longer one.
        doc["engine"]["latency_ms"] = round(await app.ping(timeout=timeout + 1) * 1000, 3)
        # Known once connected: AOF decides `durable`, and the eviction policy.
        doc["engine"]["durable"] = app.durable
        doc["engine"]["server"] = app.engine_server()
        doc["queues"] = await queue_overview(app)
        now = app.clock.now()
        doc["workers"] = [_worker_row(w, now) for w in await app.workers()]

    try:
        await asyncio.wait_for(read(), timeout)
    except EngineUnavailable as exc:
        doc["engine"].update(status="unavailable", error=str(exc))
    except TimeoutError:
        doc["engine"].update(
            status="unavailable", error=f"engine did not answer within {timeout:g}s"
        )
    if doc["engine"]["status"] != "ok":
        doc["queues"], doc["workers"] = [], []
    doc["totals"] = _totals(doc["queues"], doc["workers"])
    return doc


def _totals(queues: list[dict[str, Any]], workers: list[dict[str, Any]]) -> dict[str, Any]:
    """Fleet-wide sums, so a poller can alert on one number without adding rows up."""
    totals: dict[str, Any] = {s.value: sum(q[s.value] for q in queues) for s in JobState}
    totals["throughput_per_min"] = sum(q["throughput_per_min"] for q in queues)
    totals["workers"] = len(workers)
    totals["in_flight"] = sum(int(w["in_flight"] or 0) for w in workers)
    return totals
