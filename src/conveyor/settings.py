"""One validated settings object, built at start-up from arguments and environment.

Precedence: explicit arguments (CLI flags) > `CONVEYOR_*` environment > defaults.
`CONVEYOR_URL` falls back to `REDIS_URL`, then to the embedded SQLite file. Nothing
here runs at import time: `Settings.load()` is called by the process that starts.

`Settings.load()` reads the environment itself (it must, to name an unknown variable),
so `Settings` is a plain pydantic model: pydantic-settings would only read it a second
time, and importing it was a fifth of a worker's start-up instructions (issue 15, point
7; bench/RESULTS.md "Start-up, branch startup").
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Mapping
from typing import Any, Literal
from urllib.parse import parse_qsl, urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from .errors import ConfigError
from .limits import parse_rate

DEFAULT_URL = "sqlite:///conveyor.db"
ENV_PREFIX = "CONVEYOR_"


class Settings(BaseModel):
    """Every knob, validated. See the configuration table in the README. Built by
    `Settings.load()`."""

    # validate_default: as pydantic-settings did, so a default goes through the same checks.
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)

    url: str = Field(
        DEFAULT_URL,
        description="engine URL: redis://, rediss://, redis+cluster://, redis+sentinel://, "
        "sqlite:///, postgresql://, memory://",
    )
    app: str | None = Field(
        None,
        description="your app as MODULE:ATTR, for operations commands that use its tasks",
    )
    queues: tuple[str, ...] = Field(("default",), description="queues a worker consumes, in order")
    concurrency: int = Field(10, ge=1, le=10_000, description="jobs one worker runs at once")
    # Fleet-wide limits of the worker's queues, stored in the engine when it starts.
    queue_concurrency: int | None = Field(
        None, ge=1, le=100_000, description="running jobs per queue across all workers"
    )
    tenant_concurrency: int | None = Field(
        None, ge=1, le=100_000, description="running jobs per tenant across all workers"
    )
    rate: str | None = Field(None, description='jobs started per window per queue, e.g. "100/1s"')
    tenant_rate: str | None = Field(
        None, description='jobs started per window per tenant, e.g. "10/1s"'
    )
    # Process isolation (conveyor.worker.isolation): where handlers run.
    pool: Literal["thread", "process"] = Field(
        "thread", description="thread: handlers in the worker; process: in child processes"
    )
    processes: int | None = Field(
        None, ge=1, le=1024, description="child processes of --pool process (CPU count)"
    )
    max_jobs_per_child: int | None = Field(
        None, ge=1, description="replace a child process after this many jobs"
    )
    max_memory_per_child: int | None = Field(
        None, ge=1, description='replace a child process above this RSS, e.g. "512MB"'
    )
    lease_timeout: float = Field(
        30.0, gt=0, le=86_400, description="seconds a claim is valid without a heartbeat"
    )
    shutdown_timeout: float = Field(
        30.0, ge=0, le=86_400, description="seconds in-flight jobs get on SIGTERM"
    )
    health_port: int = Field(
        3100, ge=0, le=65_535, description="worker health/metrics port; 0 disables"
    )
    # Retention (workers for their queues, the scheduler for all): see retention.py.
    keep_completed: str = Field("24h", description="completed jobs kept this long, or 'forever'")
    keep_failed: str = Field("7d", description="failed/cancelled jobs kept this long, or 'forever'")
    retention_interval: float = Field(
        60.0, gt=0, le=86_400, description="longest pause between retention passes (seconds)"
    )
    retention_batch: int = Field(1000, ge=1, le=10_000, description="jobs deleted per engine call")
    require_noeviction: bool = Field(
        False, description="refuse to start when Redis may evict keys (maxmemory-policy)"
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["text", "json"] = "text"
    metrics_prefix: str = Field("conveyor_", pattern=r"^[a-zA-Z_][a-zA-Z0-9_]*$")
    max_payload_bytes: int = Field(1_048_576, ge=1, description="largest accepted payload")
    # HTTP API (`conveyor api`)
    api_host: str = Field("127.0.0.1", description="address the API listens on")
    api_port: int = Field(8000, ge=0, le=65_535, description="port the API listens on")
    api_admin_token: str | None = Field(None, description="bearer token with full access")
    api_tenant_tokens: str | None = Field(
        None, description='tenant tokens as "token:tenant,token:tenant"'
    )
    api_tokens_file: str | None = Field(
        None, description='JSON file {"admin": "...", "tenants": {"token": "tenant"}}'
    )
    api_max_body_bytes: int | None = Field(
        None, ge=1, description="largest request body; default max_payload_bytes + 64 KiB"
    )
    api_public_hosts: tuple[str, ...] = Field(
        (), description="host names besides localhost an API without tokens answers to"
    )
    api_ws_max_subscribers: int = Field(
        10_000, ge=1, le=1_000_000, description="live WebSocket subscriptions per API process"
    )
    api_ws_max_per_token: int = Field(
        1_000, ge=1, le=1_000_000, description="live WebSocket subscriptions per token"
    )
    api_public_metrics: bool = Field(
        False, description="serve the API's /metrics without the admin token"
    )
    api_cursor_secret: str | None = Field(
        None,
        min_length=16,
        description="secret sealing listing cursors; the same on every API process behind "
        "one address (default: random per process)",
    )

    @field_validator("queues", "api_public_hosts", mode="before")
    @classmethod
    def _split_queues(cls, value: Any) -> Any:
        if isinstance(value, str):
            return tuple(q.strip() for q in value.split(",") if q.strip())
        return value

    @field_validator("rate", "tenant_rate")
    @classmethod
    def _rate(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                parse_rate(value)
            except ConfigError:
                raise ValueError(
                    "use JOBS/WINDOW such as 100/1s, 100/s, 5/250ms, 1000/1m or 10/1h"
                ) from None
        return value

    @field_validator("max_memory_per_child", mode="before")
    @classmethod
    def _size(cls, value: Any) -> Any:
        if isinstance(value, str):
            try:
                return parse_size(value)
            except ValueError:
                raise ValueError(
                    "use a size such as 512MB, 2GB, 800KB or a number of bytes"
                ) from None
        return value

    @field_validator("url")
    @classmethod
    def _known_scheme(cls, value: str) -> str:
        from .engines import SCHEMES

        if not value.startswith(SCHEMES):
            raise ValueError(f"use one of {', '.join(SCHEMES)} (got {value!r})")
        return value

    @classmethod
    def load(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Build settings from `environ` (default `os.environ`) and explicit overrides.

        Overrides that are `None` are ignored, so CLI flags left unset fall through.

        Raises:
            ConfigError: an unknown `CONVEYOR_*` variable or an invalid value; the
                message names the variable and the fix.
        """
        env = os.environ if environ is None else environ
        known = set(cls.model_fields)
        values: dict[str, Any] = {}
        other_case: dict[str, str] = {}
        for name, raw in env.items():
            if not name.startswith(ENV_PREFIX):
                # `conveyor_url`: pydantic-settings matched known names in any case, so
                # they still count, below the upper-case spelling.
                key = name[len(ENV_PREFIX) :].lower()
                if name[: len(ENV_PREFIX)].upper() == ENV_PREFIX and key in known:
                    other_case[key] = raw
                continue
            key = name[len(ENV_PREFIX) :].lower()
            if key not in known:
                hint = difflib.get_close_matches(key, known, n=1)
                fix = (
                    f"did you mean {ENV_PREFIX}{hint[0].upper()}?"
                    if hint
                    else (f"known: {', '.join(ENV_PREFIX + k.upper() for k in sorted(known))}")
                )
                raise ConfigError(f"unknown setting {name}: {fix}")
            values[key] = raw
        values = other_case | values
        if "url" not in values and env.get("REDIS_URL"):
            values["url"] = env["REDIS_URL"]
        values.update({k: v for k, v in overrides.items() if v is not None})
        try:
            return cls.model_validate(values)
        except ValidationError as exc:
            raise ConfigError(_explain(exc)) from exc


