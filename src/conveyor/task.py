"""A registered task: the handler and its defaults (queue, attempts, backoff, timeout)."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .backoff import Backoff

Handler = Callable[..., Any]


@dataclass(frozen=True, slots=True)
class Task:
    """What `@app.task` records. Per-job options override these defaults."""

    name: str
    fn: Handler
    queue: str
    max_attempts: int
    backoff: Backoff
    timeout: float | None

    @property
    def is_async(self) -> bool:
        """Coroutine functions run on the loop; plain functions in the thread pool."""
        return inspect.iscoroutinefunction(self.fn)
