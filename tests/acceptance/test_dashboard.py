"""The dashboard in a real browser: headless Chromium (Debian's) driven by Playwright.

Each test serves the API (uvicorn on a free port, as in `test_api.py`) on a SQLite file,
and where jobs must run, a worker *process* — so what the page shows crossed the engine
and the WebSocket. Every test collects the browser console and fails on any error.
Screenshots of each page go to `docs/screenshots/` when UPDATE_SCREENSHOTS=1.

Skipped, with the reason, only when no Chromium binary can be found (`scripts/test`
installs Debian's `chromium`; Playwright's own browser download is not used).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.async_api import Browser, ConsoleMessage, Page, async_playwright, expect

from conveyor import Conveyor, InvalidJob, Worker
from conveyor.api import Tokens
from conveyor.job import Job
from conveyor.scheduler import Scheduler
from conveyor.schedules import LEADER_LEASE, cron_schedule, every_schedule
from tests.acceptance.test_api import StartApi, api_server
from tests.apps.probe import PROBE_QUEUE, register_probe
from tests.conftest import ROOT, SpawnWorker

__all__ = ["api_server"]  # the fixture, re-exported for pytest

SCREENSHOTS = ROOT / "docs" / "screenshots"
Q = PROBE_QUEUE
ADMIN = "admin-token-for-dashboard-tests"
TENANT = "tenant-token-for-acme-tests"
TOKENS = Tokens(admin=ADMIN, tenants={TENANT: "acme"})
AUTH = {"Authorization": f"Bearer {ADMIN}"}
DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}
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


def find_chromium() -> str | None:
    """Debian's Chromium (or one named by CHROMIUM), never a downloaded one."""
    for candidate in (os.environ.get("CHROMIUM"), "/usr/bin/chromium", shutil.which("chromium")):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


def dashboard_app(url: str | None = None) -> Conveyor:
    """The probe app plus `gated`: fails while its gate file is missing, like a job
    whose dependency is down. An operator retry after the gate opens succeeds (a retry
    resets the attempt count, so an attempt-based probe would fail again)."""
    app = Conveyor(url)
    register_probe(app)

    @app.task("gated", queue=Q, max_attempts=1, backoff=0)
    async def gated(job: Job) -> dict[str, str]:
        if not Path(job.payload["gate"]).exists():
            raise ConnectionError(f"dependency down: {job.payload['gate']} is missing")
        return {"status": "ok"}

    return app


# What the worker process runs: `conveyor worker tests.acceptance.test_dashboard:app`.
app = dashboard_app()


@pytest.fixture
def chromium() -> str:
    path = find_chromium()
    if path is None:
        pytest.fail("no Chromium binary (/usr/bin/chromium): scripts/test installs Debian's")
    return path


@pytest.fixture
async def browser(chromium: str) -> AsyncIterator[Browser]:
    async with async_playwright() as pw:
        # `launch` gives every browser a fresh temporary profile (it refuses
        # --user-data-dir), so no state leaks between tests.
        launched = await pw.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        yield launched
        await launched.close()


class Console:
    """Every error the page logs or throws (asserted empty at the end of each test)."""

    def __init__(self) -> None:
        self.errors: list[str] = []

    def watch(self, page: Page) -> Page:
        def on_console(message: ConsoleMessage) -> None:
            if message.type in ("error", "assert"):
                self.errors.append(f"console.{message.type}: {message.text} {message.location}")

        page.on("console", on_console)
        page.on("pageerror", lambda exc: self.errors.append(f"page error: {exc}"))
        return page


@pytest.fixture
def console() -> Iterator[Console]:
    seen = Console()
    yield seen
    assert seen.errors == [], "the browser logged errors:\n" + "\n".join(seen.errors)


@pytest.fixture
def dashboard_worker(spawn_worker: SpawnWorker) -> Callable[[str], subprocess.Popen[bytes]]:
    """`conveyor worker tests.acceptance.test_dashboard:app` in its own process."""
    return lambda url: spawn_worker(
        url,
        "--concurrency",
        "2",
        app_ref="tests.acceptance.test_dashboard:app",
        queues=Q,
        log_level="ERROR",
    )


