"""Recurring schedules: what they are, when they fire, and which occurrences are owed.

A schedule enqueues one job per *occurrence*: a cron expression evaluated in an IANA
timezone (`cron`), or a fixed interval (`every`). Everything here is pure: functions take
`now` (epoch milliseconds or an aware datetime) and never read a clock, so the scheduler's
decisions are tested with tables and a fake clock.

Occurrence rules (they decide the deterministic job ids, so every scheduler process must
compute the same instants):

* **cron** follows the `cronsim` library, which mimics Debian's cron, DST quirks included:
  - a job at a fixed local time (minute and hour fields that are not `*`-based) whose time
    does not exist on a spring-forward day runs at the first valid minute after the gap
    (`30 2 * * *` in Europe/Berlin on the last Sunday of March runs at 03:00 CEST);
  - such a job whose time exists twice on a fall-back day runs once, at the first
    (summer-time) instant; the repeated wall-clock time does not fire again;
  - jobs with `*`-based hour or minute fields (`0 * * * *`, `*/15 * * * *`) follow real
    elapsed time: they fire in both passes of a repeated hour and not in a skipped one.
  Five fields (minute hour day-of-month month day-of-week) or six (seconds first); six-field
  expressions get no DST adjustment (as in cronsim).
* **every** fires at whole multiples of the interval since the Unix epoch (UTC), so
  `every(timedelta(minutes=5))` fires at :00, :05, ... and every process agrees.

Missed occurrences: the scheduler owes the occurrences after a schedule's baseline (its
last run, or when it was created or resumed). Those within `grace` of now are on time and
all fire. Older ones were missed (no scheduler was running) and follow the schedule's
`missed` policy: `skip` drops them, `run_once` enqueues one job for the most recent one.
"""

from __future__ import annotations

import hashlib
import re
import zoneinfo
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import orjson
from cronsim import CronSim, CronSimError

from . import backoff as backoff_mod
from .engines.base import StoredSchedule
from .errors import ConfigError

MissedPolicy = Literal["skip", "run_once"]
MISSED_POLICIES: tuple[MissedPolicy, ...] = ("skip", "run_once")
ScheduleSource = Literal["code", "runtime"]

LEADER_LEASE = "scheduler"  # the lease every scheduler process competes for
MIN_INTERVAL_S = 1.0
# Options a schedule passes to every job it enqueues. `delay`/`run_at` are not among
# them: the occurrence itself is the job's time.
SCHEDULE_JOB_OPTIONS = frozenset(
    {"priority", "dedupe_key", "tenant", "max_attempts", "backoff", "timeout"}
)
_NAME_MAX = 200
_SLUG_UNSAFE = re.compile(r"[^A-Za-z0-9_.\-]+")
_CRON_HELP = (
    "use 5 fields 'minute hour day-of-month month day-of-week' (e.g. '0 3 * * *' for "
    "03:00 daily, '*/5 * * * *' for every 5 minutes), or 6 with seconds first"
)