_UNITS = {"": 1, "KB": 1024, "MB": 1024**2, "GB": 1024**3}
_SIZE = re.compile(r"^(\d+(?:\.\d+)?)\s*([KMG]?)I?B?\Z")


def parse_size(text: str) -> int:
    """Bytes from a size such as "512MB", "2GB", "800KB" or "1048576" (binary units:
    1MB = 1024 KB, as RSS is reported).

    Raises:
        ValueError: it is not a positive size.
    """
    match = _SIZE.match(text.strip().upper())
    if match is None:
        raise ValueError(f"{text!r} is not a size such as 512MB, 2GB or 800KB")
    value = float(match[1]) * _UNITS[f"{match[2]}B" if match[2] else ""]
    if not 0 < value < float("inf"):
        raise ValueError(f"{text!r} is not a size such as 512MB, 2GB or 800KB")
    return int(value)


def url_source(flag: str | None, environ: Mapping[str, str] | None = None) -> str | None:
    """Which setting names the engine URL, by precedence: `"--url"` (the flag), then
    `"CONVEYOR_URL"`, then `"REDIS_URL"`; `None` when none does (the app's URL in code,
    else the default, applies).

    Args:
        flag: the `--url` flag's value, or `None` when it was not given.
        environ: the environment (default `os.environ`).

    Returns:
        The name of the setting that gives the URL, or `None`.
    """
    env = os.environ if environ is None else environ
    if flag is not None:
        return "--url"
    if "CONVEYOR_URL" in env:
        return "CONVEYOR_URL"
    if env.get("REDIS_URL"):
        return "REDIS_URL"
    return None


def _explain(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        field = ".".join(str(p) for p in err["loc"]) or "settings"
        parts.append(
            f"{field}={err.get('input')!r} is invalid: {err['msg']} "
            f"(set --{field.replace('_', '-')} or {ENV_PREFIX}{field.upper()})"
        )
    return "; ".join(parts)


def redact(url: str) -> str:
    """The URL without secrets (password in the userinfo or a `password=` query
    parameter), for logs, status documents and errors. The user name stays: it helps
    tell apart two connections and is not a secret."""
    parts = urlsplit(url)
    if parts.password is not None:
        user = parts.username or ""
        url = url.replace(parts.netloc, f"{user}:***@{parts.netloc.rsplit('@', 1)[1]}", 1)
    if parts.query:
        query = "&".join(
            f"{k}=***" if k.lower() in _SECRET_PARAMS else f"{k}={v}"
            for k, v in parse_qsl(parts.query, keep_blank_values=True)
        )
        url = url.replace("?" + parts.query, "?" + query, 1)
    return url


_SECRET_PARAMS = ("password", "pass", "pwd")