async def enqueue(base: str, token: str = ADMIN, **body: Any) -> dict[str, Any]:
    body.setdefault("task", "probe")
    async with httpx.AsyncClient(timeout=10) as client:
        r = await client.post(
            f"{base}/jobs", json=body, headers={"Authorization": f"Bearer {token}"}
        )
    assert r.status_code == 201, r.text
    job: dict[str, Any] = r.json()
    return job


async def sign_in(page: Page, base: str, token: str, path: str = "") -> None:
    """Open the dashboard and sign in through the form, as a person would."""
    await page.goto(f"{base}/dashboard{path}")
    await page.get_by_label("API token").fill(token)
    await page.get_by_label("API token").press("Enter")
    await expect(page.locator("#live")).to_have_attribute("data-live", "on", timeout=10_000)


async def run_burst(url: str) -> None:
    """Run every due job once in this process (a separate app: the API sees the engine)."""
    runner = dashboard_app(url)
    try:
        await Worker(runner, queues=[Q], burst=True).run()
    finally:
        await runner.close()


@pytest.fixture
def shots(tmp_path: Path) -> Path:
    """Where screenshots go: `docs/screenshots/` with UPDATE_SCREENSHOTS=1 (then commit
    them), else a temporary directory, so a plain test run leaves the checkout clean."""
    where = SCREENSHOTS if os.environ.get("UPDATE_SCREENSHOTS") == "1" else tmp_path / "shots"
    where.mkdir(parents=True, exist_ok=True)
    return where


