"""One log line per job outcome, on the `conveyor.jobs` logger.

| outcome | level | event |
| --- | --- | --- |
| attempt started | DEBUG | `started` |
| completed | INFO | `completed` |
| failed attempt that will run again | WARNING | `retried` |
| attempt that ran past its timeout | ERROR | `timed_out` (retried or not) |
| failed for good (`Unrecoverable`, unknown task, malformed job) | ERROR | `failed` |
| failed attempt with no attempt left | ERROR | `dead_lettered` |
| deferred (rate limited, breaker open), released at shutdown | INFO | `deferred`, `released` |

Every line carries the job id, task, queue, tenant, attempt (of max) and the attempt's
duration, both in the text (`key=value`, grep-able) and as record attributes, so
`--log-format json` gives each its own JSON field. ERROR lines carry the handler's
traceback the way `log.exception` would.

The worker calls `started` and `finished` (two small hooks); nothing here touches the
engine, and a level that is off costs one `isEnabledFor` check per job.
"""

from __future__ import annotations

import logging
import re
from typing import Any

import orjson

from ..engines import Outcome
from ..job import Job

log = logging.getLogger("conveyor.jobs")

_BARE = re.compile(r"^[\w.:@/+-]+$")  # values printed without quotes in the text form


def _text(value: Any) -> str:
    """A value for `key=value` text: user strings with spaces, `=` or newlines are
    JSON-quoted so one job is always one parseable line."""
    s = "-" if value is None else str(value)
    return s if _BARE.match(s) else orjson.dumps(s).decode()


def _emit(
    level: int, event: str, job: Job, extra: dict[str, Any], tail: str = "", tb: str | None = None
) -> None:
    fields: dict[str, Any] = {
        "event": event,
        "job_id": job.id,
        "task": job.task,
        "queue": job.queue,
        "tenant": job.tenant,
        "attempt": job.attempt,
        "max_attempts": job.max_attempts,
        **extra,
    }
    text = " ".join(
        f"{k}={_text(fields[k])}" for k in ("job_id", "task", "queue", "tenant") if k in fields
    )
    text += f" attempt={job.attempt}/{job.max_attempts}"
    if "duration_s" in fields:
        text += f" duration={fields['duration_s']:.3f}s"
    record = log.makeRecord(
        log.name, level, __file__, 0, f"job {event} {text}{tail}", (), None, extra=fields
    )
    # The stored traceback text stands in for exc_info: the exception object is gone by
    # the time the outcome is known, and formatters print `exc_text` the same way.
    record.exc_text = tb.rstrip("\n") if tb else None
    log.handle(record)


def started(job: Job) -> None:
    """Log (DEBUG) that an attempt of `job` started."""
    if log.isEnabledFor(logging.DEBUG):
        _emit(logging.DEBUG, "started", job, {})


def finished(job: Job, outcome: Outcome, duration_s: float) -> None:
    """Log the outcome of one attempt of `job` (see the module's table for levels).

    Args:
        job: the job as claimed (its `attempt` is the attempt that just ran).
        outcome: what the worker reports to the engine for it.
        duration_s: how long the attempt ran, in seconds.
    """
    kind = outcome.kind
    if kind == "complete":
        if log.isEnabledFor(logging.INFO):
            _emit(logging.INFO, "completed", job, {"duration_s": duration_s})
        return
    base: dict[str, Any] = {"duration_s": duration_s}
    if kind in ("defer", "release"):
        if log.isEnabledFor(logging.INFO):
            event = "deferred" if kind == "defer" else "released"
            tail = ""
            if kind == "defer":
                base["delay_s"] = outcome.delay_ms / 1000
                tail = f" for={base['delay_s']:g}s reason={_text(outcome.reason)}"
            _emit(logging.INFO, event, job, base, tail)
        return
    error = orjson.loads(outcome.error_json) if outcome.error_json else {}
    etype, message = str(error.get("type", "Error")), str(error.get("message", ""))
    base["error_type"], base["error"] = etype, message
    tail = f" error={_text(f'{etype}: {message}')}"
    if kind == "retry":
        base["retry_in_s"] = outcome.delay_ms / 1000
        tail = f" retry_in={base['retry_in_s']:g}s{tail}"
    if etype == "JobTimeout":
        level, event = logging.ERROR, "timed_out"
    elif kind == "retry":
        level, event = logging.WARNING, "retried"
    elif job.attempt >= job.max_attempts and etype not in _FINAL_TYPES:
        level, event = logging.ERROR, "dead_lettered"
    else:
        level, event = logging.ERROR, "failed"
    if log.isEnabledFor(level):
        tb = error.get("traceback") if level >= logging.ERROR else None
        _emit(level, event, job, base, tail, tb)


# Errors that fail a job on any attempt (not by running out of attempts).
_FINAL_TYPES = frozenset({"Unrecoverable", "UnknownTask", "MalformedJob"})
