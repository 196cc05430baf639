"""The `Conveyor` app: the registry of tasks plus the engine it talks to.

Producers and workers import the same app object, and it is the one door to the
engine for everything above storage: the CLI, the HTTP API, the dashboard, status,
the scheduler and the live-events hub call its methods, never engine methods. The
facade validates and encodes once, then calls the engine; nothing below it repeats
that work. (The worker runtime alone keeps a direct engine handle for its hot path:
claim/exchange and heartbeats.)

The class is put together from the sides in `conveyor.facade`: the core (settings and
connection), the registry (tasks, hooks, breakers, limits in code), the producer side,
the operator/read side, schedules, and coordination (leases, stored schedules,
recovery: the scheduler's side). `tests/unit/test_facade_door.py` keeps the door shut.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .facade.checks import check_queue
from .facade.core import Hook, JobHook
from .facade.flows import FlowProducer
from .facade.operations import Operations
from .facade.producer import Enqueued
from .facade.registry import JOB_HOOK_KINDS
from .facade.scheduling import Scheduling

if TYPE_CHECKING:
    from .harness import TestHarness

__all__ = ["JOB_HOOK_KINDS", "Conveyor", "Enqueued", "Hook", "JobHook", "check_queue"]


class Conveyor(Operations, FlowProducer, Scheduling):
    """Register tasks and enqueue jobs.

    Args:
        url: engine URL (`redis://…`, `sqlite:///path`, `memory://`). When omitted it
            is resolved on first use from `CONVEYOR_URL`, then `REDIS_URL`, then the
            embedded SQLite file `./conveyor.db`.
        default_queue: queue for tasks registered without `queue=`.
        max_payload_bytes: largest accepted payload (default from settings: 1 MiB).
        clock: time source (tests pass a `FakeClock` with the memory engine).
    """

    def testing(self, **options: Any) -> TestHarness:
        """A test harness: `async with app.testing() as t: ...; await t.run_until_idle()`
        runs this app's tasks on a private `memory://` engine with a fake clock, in this
        process (see `conveyor.harness`).

        Args:
            **options: `start` (fake clock start, epoch seconds), `concurrency`.
        """
        # Imported here: the harness imports the worker runtime, which producers that
        # never test do not need.
        from .harness import TestHarness

        return TestHarness(self, **options)

    def asgi(self, **options: Any) -> Any:
        """The HTTP API and dashboard for this app as an ASGI application (a FastAPI
        instance), to mount in your own server: `starlette_app.mount("/queue", app.asgi())`.

        Args:
            **options: passed to `conveyor.web.create_web_app` (`tokens`,
                `metrics_prefix`, `ws_buffer`); tokens default to the `CONVEYOR_API_*`
                settings.
        """
        # Imported here, not at module level: producers and workers that never serve
        # HTTP do not import FastAPI, and the web layer (which depends on the app) does
        # not become a dependency of the app when `conveyor.app` is imported.
        from .web import create_web_app

        return create_web_app(self, **options)