async def test_operator_watches_jobs_run_and_retries_a_failed_one_live(
    sqlite_url: str,
    tmp_path: Path,
    api_server: StartApi,
    dashboard_worker: Callable[[str], Any],
    browser: Browser,
    console: Console,
    shots: Path,
) -> None:
    server = api_server(sqlite_url, tokens=TOKENS, app=dashboard_app(sqlite_url))
    gate = tmp_path / "gate"
    failing = await enqueue(server.url, task="gated", payload={"gate": str(gate)})
    for i in range(24):
        await enqueue(server.url, payload={"action": "sleep", "seconds": 0.15, "n": i})
    await enqueue(server.url, payload={"action": "ok"}, delay=3600, tenant="acme")
    schedules = dashboard_app(sqlite_url)
    await schedules.add_schedule(cron_schedule("0 3 * * *", task="probe", name="nightly-report"))
    await schedules.add_schedule(every_schedule(300, task="probe", name="cache-warmer"))
    await schedules.close()

    page = console.watch(await browser.new_page(viewport=DESKTOP))
    await sign_in(page, server.url, ADMIN)
    row = page.locator(f'tr[data-queue="{Q}"]')
    completed = row.locator('[data-count="completed"]')
    await expect(row.locator('[data-count="pending"]')).to_have_text("25")
    await expect(completed).to_have_text("0")

    # Counts move while the worker runs, without a reload: the page follows the socket.
    dashboard_worker(sqlite_url)
    seen: set[str] = set()
    for _ in range(400):
        seen.add(await completed.inner_text())
        if "24" in seen:
            break
        await page.wait_for_timeout(25)
    assert "24" in seen and len(seen - {"0", "24"}) >= 1, f"no intermediate count seen: {seen}"
    await expect(row.locator('[data-count="failed"]')).to_have_text("1")
    await expect(row.locator('[data-count="pending"]')).to_have_text("0")
    await expect(page.locator("#workers-body tr[data-worker]")).to_have_count(1)
    await expect(row.locator("svg.spark.throughput")).to_be_visible()
    await expect(row.locator('[data-col="throughput"]')).to_contain_text("25", timeout=10_000)
    await expect(row.locator('[data-col="failures"]')).to_contain_text("4%")
    await page.screenshot(path=shots / "overview.png", full_page=True)

    # Queue page: the failed tab lists the job with its error.
    await row.get_by_role("link", name=Q, exact=True).click()
    await page.locator('[data-tab="failed"]').click()
    failed_row = page.locator(f'tr[data-job="{failing["id"]}"]')
    await expect(failed_row).to_contain_text("dependency down")
    await expect(page.locator('[data-tab="failed"]')).to_have_attribute("aria-current", "page")
    await page.screenshot(path=shots / "queue.png", full_page=True)

    # Job page: the attempt's error and traceback are there.
    await failed_row.get_by_role("link").first.click()
    await expect(page.locator("#job-state")).to_have_text("failed")
    await expect(page.locator("#timeline")).to_contain_text("ConnectionError: dependency down")
    await page.locator("#timeline summary").click()
    await expect(page.locator("#timeline pre")).to_contain_text("Traceback")
    await expect(page.locator("#job-payload")).to_contain_text(str(gate))

    # The dependency is back: retry with the keyboard only (Tab to the button, Enter).
    gate.touch()
    await page.locator("#view h1").focus()
    for _ in range(30):
        await page.keyboard.press("Tab")
        if await page.evaluate("document.activeElement.id") == "job-retry":
            break
    else:
        pytest.fail("Tab never reached the Retry button")
    await page.keyboard.press("Enter")
    # The worker runs it; the page shows it finish live (no reload).
    await expect(page.locator("#job-state")).to_have_text("completed", timeout=15_000)
    await expect(page.locator("#job-result")).to_contain_text('"status": "ok"')
    await expect(page.locator("#job-retry")).to_be_disabled()
    # Focus was not dropped to <body> when the pressed button became disabled.
    await expect(page.locator("#view h1")).to_be_focused()
    await page.screenshot(path=shots / "job.png", full_page=True)

    # Schedules: listed with their next run, and pausable.
    await page.get_by_role("link", name="Schedules").click()
    nightly = page.locator('tr[data-schedule="nightly-report"]')
    await expect(nightly).to_contain_text("cron 0 3 * * *")
    await expect(nightly.locator("time").first).to_contain_text("in ")
    await nightly.get_by_role("button", name="Pause schedule nightly-report").click()
    await expect(nightly.locator(".badge")).to_have_text("paused")
    await expect(
        nightly.get_by_role("button", name="Resume schedule nightly-report")
    ).to_be_focused()
    await expect(page.locator("#live")).to_have_text("Polling")
    await page.screenshot(path=shots / "schedules.png", full_page=True)
    await page.close()


async def test_bulk_actions_ask_for_confirmation_first(
    sqlite_url: str, api_server: StartApi, browser: Browser, console: Console
) -> None:
    server = api_server(sqlite_url, tokens=TOKENS, app=dashboard_app(sqlite_url))
    for i in range(3):
        await enqueue(server.url, payload={"action": "fail", "n": i}, max_attempts=1)
    for i in range(2):
        await enqueue(server.url, payload={"action": "ok", "n": i})
    await run_burst(sqlite_url)

    page = console.watch(await browser.new_page(viewport=DESKTOP))
    await sign_in(page, server.url, ADMIN, f"#/queue/{Q}?state=failed")
    tab = page.locator('[data-count="failed"]')
    await expect(tab).to_have_text("3")

    # Cancelling the confirmation changes nothing.
    await page.get_by_role("button", name="Retry all failed").click()
    dialog = page.get_by_role("dialog")
    await expect(dialog).to_contain_text("Retry every failed job")
    await dialog.get_by_role("button", name="Cancel").click()
    await expect(dialog).to_be_hidden()
    await expect(tab).to_have_text("3")
    # Confirming does it; the tabs follow live.
    await page.get_by_role("button", name="Retry all failed").click()
    await dialog.get_by_role("button", name="Retry all").click()
    await expect(tab).to_have_text("0")
    await expect(page.locator('[data-count="pending"]')).to_have_text("3")

    # Clean: the age is asked for in the dialog.
    await page.get_by_role("button", name="Clean old jobs…").click()
    await dialog.get_by_label("Jobs in state").select_option("completed")
    await dialog.get_by_label("Finished more than").fill("0")
    await dialog.get_by_role("button", name="Delete").click()
    await expect(page.locator('[data-count="completed"]')).to_have_text("0")
    await expect(page.locator("#toast")).to_contain_text("2 completed job(s) deleted")

    # Filters: tenant on the server; task/text on the fetched page, and the UI says so.
    await page.locator('[data-tab="pending"]').click()
    # The tab re-renders the view: a filter typed before that lands in the old form.
    await expect(page.locator('[data-tab="pending"]')).to_have_attribute("aria-current", "page")
    await page.get_by_label("Text in payload or error").fill('"n":1')
    await page.get_by_role("button", name="Apply filters").click()
    await expect(page.locator("#jobs-body tr[data-job]")).to_have_count(1)
    await expect(page.locator("#shown")).to_contain_text("out of 3 on this page")
    await expect(page.locator("#filter-hint")).to_contain_text("page already fetched")
    await page.close()


