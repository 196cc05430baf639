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
from .limits import QueueLimits
from .settings import redact

if TYPE_CHECKING:
    from collections.abc import Sequence

    from .app import Conveyor
    from .job import Job

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


def overview_row(
    counts: QueueCounts,
    now_ms: int,
    limits: QueueLimits | None = None,
    held: Sequence[str] = (),
) -> dict[str, Any]:
    """One queue's overview from its counts (the shape `queue_overview` returns).

    Args:
        counts: the engine's counts for the queue.
        now_ms: wall-clock milliseconds to measure the oldest pending job's age against.
        limits: the limits the engine enforces for the queue (None: none).
        held: why its pending jobs wait (see `held_back`).

    Returns:
        The counts per state plus `paused`, `oldest_pending_created_at` (Unix seconds)
        and `oldest_pending_age_seconds` (both None when nothing is pending),
        `completed_1m`, `failed_1m` and `throughput_per_min` (jobs that finished,
        either way, in the last minute), `limits` (those set) and `held_back`.
    """
    row = counts.to_dict()
    oldest = row.pop("oldest_pending_ms")
    # Published as what it is, a point in time in seconds like every job timestamp (it
    # was `oldest_pending_ms`, which read as a duration).
    row["oldest_pending_created_at"] = None if oldest is None else oldest / 1000
    # Engine and reader clocks can differ by a few ms (Redis TIME): never show a negative age.
    row["oldest_pending_age_seconds"] = None if oldest is None else max(0, now_ms - oldest) / 1000
    row["throughput_per_min"] = counts.completed_1m + counts.failed_1m
    shown = limits.to_dict() if limits is not None else {}
    row["limits"] = {k: v for k, v in shown.items() if v is not None}
    row["held_back"] = list(held)
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
        One dict per queue (see `overview_row`), plus `limits` (the limits the engine
        enforces, only those set) and `held_back` (why pending jobs wait, see
        `held_back`).

    Raises:
        EngineUnavailable: the engine cannot be reached.
    """
    names = list(queues) if queues is not None else await app.queue_names()
    # One read per queue, concurrently: on Redis that overlaps round trips, on SQLite
    # the reads share the connection pool.
    counts, limits, workers = await asyncio.gather(
        asyncio.gather(*(app.counts(name) for name in names)),
        asyncio.gather(*(app.get_limits(name) for name in names)),
        app.workers(),
    )
    now_ms = app.clock.now_ms()
    served = {q for w in workers for q in w.get("queues") or []}
    rows = []
    for c, lim in zip(counts, limits, strict=True):
        tenants_full: list[str] = []
        if lim.tenant_concurrency is not None and c.pending:
            running = await app.tenant_running(c.queue)
            tenants_full = sorted(t for t, n in running.items() if n >= lim.tenant_concurrency)
        held = held_back(c, lim, served=c.queue in served, tenants_full=tenants_full)
        rows.append(overview_row(c, now_ms, lim, held))
    return rows


def held_back(
    counts: QueueCounts, limits: QueueLimits, *, served: bool, tenants_full: Sequence[str]
) -> list[str]:
    """Why a queue's pending jobs are not running now, in words (empty: they are not held
    back, or nothing is pending). A forgotten `--concurrency 5` otherwise looks like an
    idle worker next to 181 pending jobs.

    Args:
        counts: the queue's counts.
        limits: the limits the engine enforces for it.
        served: whether a live worker lists the queue.
        tenants_full: tenants at their `tenant_concurrency` limit.
    """
    if not counts.pending:
        return []
    q = counts.queue
    reasons = []
    if counts.paused:
        reasons.append(f"paused: `conveyor resume {q}`")
    if not served:
        reasons.append("no live worker consumes this queue")
    if limits.concurrency is not None and counts.running >= limits.concurrency:
        reasons.append(
            f"queue concurrency limit {limits.concurrency} reached ({counts.running} running): "
            f"`conveyor limits {q}` shows and changes it"
        )
    if tenants_full:
        shown = ", ".join(tenants_full[:5]) + (" ..." if len(tenants_full) > 5 else "")
        reasons.append(f"tenant concurrency limit {limits.tenant_concurrency} reached for {shown}")
    if limits.rate is not None or limits.tenant_rate is not None:
        rates = [
            f"{name} {value}"
            for name, value in (
                ("rate", limits.to_dict()["rate"]),
                ("tenant rate", limits.to_dict()["tenant_rate"]),
            )
            if value is not None
        ]
        reasons.append(f"{' and '.join(rates)} limit: jobs wait while a window is full")
    return reasons


def describe_backoff(spec: dict[str, Any]) -> str:
    """A backoff spec in words: "exponential 1s x2 up to 3600s", "fixed 5s", "1s, 5s, 30s"."""
    kind = spec.get("kind")
    if kind == "fixed":
        return f"fixed {spec.get('delay', 0):g}s"
    if kind == "list":
        return ", ".join(f"{d:g}s" for d in spec.get("delays", [])) + " (the last repeats)"
    if kind == "exponential":
        return (
            f"exponential {spec.get('base', 1):g}s x{spec.get('factor', 2):g} up to "
            f"{spec.get('cap', 0):g}s"
        )
    return str(spec)


def policy_in_effect(app: Conveyor, job: Job) -> dict[str, Any]:
    """The timeout, backoff and attempt limit a worker applies to `job`, and where each
    comes from: the job's own options (`job`), its task's defaults (`task`), Conveyor's
    default backoff (`default`), or `unknown` when this process does not register the
    task (the worker's code decides; give the CLI `--app` to see it).

    Returns:
        `{"timeout_seconds", "timeout_from", "backoff", "backoff_text", "backoff_from",
        "max_attempts"}`; `timeout_seconds` is None for no limit or unknown.
    """
    task = app.tasks.get(job.task)
    timeout: float | None
    if job.timeout is not None:
        timeout, timeout_from = job.timeout, "job"
    elif task is not None:
        timeout, timeout_from = task.timeout, "task"
    else:
        timeout, timeout_from = None, "unknown"
    if job.backoff is not None:
        spec, backoff_from = job.backoff, "job"
    elif task is not None:
        spec, backoff_from = task.backoff.to_spec(), "task"
    else:
        spec, backoff_from = None, "unknown"
    return {
        "timeout_seconds": timeout,
        "timeout_from": timeout_from,
        "backoff": spec,
        "backoff_text": None if spec is None else describe_backoff(spec),
        "backoff_from": backoff_from,
        # Stored on the job at enqueue (the task's default unless the job set it).
        "max_attempts": job.max_attempts,
    }


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
