"""Everything in one process: worker, HTTP API + dashboard, scheduler (`conveyor dev`).

The same pieces run as separate processes in production (`conveyor worker`,
`conveyor api`, `conveyor scheduler`); here they share one event loop and one app,
which is what a laptop, a demo or a small single-machine install wants.
"""

from __future__ import annotations

import asyncio
import contextlib

from .api import Tokens
from .app import Conveyor
from .errors import ConfigError
from .scheduler import Scheduler
from .serving import EmbeddedServer
from .web import create_web_app
from .worker import Worker


class DevStack:
    """A worker, the API (with the dashboard at `/dashboard`) and a scheduler.

    Args:
        app: the app all three use.
        worker: the worker to run (its queues, concurrency, ...).
        host: where the API listens; loopback by default, because the dev API is
            usually open (no tokens).
        port: API port; if it is taken, a free one is used instead (see `url`).
        scheduler: run a scheduler too (schedules, retention cleanup, recovery).
        close_app: close the app's engine when `run` ends.
        tokens: the API's bearer tokens (`conveyor dev` loads them from the same
            settings as `conveyor api`); none means an open API, answering only
            localhost names and same-origin pages.
        public_hosts: host names besides localhost that an open API answers to.
    """

    def __init__(
        self,
        app: Conveyor,
        worker: Worker,
        *,
        host: str = "127.0.0.1",
        port: int = 8000,
        scheduler: bool = True,
        close_app: bool = True,
        tokens: Tokens | None = None,
        public_hosts: tuple[str, ...] = (),
    ) -> None:
        self.app = app
        self.worker = worker
        self.host = host
        self.port = port
        self.scheduler = Scheduler(app) if scheduler else None
        self.close_app = close_app
        self.tokens = tokens or Tokens()
        self.public_hosts = public_hosts
        self._server: EmbeddedServer | None = None
        self._scheduler_task: asyncio.Task[None] | None = None

    @property
    def url(self) -> str:
        """Base URL of the API (the dashboard is at `url + "/dashboard"`)."""
        port = self._server.port if self._server else self.port
        return f"http://{self.host}:{port}"

    async def start(self) -> None:
        """Connect, then serve the API and start the scheduler (the worker runs in `run`).

        Raises:
            EngineUnavailable: the engine cannot be reached.
        """
        await self.app.connect()
        api = create_web_app(
            self.app,
            tokens=self.tokens,
            owns_app=False,
            public_hosts=self.public_hosts,
            public_metrics=False,
        )
        self._server = EmbeddedServer(api, self.host, self.port, lifespan="on")
        try:
            await self._server.start()
        except ConfigError:  # port taken: any free port will do for a dev stack
            self._server = EmbeddedServer(api, self.host, 0, lifespan="on")
            await self._server.start()
        if self.scheduler is not None:
            self._scheduler_task = asyncio.create_task(self.scheduler.run(), name="scheduler")

    def stop(self) -> None:
        """Begin a graceful stop of everything (safe from a signal handler)."""
        self.worker.stop()
        if self.scheduler is not None:
            self.scheduler.stop()

    async def run(self) -> None:
        """Run the worker until `stop()`, then shut the rest down in reverse order."""
        try:
            await self.worker.run()
        finally:
            if self.scheduler is not None:
                self.scheduler.stop()
            if self._scheduler_task is not None:
                with contextlib.suppress(asyncio.CancelledError):
                    await self._scheduler_task
            if self._server is not None:
                await self._server.stop()
            if self.close_app:
                await self.app.close()