async def test_phone_width_overview_and_pause_with_keyboard(
    sqlite_url: str, api_server: StartApi, browser: Browser, console: Console, shots: Path
) -> None:
    server = api_server(sqlite_url, tokens=TOKENS, app=dashboard_app(sqlite_url))
    for i in range(6):
        await enqueue(server.url, payload={"action": "fail" if i == 0 else "ok"}, max_attempts=1)
    await run_burst(sqlite_url)
    await enqueue(server.url, payload={"action": "ok"})

    page = console.watch(await browser.new_page(viewport=PHONE, is_mobile=True, has_touch=True))
    await sign_in(page, server.url, ADMIN)
    row = page.locator(f'tr[data-queue="{Q}"]')
    await expect(row.locator('[data-count="completed"]')).to_have_text("5")
    await expect(row.locator("svg.spark.failures")).to_be_visible()
    # Nothing is wider than the phone: the tables turned into cards.
    assert await page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
    await page.screenshot(path=shots / "mobile-overview.png", full_page=True)

    await row.get_by_role("link", name=Q, exact=True).click()
    pause = page.get_by_role("button", name="Pause queue")
    await expect(page.locator("#paused-badge")).to_be_hidden()
    await pause.focus()
    await page.keyboard.press("Enter")
    dialog = page.get_by_role("dialog")
    await expect(dialog).to_be_visible()
    await dialog.get_by_role("button", name="Pause").press("Enter")
    await expect(page.locator("#paused-badge")).to_be_visible()
    await expect(page.get_by_role("button", name="Resume queue")).to_be_focused()
    assert await page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
    await page.close()


async def test_tenant_token_sees_only_its_jobs_and_no_actions(
    sqlite_url: str, api_server: StartApi, browser: Browser, console: Console
) -> None:
    server = api_server(sqlite_url, tokens=TOKENS, app=dashboard_app(sqlite_url))
    mine = await enqueue(server.url, TENANT, payload={"who": "acme"})
    theirs = await enqueue(server.url, payload={"who": "globex"}, tenant="globex")

    page = console.watch(await browser.new_page(viewport=DESKTOP))
    sockets: list[str] = []
    page.on("websocket", lambda ws: sockets.append(ws.url))
    await page.goto(f"{server.url}/dashboard")
    await page.get_by_label("API token").fill("not-a-valid-token-at-all")
    await page.get_by_role("button", name="Sign in").click()
    await expect(page.locator("#login-error")).to_contain_text("invalid bearer token")

    await page.get_by_label("API token").fill(TENANT)
    await page.get_by_role("button", name="Sign in").click()
    await expect(page.locator("#who")).to_have_text("tenant acme · read-only")
    await expect(page.get_by_role("link", name="Schedules")).to_be_hidden()
    await page.get_by_label("Queue name").fill(Q)
    await page.get_by_role("button", name="Open queue").click()
    await expect(page.locator(f'tr[data-job="{mine["id"]}"]')).to_be_visible()
    await expect(page.locator(f'tr[data-job="{theirs["id"]}"]')).to_have_count(0)
    assert await page.locator("#retry-all, #clean, #pause-toggle").count() == 0

    await page.locator(f'tr[data-job="{mine["id"]}"] a').first.click()
    await expect(page.locator("#job-state")).to_have_text("pending")
    assert await page.locator("#job-retry, #job-cancel, #job-promote").count() == 0
    await expect(page.locator("#job .notice")).to_contain_text("Read-only")
    # Live updates authenticated with a subprotocol: the token is in no WebSocket URL
    # (URLs reach access logs and history).
    assert sockets and not [url for url in sockets if TENANT in url or "token=" in url]
    await page.close()


