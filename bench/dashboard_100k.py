"""How fast the dashboard's queue page renders with 100,000 completed jobs in the queue.

    .venv/bin/python bench/dashboard_100k.py [--jobs 100000] [--runs 5]

Fills a fresh SQLite file through the engine (bulk `enqueue`, then `exchange` calls that
claim and complete a batch each, as workers would), serves the API and dashboard with
uvicorn on a free port, and opens the queue page in headless Chromium (Debian's
`/usr/bin/chromium`, driven by Playwright). Each run is a full navigation — HTML, script,
CSS, the API reads and rendering — timed from the start of navigation until the first
page of jobs and the state counts are on screen (`performance.now()` in the page, whose
origin is the navigation start). Also timed: "Next page" deep into the list (cursor
pagination: one index range per page, no OFFSET) and the overview (counts and the
one-hour sparklines over all 100,000 finishes).

Exits 1 when the median queue-page render is not under one second. Not a test: the
figure depends on the machine; the acceptance tests check behaviour.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import socket
import statistics
import sys
import tempfile
import threading
import time

import uvicorn
from playwright.async_api import Page, async_playwright

from conveyor import Conveyor
from conveyor.api import Tokens
from conveyor.engines import Outcome
from conveyor.web import create_web_app

QUEUE = "bench"
TOKEN = "dashboard-benchmark-admin-token"
BATCH = 2000
BUDGET_SECONDS = 1.0
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


async def fill(url: str, jobs: int) -> float:
    """Enqueue `jobs` jobs and complete them all; returns the seconds it took."""
    app = Conveyor(url)
    started = time.perf_counter()
    engine = await app.connect()
    try:
        for start in range(0, jobs, BATCH):
            n = min(BATCH, jobs - start)
            await engine.enqueue(
                [
                    app.build("report.render", {"n": start + i, "user": f"u{(start + i) % 97}"},
                              queue=QUEUE, tenant=f"t{(start + i) % 5}")
                    for i in range(n)
                ]
            )  # fmt: skip
            claimed = await engine.exchange(
                [], queues=[QUEUE], limit=n, worker_id="bench", lease_ms=600_000
            )
            outcomes = [
                Outcome(job.id, str(job.token), "complete", result_json='{"pages": 3}')
                for job in claimed.jobs
            ]
            await engine.exchange(
                outcomes, queues=[QUEUE], limit=0, worker_id="bench", lease_ms=600_000
            )
        counts = await engine.counts(QUEUE)
        assert counts.completed == jobs, counts
    finally:
        await app.close()
    return time.perf_counter() - started


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """The API (with the dashboard) under uvicorn in a background thread."""

    def __init__(self, url: str) -> None:
        self.port = free_port()
        api = create_web_app(
            Conveyor(url), tokens=Tokens(admin=TOKEN), metrics_prefix="bench_", owns_app=True
        )
        config = uvicorn.Config(api, host="127.0.0.1", port=self.port, log_level="warning")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.01)
        return f"http://127.0.0.1:{self.port}"

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(15)


ROWS_SHOWN = "document.querySelectorAll('#jobs-body tr[data-job]').length === 50"
COUNTS_SHOWN = "document.querySelector('[data-count=completed]') !== null"


async def time_navigation(page: Page, url: str, ready: str) -> float:
    """Seconds from navigation start until `ready` holds (measured inside the page)."""
    await page.goto("about:blank")
    await page.goto(url)
    await page.wait_for_function(f"() => {ready}", polling="raf", timeout=30_000)
    return float(await page.evaluate("performance.now()")) / 1000


async def time_click(page: Page, selector: str, ready: str) -> float:
    """Seconds from a click until `ready` holds again (the old rows are marked first)."""
    await page.evaluate(
        "document.querySelectorAll('#jobs-body tr').forEach(r => r.dataset.old = '1')"
    )
    started = float(await page.evaluate("performance.now()"))
    await page.click(selector)
    await page.wait_for_function(
        f"() => !document.querySelector('#jobs-body tr[data-old]') && ({ready})",
        polling="raf",
        timeout=30_000,
    )
    return (float(await page.evaluate("performance.now()")) - started) / 1000


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    chromium = shutil.which("chromium") or "/usr/bin/chromium"
    if not os.access(chromium, os.X_OK):
        print("no Chromium: apt-get install -y chromium", file=sys.stderr)
        return 2

    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{tmp}/bench.db"
        took = await fill(url, args.jobs)
        print(f"filled {args.jobs:,} completed jobs in {took:.1f}s")
        with Server(url) as base:
            async with async_playwright() as pw:
                browser = await pw.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
                page = await browser.new_page(viewport={"width": 1280, "height": 800})
                # Sign in once: the token lives in this tab's sessionStorage from then on.
                await page.goto(f"{base}/dashboard")
                await page.fill("#token", TOKEN)
                await page.press("#token", "Enter")
                await page.wait_for_selector("#queues-body tr[data-queue]")

                queue_url = f"{base}/dashboard#/queue/{QUEUE}?state=completed"
                ready = f"{ROWS_SHOWN} && {COUNTS_SHOWN}"
                await time_navigation(page, queue_url, ready)  # warm-up: caches, JIT
                queue = [await time_navigation(page, queue_url, ready) for _ in range(args.runs)]
                pages = [await time_click(page, "#next-page", ROWS_SHOWN) for _ in range(args.runs)]
                overview_ready = (
                    "document.querySelector('#queues-body svg.spark.throughput') !== null"
                )
                overview = [
                    await time_navigation(page, f"{base}/dashboard#/", overview_ready)
                    for _ in range(args.runs)
                ]
                await browser.close()

    def show(label: str, values: list[float]) -> None:
        ms = sorted(v * 1000 for v in values)
        print(f"{label:<46} median {statistics.median(ms):6.0f} ms   max {ms[-1]:6.0f} ms")

    print(f"\n{args.jobs:,} completed jobs in queue {QUEUE!r}, {args.runs} runs each:")
    show("queue page (navigation -> 50 rows + counts)", queue)
    show("next page (click -> 50 rows, cursor)", pages)
    show("overview (navigation -> counts + sparklines)", overview)
    median = statistics.median(queue)
    verdict = "OK" if median < BUDGET_SECONDS else "TOO SLOW"
    budget = f"budget {BUDGET_SECONDS * 1000:.0f} ms"
    print(f"\nqueue page render: {median * 1000:.0f} ms ({budget}) {verdict}")
    return 0 if median < BUDGET_SECONDS else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
