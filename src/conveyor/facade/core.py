"""The app's core: settings, the engine connection and the registries every side of
the facade reads.

`Conveyor` (in `conveyor.app`) is put together from the sides in this package: the
registry (`registry.py`), producers (`producer.py`), the read model and operator
actions (`operations.py`), schedules (`scheduling.py`) and coordination
(`coordination.py`). Each side subclasses `AppCore`, so mypy sees every attribute and
engine call it makes; none of them imports another side except where one calls the
other (`scheduling` validates through the producer's `build`, registers through the
registry and stores through coordination).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, Self

from ..breaker import CircuitBreaker
from ..clock import Clock
from ..engines import Engine, open_engine
from ..errors import ConfigError
from ..job import Job
from ..limits import QueueLimits
from ..partitions import PartitionMap, logical
from ..schedules import ScheduleSpec
from ..settings import Settings
from ..task import Task
from ..tracing import Tracing
from .checks import check_queue
from .cursors import CursorSealer
from .results import ResultWaiter
from .sync import SyncBridge

Hook = Callable[[], Any]  # sync or async, no arguments
JobHook = Callable[[Job], Any]  # sync or async, gets the job


class AppCore:
    """Settings, the engine connection and the registries of one app (see `Conveyor`).

    Args:
        url: engine URL (`redis://…`, `sqlite:///path`, `memory://`). When omitted it
            is resolved on first use from `CONVEYOR_URL`, then `REDIS_URL`, then the
            embedded SQLite file `./conveyor.db`.
        default_queue: queue for tasks registered without `queue=`.
        max_payload_bytes: largest accepted payload (default from settings: 1 MiB).
        clock: time source (tests pass a `FakeClock` with the memory engine).
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        default_queue: str = "default",
        max_payload_bytes: int | None = None,
        clock: Clock | None = None,
    ) -> None:
        check_queue(default_queue)
        self._url = url
        # Kept apart from `_url` so the CLI can apply "flag, then environment, then the
        # URL in code, then the default" and say when a flag overrides the code.
        self.url_in_code = url
        self.default_queue = default_queue
        self._max_payload_bytes = max_payload_bytes
        self.clock = clock or Clock()
        self.tasks: dict[str, Task] = {}
        self._engine: Engine | None = None
        self._connected = False
        self._connect_lock: asyncio.Lock | None = None
        self._sync: SyncBridge[Self] | None = None
        self._results: ResultWaiter | None = None  # made by the first `wait`
        # Set by `conveyor.otel.instrument(app)`; None: no tracing (`conveyor.tracing`).
        self.tracing: Tracing | None = None
        self._sync_owner: AppCore | None = None  # set on the sync bridge's private app
        self.startup_hooks: list[Hook] = []
        self.shutdown_hooks: list[Hook] = []
        self.job_hooks: dict[str, list[JobHook]] = {}
        self.schedules: dict[str, ScheduleSpec] = {}  # code-defined, by name
        self.breakers: dict[str, CircuitBreaker] = {}  # per process, by name
        self.queue_limits: dict[str, QueueLimits] = {}  # code-defined, applied by workers
        # Queues declared with events=False (lifecycle rule 7); the engine holds this set.
        self.unstreamed: set[str] = set()
        self.partitions = PartitionMap()  # code-defined partition counts (partitions.py)
        self._layouts_checked: set[str] = set()  # partitioned queues checked this process
        self._cursors: CursorSealer | None = None

    # --- configuration ---------------------------------------------------------------
    @property
    def url(self) -> str:
        """The engine URL (resolved from the environment on first use if not given)."""
        if self._url is None:
            self._url = Settings.load().url
        return self._url

    @property
    def max_payload_bytes(self) -> int:
        if self._max_payload_bytes is None:
            self._max_payload_bytes = Settings.load().max_payload_bytes
        return self._max_payload_bytes

    @property
    def cursors(self) -> CursorSealer:
        """Seals listing cursors (keyed by `api_cursor_secret`, else random per process)."""
        if self._cursors is None:
            secret = Settings.load().api_cursor_secret
            self._cursors = CursorSealer(secret.encode() if secret else None)
        return self._cursors

    def configure(self, *, url: str | None = None, max_payload_bytes: int | None = None) -> None:
        """Override settings before first use (the CLI applies its flags here).

        Raises:
            ConfigError: the app is already connected to an engine.
        """
        if self._engine is not None and (url is not None and url != self._url):
            raise ConfigError("configure(url=...) must be called before the app connects")
        if url is not None:
            self._url = url
        if max_payload_bytes is not None:
            self._max_payload_bytes = max_payload_bytes

    @property
    def engine(self) -> Engine:
        """The engine object (built on first access, connected by `connect`)."""
        if self._engine is None:
            self._engine = open_engine(self.url, clock=self.clock)
            self._engine.unstreamed = self.unstreamed
        return self._engine

    async def connect(self) -> Engine:
        """Connect the engine once; later calls return it at once.

        Raises:
            EngineUnavailable: the engine cannot be reached.
        """
        if not self._connected:
            if self._connect_lock is None:
                self._connect_lock = asyncio.Lock()
            async with self._connect_lock:
                if not self._connected:
                    await self.engine.connect()
                    self._connected = True
        return self.engine

    async def close(self) -> None:
        """Close the engine's connections (and the sync bridge's)."""
        if self._results is not None:
            await self._results.close()
            self._results = None
        if self._engine is not None:
            await self._engine.close()
        self._engine = None
        self._connected = False
        self._connect_lock = None
        if self._sync is not None:
            self._sync.close()
            self._sync = None

    async def __aenter__(self) -> Self:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _bridge(self) -> SyncBridge[Self]:
        """The sync bridge (made on first use): a private loop with a sibling app."""
        if self._sync is None:
            self._sync = SyncBridge(self._sibling)
        return self._sync

    def _sibling(self) -> Self:
        """A new app of the same settings sharing this one's task registry: engine
        connections belong to the loop that made them, so the sync bridge's loop needs
        its own."""
        sibling = type(self)(
            self.url,
            default_queue=self.default_queue,
            max_payload_bytes=self.max_payload_bytes,
            clock=self.clock,
        )
        sibling.tasks = self.tasks
        sibling.unstreamed = self.unstreamed  # its engine skips and polls the same queues
        sibling.partitions = self.partitions
        sibling._sync_owner = self
        return sibling

    def _own(self, job: Job) -> Job:
        """Let `job.wait()` find this app (the caller's app, not the sync bridge's), and
        show the queue operators see, not the partition it is stored in."""
        job._app = self._sync_owner or self
        job.queue = logical(job.queue)
        return job