async def test_page_and_assets_are_local_and_locked_down(
    sqlite_url: str, api_server: StartApi
) -> None:
    server = api_server(sqlite_url, tokens=TOKENS)
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
        page = await client.get("/dashboard")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        csp = page.headers["content-security-policy"]
        assert "script-src 'self'" in csp and "unsafe-inline" not in csp
        assert "http://" not in page.text.replace(server.url, "") and "https://" not in page.text
        for asset in ("dashboard.js", "dashboard.css", "favicon.svg"):
            r = await client.get(f"/dashboard/static/{asset}")
            assert r.status_code == 200 and "immutable" in r.headers["cache-control"]
            assert "https://" not in r.text, f"{asset} refers to the internet"
        assert (await client.get("/dashboard/static/..%2Fpyproject.toml")).status_code == 404
        assert (await client.get("/dashboard/static/router.py")).status_code == 404

        # Same tokens as the API: the data endpoints refuse a missing token or a tenant.
        session = (await client.get("/dashboard/api/session")).json()
        assert session["signed_in"] is False and session["auth"] is True
        tenant = {"Authorization": f"Bearer {TENANT}"}
        admin = {"Authorization": f"Bearer {ADMIN}"}
        who = (await client.get("/dashboard/api/session", headers=tenant)).json()
        assert (who["signed_in"], who["admin"], who["tenant"]) == (True, False, "acme")
        assert (await client.get("/dashboard/api/throughput")).status_code == 401
        assert (await client.get("/dashboard/api/throughput", headers=tenant)).status_code == 403
        assert (await client.get("/dashboard/api/schedules", headers=tenant)).status_code == 403
        r = await client.post("/dashboard/api/schedules/x/pause", headers=tenant)
        assert r.status_code == 403

        await enqueue(server.url, payload={"action": "ok"})
        history = (await client.get("/dashboard/api/throughput", headers=admin)).json()
        assert history["minutes"] == 60 and list(history["queues"]) == [Q]
        assert len(history["queues"][Q]["completed"]) == 60
        r = await client.get("/dashboard/api/throughput?queue=bad%20name", headers=admin)
        assert r.status_code == 422
        none = (await client.get("/dashboard/api/schedules", headers=admin)).json()
        assert none == {"configured": False, "leader": None, "schedules": []}
        r = await client.post("/dashboard/api/schedules/missing/pause", headers=admin)
        assert r.status_code == 404
        # Nothing of the dashboard leaks into the API's schema.
        paths = (await client.get("/openapi.json")).json()["paths"]
        assert not [p for p in paths if p.startswith("/dashboard")]


