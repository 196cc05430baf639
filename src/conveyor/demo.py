"""The demo: a producer and a worker in one process, with a live terminal view.

`conveyor demo` enqueues a stream of jobs — emails, webhooks that sometimes fail and
retry, reports that report progress — into the embedded SQLite engine and runs them,
until Ctrl-C (which shuts down gracefully, like a real worker).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import signal
import time
from collections import deque

from rich.console import Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from .app import Conveyor
from .errors import Unrecoverable
from .job import Job
from .worker import Worker

QUEUES = ("notifications", "webhooks", "reports")


def build_app(url: str | None = None) -> Conveyor:
    """The demo's tasks; flaky on purpose so retries and the dead-letter state show."""
    app = Conveyor(url)

    @app.task("email.send", queue="notifications", max_attempts=3, backoff=[0.5, 1, 2])
    async def send_email(job: Job) -> dict[str, str]:
        await asyncio.sleep(random.uniform(0.01, 0.05))
        if random.random() < 0.1:
            raise ConnectionError("SMTP 421: try again later")
        return {"sent_to": str(job.payload.get("to"))}

    @app.task("webhook.deliver", queue="webhooks", max_attempts=4, backoff=[0.5, 1, 2])
    async def deliver(job: Job) -> int:
        await asyncio.sleep(random.uniform(0.02, 0.1))
        roll = random.random()
        if roll < 0.03:
            raise Unrecoverable("410 Gone: endpoint removed")
        if roll < 0.25:
            raise RuntimeError("503 from endpoint")
        return 200

    @app.task("report.build", queue="reports", max_attempts=2, timeout=10)
    async def build_report(job: Job) -> str:
        for pct in (25, 50, 75, 100):
            await asyncio.sleep(0.05)
            await job.progress(pct)
        return f"report-{job.payload.get('n')}.pdf"

    return app


# The demo tasks as an app reference (`conveyor worker conveyor.demo:app`): what the
# Docker Compose and Kubernetes examples run until you put your own app there.
app = build_app()


async def produce(app: Conveyor, rate: float, stop: asyncio.Event) -> int:
    """Enqueue demo jobs at about `rate` per second until `stop`; return how many."""
    n = 0
    while not stop.is_set():
        batch: list[dict[str, object]] = []
        for _ in range(max(1, int(rate / 10))):
            n += 1
            kind = n % 10
            if kind < 6:
                batch.append(
                    {
                        "task": "email.send",
                        "payload": {"to": f"user{n}@example.com"},
                        "tenant": f"tenant-{n % 3}",
                    }
                )
            elif kind < 9:
                batch.append({"task": "webhook.deliver", "payload": {"url": f"https://h/{n}"}})
            else:
                batch.append({"task": "report.build", "payload": {"n": n}, "priority": 5})
        await app.enqueue_many(batch)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.1)
    return n


async def summary(app: Conveyor, worker: Worker, enqueued: int, elapsed: float) -> str:
    """What the demo did, printed when it stops (the live table is gone by then)."""
    counts = [await app.counts(q) for q in QUEUES]
    done = sum(c.completed for c in counts)
    dead = sum(c.failed for c in counts)
    left = sum(c.pending + c.scheduled + c.running for c in counts)
    lines = [
        f"demo stopped after {elapsed:.0f}s: enqueued {enqueued} jobs this run",
        f"  in the queues now: {done} completed, {dead} failed (dead-letter), {left} "
        "pending/scheduled (the next run picks them up)",
        f"  this worker: {worker.stats.processed} completed, {worker.stats.retried} retried, "
        f"{worker.stats.failed} failed, {worker.stats.released} handed back at shutdown",
        f"  jobs are kept in {app.url}: `conveyor queues`, "
        "`conveyor jobs webhooks --state failed`, `conveyor retry-all webhooks`",
    ]
    return "\n".join(lines)


async def view(
    app: Conveyor, worker: Worker, url: str, dashboard: str, done: asyncio.Event
) -> None:
    started = time.monotonic()
    history: deque[tuple[float, int]] = deque(maxlen=20)

    async def render() -> Group:
        table = Table(title=f"Conveyor demo on {url}", title_justify="left")
        for col in ("queue", "scheduled", "pending", "running", "completed", "failed"):
            table.add_column(col, justify="right" if col != "queue" else "left")
        total_done = 0
        for q in QUEUES:
            c = await app.counts(q)
            total_done += c.completed
            table.add_row(
                q,
                str(c.scheduled),
                str(c.pending),
                str(c.running),
                f"[green]{c.completed}",
                f"[red]{c.failed}",
            )
        now = time.monotonic()
        history.append((now, total_done))
        rate = 0.0
        if len(history) > 1 and history[-1][0] > history[0][0]:
            rate = (history[-1][1] - history[0][1]) / (history[-1][0] - history[0][0])
        footer = Text.from_markup(
            f"worker {worker.id}: in flight {worker.in_flight}/{worker.concurrency}, "
            f"retried {worker.stats.retried}, {rate:.0f} jobs/s, up {now - started:.0f}s\n"
            f"dashboard: [bold]{dashboard}[/]\n"
            "inspect: [bold]conveyor queues[/], [bold]conveyor jobs webhooks --state failed[/]"
            "   stop: [bold]Ctrl-C[/] (graceful)"
        )
        return Group(table, footer)

    with Live(await render(), refresh_per_second=4, transient=False) as live:
        while not done.is_set():
            await asyncio.sleep(0.5)
            live.update(await render())
        live.update(await render())


async def run_demo(
    url: str, *, rate: float, concurrency: int, duration: float | None, port: int = 8000
) -> None:
    """Produce and process jobs until Ctrl-C / SIGTERM (or `duration` seconds), with the
    API and dashboard served on `port` (a free one if it is taken) and a scheduler."""
    from .dev import DevStack

    app = build_app(url)
    worker = Worker(app, queues=QUEUES, concurrency=concurrency, shutdown_timeout=10)
    stack = DevStack(app, worker, port=port, close_app=False)
    await stack.start()
    stop, done = asyncio.Event(), asyncio.Event()

    def on_signal() -> None:
        stop.set()
        stack.stop()

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal)
    if duration is not None:
        loop.call_later(duration, on_signal)
    started = time.monotonic()
    producer = asyncio.create_task(produce(app, rate, stop))
    screen = asyncio.create_task(view(app, worker, url, f"{stack.url}/dashboard", done))
    try:
        await stack.run()
    finally:
        stop.set()
        enqueued = await producer
        done.set()
        await screen
        with contextlib.suppress(Exception):  # a summary must not hide why we stopped
            print("\n" + await summary(app, worker, enqueued, time.monotonic() - started))
        await app.close()