@dataclass(frozen=True, slots=True)
class ScheduleSpec:
    """One recurring schedule, validated (build it with `cron_schedule` / `every_schedule`).

    Attributes:
        name: unique name; the CLI and the engine's schedule store use it.
        task: task name of the jobs it enqueues.
        kind: `"cron"` or `"every"`.
        expr: the cron expression (cron only).
        interval_ms: the interval in milliseconds (every only).
        timezone: IANA timezone the cron expression is read in (`"UTC"` for every).
        payload: JSON object given to every job.
        queue: queue of the jobs; `None` = the task's queue in the scheduler's app.
        missed: what to do with occurrences missed while no scheduler ran.
        options: enqueue options for every job (priority, max_attempts, ...).
    """

    name: str
    task: str
    kind: Literal["cron", "every"]
    expr: str | None = None
    interval_ms: int | None = None
    timezone: str = "UTC"
    payload: dict[str, Any] = field(default_factory=dict)
    queue: str | None = None
    missed: MissedPolicy = "skip"
    options: dict[str, Any] = field(default_factory=dict)

    # --- display -------------------------------------------------------------------------
    @property
    def describe(self) -> str:
        """`cron 0 3 * * *` or `every 5m` (what `conveyor schedules list` shows)."""
        if self.kind == "cron":
            return f"cron {self.expr}"
        return f"every {format_interval(self.interval_ms or 0)}"

    # --- storage -------------------------------------------------------------------------
    def to_json(self) -> str:
        """The spec as stored in the engine (JSON text)."""
        return orjson.dumps(
            {
                "v": 1,
                "name": self.name,
                "task": self.task,
                "kind": self.kind,
                "expr": self.expr,
                "interval_ms": self.interval_ms,
                "timezone": self.timezone,
                "payload": self.payload,
                "queue": self.queue,
                "missed": self.missed,
                "options": self.options,
            }
        ).decode()

    @classmethod
    def from_json(cls, text: str | bytes) -> ScheduleSpec:
        """Rebuild a stored spec, validating it again.

        Raises:
            ConfigError: the text is not a spec this version understands.
        """
        try:
            doc = orjson.loads(text)
            if not isinstance(doc, dict):
                raise TypeError(f"a {type(doc).__name__}, not an object")
            common: dict[str, Any] = {
                "name": doc["name"],
                "task": doc["task"],
                "payload": doc.get("payload") or {},
                "queue": doc.get("queue"),
                "missed": doc.get("missed", "skip"),
                "options": doc.get("options") or {},
            }
            if doc["kind"] == "cron":
                return cron_schedule(doc["expr"], timezone=doc.get("timezone", "UTC"), **common)
            if doc["kind"] == "every":
                return every_schedule(int(doc["interval_ms"]) / 1000, **common)
            raise ValueError(f"unknown kind {doc['kind']!r}")
        except (KeyError, TypeError, ValueError, orjson.JSONDecodeError) as exc:
            raise ConfigError(
                f"stored schedule is malformed ({type(exc).__name__}: {exc}): it was written "
                "by another Conveyor version or corrupted; remove and add it again"
            ) from exc

    # --- occurrences ---------------------------------------------------------------------
    def next_after_ms(self, after_ms: int) -> int | None:
        """The first occurrence strictly after `after_ms` (epoch ms).

        Args:
            after_ms: epoch milliseconds.

        Returns:
            Epoch milliseconds, or `None` when the cron expression never matches again
            (cronsim gives up after 50 years, e.g. `0 0 30 2 *`).
        """
        if self.interval_ms is not None:
            return (after_ms // self.interval_ms + 1) * self.interval_ms
        it = CronSim(str(self.expr), datetime.fromtimestamp(after_ms / 1000, self._zone()))
        # On a fall-back day a fixed-time job is placed on the first (summer-time) pass of
        # the repeated hour; seen from inside the second pass that instant is already past,
        # so it is skipped here: the repeated time runs once, not twice.
        for _ in range(3):
            try:
                at = _ms(next(it))
            except StopIteration:
                return None
            if at > after_ms:
                return at
        return None  # pragma: no cover - cronsim never yields three past instants

    def latest_at_or_before_ms(self, at_ms: int) -> int | None:
        """The most recent occurrence at or before `at_ms` (epoch ms), or `None`."""
        if self.interval_ms is not None:
            return at_ms // self.interval_ms * self.interval_ms
        # A half-second past the whole second: cronsim drops the fraction as its first
        # backward step, so an occurrence exactly on `at_ms`'s second is included.
        start = datetime.fromtimestamp(at_ms // 1000 + 0.5, self._zone())
        it = CronSim(str(self.expr), start, reverse=True)
        for _ in range(3):
            try:
                at = _ms(next(it))
            except StopIteration:
                return None
            if at <= at_ms:
                return at
        return None  # pragma: no cover

    def _zone(self) -> zoneinfo.ZoneInfo:
        return zoneinfo.ZoneInfo(self.timezone)


def _ms(moment: datetime) -> int:
    return round(moment.timestamp() * 1000)


def next_run(spec: ScheduleSpec, after: datetime | float) -> datetime | None:
    """When `spec` fires next after `after` (see the module docstring for the DST rule).

    Args:
        spec: the schedule.
        after: an aware datetime, or epoch seconds.

    Returns:
        An aware datetime in the schedule's timezone, or `None` if it never fires again.

    Raises:
        ConfigError: `after` is a naive datetime (its instant would be a guess).
    """
    at = _ms(_aware(after)) if isinstance(after, datetime) else round(after * 1000)
    nxt = spec.next_after_ms(at)
    if nxt is None:
        return None
    return datetime.fromtimestamp(nxt / 1000, zoneinfo.ZoneInfo(spec.timezone))


def _aware(moment: datetime) -> datetime:
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ConfigError(
            f"{moment!r} is a naive datetime: pass an aware one, e.g. "
            "datetime.now(ZoneInfo('Europe/Paris')) or datetime.now(UTC)"
        )
    return moment


def due_occurrences(
    spec: ScheduleSpec, *, since_ms: int, now_ms: int, grace_ms: int, limit: int = 1000
) -> list[int]:
    """The occurrences to enqueue now, oldest first.

    Args:
        spec: the schedule.
        since_ms: its baseline: every occurrence up to here was handled (or predates
            the schedule, or fell while it was paused).
        now_ms: the current time.
        grace_ms: occurrences at most this old are on time and all fire; older ones were
            missed and follow `spec.missed` (`skip`: none; `run_once`: the latest one).
        limit: at most this many (the rest come on the next call).

    Returns:
        Epoch milliseconds of each occurrence to enqueue (possibly none).
    """
    # On time: [now - grace, now]; missed: (since, now - grace).
    cutoff = now_ms - grace_ms
    owed: list[int] = []
    if since_ms < cutoff - 1 and spec.missed == "run_once":
        latest = spec.latest_at_or_before_ms(cutoff - 1)
        if latest is not None and latest > since_ms:
            owed.append(latest)
    at = max(since_ms, cutoff - 1)
    while len(owed) < limit:
        nxt = spec.next_after_ms(at)
        if nxt is None or nxt > now_ms:
            break
        owed.append(nxt)
        at = nxt
    return owed


def occurrence_job_id(queue: str, name: str, occurrence_ms: int) -> str:
    """The job id of one occurrence: the same in every scheduler process.

    Enqueue is idempotent by job id on every engine, so a scheduler that takes over and
    enqueues an occurrence its predecessor already enqueued creates nothing. The id keeps
    the queue prefix (`queue_of`) and a readable slug of the name; the name's hash keeps
    names that slug alike ("a b" / "a_b") apart. No `:` after the queue, by construction.
    """
    slug = _SLUG_UNSAFE.sub("_", name)[:48]
    digest = hashlib.sha256(name.encode()).hexdigest()[:8]
    return f"{queue}:sched-{slug}-{digest}-{occurrence_ms}"


# --- building specs ---------------------------------------------------------------------
def cron_schedule(
    expr: str,
    *,
    task: str,
    name: str | None = None,
    timezone: str = "UTC",
    payload: dict[str, Any] | None = None,
    queue: str | None = None,
    missed: str = "skip",
    options: dict[str, Any] | None = None,
) -> ScheduleSpec:
    """Validate a cron schedule.

    Args:
        expr: cron expression (5 fields, or 6 with seconds first).
        task: task name of the jobs.
        name: schedule name (default `"<task>@<expr>"`).
        timezone: IANA name the expression is read in (default UTC).
        payload: JSON object for every job.
        queue: queue of the jobs (default: the task's queue).
        missed: `"skip"` (default) or `"run_once"`.
        options: enqueue options for every job (see `SCHEDULE_JOB_OPTIONS`).

    Returns:
        The spec.

    Raises:
        ConfigError: an invalid expression, timezone, name, policy or option; the message
            names the fix.
    """
    if not isinstance(expr, str) or not expr.strip():
        raise ConfigError(f"cron expression {expr!r} is empty: {_CRON_HELP}")
    expr = " ".join(expr.split())
    _check_timezone(timezone)
    try:
        CronSim(expr, datetime(2000, 1, 1, tzinfo=UTC))
    except (CronSimError, ValueError) as exc:
        raise ConfigError(f"cron expression {expr!r} is invalid ({exc}): {_CRON_HELP}") from exc
    spec = ScheduleSpec(
        name=_check_name(name if name is not None else f"{task}@{expr}"),
        task=_check_task(task),
        kind="cron",
        expr=expr,
        timezone=timezone,
        payload=_check_payload(payload),
        queue=queue,
        missed=_check_missed(missed),
        options=_check_options(options),
    )
    if spec.next_after_ms(946_684_800_000) is None:  # 2000-01-01: it must fire some day
        raise ConfigError(f"cron expression {expr!r} never matches a date: {_CRON_HELP}")
    return spec


def every_schedule(
    interval: timedelta | float,
    *,
    task: str,
    name: str | None = None,
    payload: dict[str, Any] | None = None,
    queue: str | None = None,
    missed: str = "skip",
    options: dict[str, Any] | None = None,
) -> ScheduleSpec:
    """Validate an interval schedule (fires at multiples of `interval` since the epoch).

    Args:
        interval: a timedelta or seconds, at least 1 s, in whole milliseconds.
        task, name, payload, queue, missed, options: as for `cron_schedule`
            (default name `"<task>@every <interval>"`).

    Returns:
        The spec.

    Raises:
        ConfigError: an invalid interval, name, policy or option; the message names the fix.
    """
    seconds = interval.total_seconds() if isinstance(interval, timedelta) else interval
    if (
        isinstance(seconds, bool)
        or not isinstance(seconds, int | float)
        or not seconds >= MIN_INTERVAL_S
        or seconds == float("inf")
    ):
        raise ConfigError(
            f"interval {interval!r} is invalid: use a timedelta or seconds >= "
            f"{MIN_INTERVAL_S:g}, e.g. every(timedelta(minutes=5)) or --every 5m"
        )
    interval_ms = round(seconds * 1000)
    return ScheduleSpec(
        name=_check_name(
            name if name is not None else f"{task}@every {format_interval(interval_ms)}"
        ),
        task=_check_task(task),
        kind="every",
        interval_ms=interval_ms,
        payload=_check_payload(payload),
        queue=queue,
        missed=_check_missed(missed),
        options=_check_options(options),
    )


def format_interval(interval_ms: int) -> str:
    """`90000` -> `1m30s`; `250` -> `250ms` (whole units, largest first)."""
    if interval_ms % 1000:
        return f"{interval_ms}ms"
    rest = interval_ms // 1000
    parts = []
    for unit, size in (("d", 86_400), ("h", 3_600), ("m", 60), ("s", 1)):
        count, rest = divmod(rest, size)
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts) or "0s"


def _check_timezone(timezone: Any) -> None:
    try:
        if not isinstance(timezone, str) or not timezone:
            raise ValueError(timezone)
        zoneinfo.ZoneInfo(timezone)
    except (ValueError, zoneinfo.ZoneInfoNotFoundError):
        raise ConfigError(
            f"timezone {timezone!r} is unknown: use an IANA name such as 'Europe/Paris', "
            "'America/New_York' or 'UTC'"
        ) from None


def _check_name(name: Any) -> str:
    if (
        not isinstance(name, str)
        or not name.strip()
        or len(name) > _NAME_MAX
        or not name.isprintable()
    ):
        raise ConfigError(
            f"schedule name {name!r} is invalid: use 1-{_NAME_MAX} printable characters"
        )
    return name


def _check_task(task: Any) -> str:
    if not isinstance(task, str) or not task:
        raise ConfigError(f"task={task!r} is invalid: name the task the schedule enqueues")
    return task


def _check_missed(missed: Any) -> MissedPolicy:
    if missed == "skip":
        return "skip"
    if missed == "run_once":
        return "run_once"
    raise ConfigError(
        f"missed={missed!r} is invalid: use 'skip' (drop occurrences missed while no "
        "scheduler ran) or 'run_once' (enqueue one catch-up job)"
    )


def _check_payload(payload: Any) -> dict[str, Any]:
    if payload is None:
        return {}
    if not isinstance(payload, dict):
        raise ConfigError(
            f"schedule payload must be a JSON object (a dict), got {type(payload).__name__}"
        )
    return payload


def _check_options(options: dict[str, Any] | None) -> dict[str, Any]:
    opts = dict(options or {})
    unknown = set(opts) - SCHEDULE_JOB_OPTIONS
    if unknown:
        raise ConfigError(
            f"schedule option(s) {', '.join(sorted(unknown))} are not supported: use "
            f"{', '.join(sorted(SCHEDULE_JOB_OPTIONS))} (the occurrence sets the job's time)"
        )
    if opts.get("backoff") is not None:
        # Stored as JSON, so keep the policy's spec rather than the object.
        opts["backoff"] = backoff_mod.coerce(opts["backoff"]).to_spec()
    return {k: v for k, v in opts.items() if v is not None}


@dataclass(slots=True)
class ScheduleInfo:
    """One row of `conveyor schedules list` (and `Conveyor.list_schedules`)."""

    name: str
    kind: str  # "cron" | "every" | "?" (undecodable)
    expr: str  # "0 3 * * *" / "5m"
    timezone: str
    task: str
    queue: str | None
    missed: str
    paused: bool
    source: str  # "code" | "runtime"
    next_run: float | None  # epoch seconds; None when paused or never again
    last_run: float | None  # epoch seconds of the latest occurrence enqueued
    error: str | None = None  # why the stored spec cannot be used
    spec: ScheduleSpec | None = None  # the decoded definition (None when it cannot be read)
    # Why the scheduler could not enqueue the latest occurrence: `message`, `type`, `at`
    # and `occurrence` (epoch seconds); None once a later run was recorded.
    last_error: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready view."""
        return {
            "name": self.name,
            "kind": self.kind,
            "expr": self.expr,
            "timezone": self.timezone,
            "task": self.task,
            "queue": self.queue,
            "missed": self.missed,
            "paused": self.paused,
            "source": self.source,
            "next_run": self.next_run,
            "last_run": self.last_run,
            "error": self.error,
            "last_error": self.last_error,
        }


def schedule_info(stored: StoredSchedule, now_ms: int) -> ScheduleInfo:
    """Describe a stored schedule for people: its definition, next and last run.

    Args:
        stored: the engine's record.
        now_ms: the current time; the next run is the first occurrence after it (or after
            the last run, if that is later).

    Returns:
        The row; an undecodable spec gives kind `"?"` and `error` instead of raising.
    """
    last = None if stored.last_run_ms is None else stored.last_run_ms / 1000
    last_error = _last_error(stored.last_error)
    try:
        spec = ScheduleSpec.from_json(stored.spec_json)
    except ConfigError as exc:
        return ScheduleInfo(
            stored.name, "?", "?", "?", "?", None, "?", stored.paused, stored.source, None, last,
            error=str(exc), last_error=last_error,
        )  # fmt: skip
    nxt = None
    if not stored.paused:
        after = max(now_ms, stored.last_run_ms or 0)
        at = spec.next_after_ms(after)
        nxt = None if at is None else at / 1000
    return ScheduleInfo(
        name=stored.name,
        kind=spec.kind,
        expr=str(spec.expr) if spec.kind == "cron" else format_interval(spec.interval_ms or 0),
        timezone=spec.timezone,
        task=spec.task,
        queue=spec.queue,
        missed=spec.missed,
        paused=stored.paused,
        source=stored.source,
        next_run=nxt,
        last_run=last,
        spec=spec,
        last_error=last_error,
    )


def _last_error(raw: str | None) -> dict[str, Any] | None:
    """The stored last error (engine JSON with ms times) in seconds, for people."""
    if raw is None:
        return None
    try:
        stored = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return {"message": raw, "type": "?", "at": None, "occurrence": None}
    if not isinstance(stored, dict):
        return {"message": str(stored), "type": "?", "at": None, "occurrence": None}

    def seconds(key: str) -> float | None:
        value = stored.get(key)
        return value / 1000 if isinstance(value, int | float) else None

    return {
        "message": str(stored.get("message", "")),
        "type": str(stored.get("type", "?")),
        "at": seconds("at_ms"),
        "occurrence": seconds("occurrence_ms"),
    }