async def test_schedules_page_shows_a_schedule_last_error_as_text(
    sqlite_url: str, api_server: StartApi, browser: Browser, console: Console
) -> None:
    server = api_server(sqlite_url, tokens=TOKENS, app=dashboard_app(sqlite_url))
    leader_app = dashboard_app(sqlite_url)
    leader = Scheduler(leader_app)
    assert (await leader.tick()).leader
    await leader_app.add_schedule(every_schedule(300, task="probe", name="broken"))
    html = "<img src=x onerror=alert(1)> not stored"
    assert await leader_app.record_schedule_error(
        "broken", InvalidJob(html), 1_000, at_ms=2_000, lease=LEADER_LEASE, holder=leader.id
    )
    await leader_app.close()
    async with httpx.AsyncClient(base_url=server.url) as client:
        admin = {"Authorization": f"Bearer {ADMIN}"}
        [row] = (await client.get("/dashboard/api/schedules", headers=admin)).json()["schedules"]
    expected = {"message": html, "type": "InvalidJob", "at": 2.0, "occurrence": 1.0}
    assert row["last_error"] == expected

    page = console.watch(await browser.new_page(viewport=DESKTOP))
    # Not sign_in(): the schedules page polls instead of holding the live feed.
    await page.goto(f"{server.url}/dashboard#/schedules")
    await page.get_by_label("API token").fill(ADMIN)
    await page.get_by_label("API token").press("Enter")
    error = page.locator('tr[data-schedule="broken"] [data-last-error]')
    await expect(error).to_have_text(f"last error: InvalidJob: {html}")
    assert await page.locator("tr[data-schedule] img").count() == 0  # text, never HTML


async def test_desktop_fit_empty_states_throughput_label_and_first_non_empty_tab(
    sqlite_url: str, api_server: StartApi, browser: Browser, console: Console
) -> None:
    server = api_server(sqlite_url, tokens=TOKENS, app=dashboard_app(sqlite_url))
    page = console.watch(await browser.new_page(viewport=DESKTOP))
    # Nothing stored yet: the schedules page says so instead of showing an empty table.
    await sign_in(page, server.url, ADMIN, f"#/queue/{Q}")
    await page.get_by_role("link", name="Overview").first.click()
    await expect(page.locator("#queues-body td.empty")).to_contain_text("No queue")
    await page.get_by_role("link", name="Schedules").click()
    await expect(page.locator("#no-scheduler")).to_be_visible()
    # A scheduler leads but nothing is scheduled: say how to add one, not an empty table.
    leader = dashboard_app(sqlite_url)
    assert (await Scheduler(leader).tick()).leader
    await leader.close()
    await page.reload()
    await expect(page.locator("#no-schedules")).to_contain_text("No schedule yet")

    # A long queue name and big counts: at 1280 px the whole queue table is visible,
    # the Status column included, with no horizontal scrollbar.
    wide = "billing_invoices_for_customers_in_eu_west_1"
    for i in range(3):
        await enqueue(server.url, payload={"action": "fail", "n": i}, max_attempts=1)
    await enqueue(server.url, task="elsewhere.task", queue=wide)
    await run_burst(sqlite_url)
    limiter = dashboard_app(sqlite_url)
    await limiter.set_limits(wide, concurrency=5, rate="100/1s")
    await limiter.close()
    await page.goto(f"{server.url}/dashboard#/")
    row = page.locator(f'tr[data-queue="{Q}"]')
    await expect(row.locator('[data-count="failed"]')).to_have_text("3")
    fits = await page.evaluate(
        """() => { const wrap = document.querySelector('#queues').parentElement;
                   return wrap.scrollWidth <= wrap.clientWidth; }"""
    )
    assert fits, "the queue table overflows its box at 1280 px"
    status = page.locator("#queues thead th", has_text="Status")
    box = await status.bounding_box()
    assert box is not None and box["x"] + box["width"] <= DESKTOP["width"]
    # Limits in effect and why pending jobs wait are on the queue's row.
    held = page.locator(f'tr[data-queue="{wide}"]')
    await expect(held.locator('[data-col="limits"]')).to_have_text(
        "limits: concurrency 5, rate 100/1s"
    )
    await expect(held.locator('[data-col="held-back"]')).to_contain_text(
        "no live worker consumes this queue"
    )
    # The throughput column says what it counts: jobs finished in the last hour, not a rate.
    header = page.locator("#queues thead th").nth(8)
    await expect(header).to_have_text("Finished (last hour)")
    finished = row.locator('[data-col="throughput"] .num')
    await expect(finished).to_have_text("3", timeout=10_000)
    assert "/h" not in await finished.inner_text()

    # The queue page opens on the first state that has jobs (failed here), not on an
    # empty "pending" tab; an explicit state in the URL is kept, with an empty state.
    await row.get_by_role("link", name=Q, exact=True).click()
    await expect(page.locator('[data-tab="failed"]')).to_have_attribute("aria-current", "page")
    await expect(page.locator("#jobs-body tr[data-job]")).to_have_count(3)
    # A job's page shows the timeout and backoff in effect, and where they come from.
    await page.locator("#jobs-body tr[data-job] a").first.click()
    options = page.locator("dl.pairs")
    await expect(options).to_contain_text("fixed 0s (task default)")
    await expect(options).to_contain_text("no limit (task default)")
    await page.goto(f"{server.url}/dashboard#/queue/{Q}?state=running")
    await expect(page.locator('[data-tab="running"]')).to_have_attribute("aria-current", "page")
    await expect(page.locator("#jobs-body td.empty")).to_contain_text("No running jobs")


