"""A registered task: the handler and its defaults (queue, attempts, backoff, timeout)."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel

from .backoff import Backoff

Handler = Callable[..., Any]
# Where a handler runs: None follows the worker's pool (`--pool`); "process" always runs it
# in a child process of the worker's process pool (see conveyor.worker.isolation).
Isolation = Literal["process"] | None
ISOLATIONS = (None, "process")


@dataclass(frozen=True, slots=True)
class Task:
    """What `@app.task` records. Per-job options override these defaults."""

    name: str
    fn: Handler
    queue: str
    max_attempts: int
    backoff: Backoff
    timeout: float | None
    # The pydantic model of the payload (`payload=` or a `Job[Model]` annotation); the
    # handler gets `job.payload` as an instance of it. None: a plain dict.
    payload_model: type[BaseModel] | None = None
    isolation: Isolation = None
    # Coroutine functions run on the loop; plain functions in the thread pool. Decided
    # once here, not per job.
    is_async: bool = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "is_async", inspect.iscoroutinefunction(self.fn))