async def test_open_api_dashboard_works_from_the_printed_url(
    sqlite_url: str, api_server: StartApi, browser: Browser, console: Console
) -> None:
    """With no tokens (`conveyor dev`), the Host/Origin checks that keep other websites
    out must let the dashboard itself in: its reads, its live socket, its actions —
    including pausing a schedule whose name holds a `/`."""
    schedules = dashboard_app(sqlite_url)
    await schedules.add_schedule(every_schedule(300, task="probe", name="reports/daily"))
    await schedules.close()
    server = api_server(sqlite_url, app=dashboard_app(sqlite_url))  # no tokens
    page = console.watch(await browser.new_page(viewport=DESKTOP))
    await page.goto(f"{server.url}/dashboard#/queue/{Q}")
    await expect(page.locator("#who")).to_have_text("open API (no tokens)")
    await expect(page.locator("#live")).to_have_attribute("data-live", "on", timeout=10_000)
    job = await enqueue(server.url, payload={"action": "ok"})
    await expect(page.locator(f'tr[data-job="{job["id"]}"]')).to_be_visible()  # live

    await page.get_by_role("button", name="Pause queue").click()
    await page.get_by_role("dialog").get_by_role("button", name="Pause").click()
    await expect(page.locator("#paused-badge")).to_be_visible()

    await page.goto(f"{server.url}/dashboard#/schedules")
    row = page.locator('tr[data-schedule="reports/daily"]')
    await row.get_by_role("button", name="Pause schedule reports/daily").click()
    await expect(row.get_by_role("button", name="Resume schedule reports/daily")).to_be_visible()
    stored = dashboard_app(sqlite_url)
    assert [s.paused for s in await stored.list_schedules()] == [True]
    await stored.close()
    await page.close()


async def test_flow_tree_follows_its_childrens_state_changes(
    sqlite_url: str, api_server: StartApi, browser: Browser, console: Console
) -> None:
    """The parent's page redraws its tree when a child changes state and the parent does
    not (no event of its own): a cancelled `ignore` child, then a promoted one."""
    server = api_server(sqlite_url, tokens=TOKENS, app=dashboard_app(sqlite_url))
    later = {"task": "probe", "payload": {"action": "ok"}, "delay": 3600}
    async with httpx.AsyncClient(timeout=10) as client:
        r = await client.post(
            f"{server.url}/flows",
            json={"parent": {"task": "probe", "payload": {"action": "ok"}},
                  "children": [{**later, "on_failure": "ignore"}, later]},
            headers=AUTH,
        )  # fmt: skip
        assert r.status_code == 201, r.text
        parent = r.json()
        flow = (await client.get(f"{server.url}/flows/{parent['id']}", headers=AUTH)).json()
        page = console.watch(await browser.new_page(viewport=DESKTOP))
        await sign_in(page, server.url, ADMIN, f"#/job/{parent['id']}")
        badges = page.locator("#flow-tree li li .badge")
        await expect(badges).to_have_text(["scheduled", "scheduled"])
        first, second = (c["id"] for c in flow["children"])
        r = await client.post(f"{server.url}/jobs/{first}/cancel", headers=AUTH)
        assert r.status_code == 200, r.text
        await expect(badges).to_have_text(["cancelled", "scheduled"])
        r = await client.post(f"{server.url}/jobs/{second}/promote", headers=AUTH)
        assert r.status_code == 200, r.text
        await expect(badges).to_have_text(["cancelled", "pending"])
    await expect(page.locator("#job-state")).to_have_text("waiting-children")
    await page.close()


async def test_job_page_draws_its_flow_as_a_tree_and_retry_rearms_the_parent(
    sqlite_url: str, tmp_path: Path, api_server: StartApi, browser: Browser, console: Console
) -> None:
    """A flow whose first child fails (fail_parent): the parent's page shows the tree with
    each job's state; from the failed child's page, Retry re-arms the parent, and once
    the children ran the parent completes."""
    server = api_server(sqlite_url, tokens=TOKENS, app=dashboard_app(sqlite_url))
    gate = tmp_path / "gate"
    async with httpx.AsyncClient(timeout=10) as client:
        r = await client.post(
            f"{server.url}/flows",
            json={
                "parent": {"task": "probe", "payload": {"action": "ok"}},
                "children": [
                    {"task": "gated", "payload": {"gate": str(gate)}},
                    # due in an hour: still unfinished when its sibling fails
                    {
                        "task": "probe",
                        "payload": {"action": "ok"},
                        "delay": 3600,
                        "on_failure": "ignore",
                    },
                ],
            },
            headers={"Authorization": f"Bearer {ADMIN}"},
        )
    assert r.status_code == 201, r.text
    parent = r.json()
    page = console.watch(await browser.new_page(viewport=DESKTOP))
    await sign_in(page, server.url, ADMIN, f"#/job/{parent['id']}")
    tree = page.locator("#flow-tree")
    await expect(page.locator("#job-state")).to_have_text("waiting-children")
    await expect(tree.locator("li")).to_have_count(3)
    await expect(tree.locator("strong[aria-current]")).to_contain_text("this job")

    await run_burst(sqlite_url)  # the gated child fails: the parent fails, live
    await expect(page.locator("#job-state")).to_have_text("failed")
    await expect(page.locator("#timeline")).to_contain_text("ChildFailed")
    gated = tree.locator("li li").filter(has_text="gated")
    await expect(gated.locator(".badge")).to_have_text("failed")
    await expect(tree.locator("li li").filter(has_text="probe").locator(".badge")).to_have_text(
        "cancelled"
    )
    await gated.get_by_role("link", name="gated").click()
    await expect(page.locator("#flow-tree strong[aria-current]")).to_contain_text("gated")
    gate.touch()
    await page.locator("#job-retry").click()
    await expect(page.locator("#job-state")).to_have_text("pending")
    await expect(page.locator("#flow-tree > li > .badge")).to_have_text("waiting-children")
    # the delayed sibling comes back at its own due time: promote it to run it now
    delayed = tree.locator("li li").filter(has_text="probe")
    await expect(delayed.locator(".badge")).to_have_text("scheduled")
    async with httpx.AsyncClient(timeout=10) as client:
        flow = (await client.get(f"{server.url}/flows/{parent['id']}", headers=AUTH)).json()
        r = await client.post(f"{server.url}/jobs/{flow['children'][1]['id']}/promote",
                              headers=AUTH)  # fmt: skip
    assert r.status_code == 200, r.text
    await expect(delayed.locator(".badge")).to_have_text("pending")  # a sibling's event
    await run_burst(sqlite_url)
    await run_burst(sqlite_url)  # the children, then the released parent
    await page.locator("#flow-tree > li > a").click()
    await expect(page.locator("#job-state")).to_have_text("completed")
    await expect(page.locator("#flow-tree .badge")).to_have_text(["completed"] * 3)
    await page.close()
