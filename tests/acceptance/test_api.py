"""The HTTP API over real HTTP: uvicorn on a free port, real WebSocket clients.

Each API runs in a background thread with its own event loop and its own app instance
(as `conveyor api` would in its own process); jobs are run by a worker *process* or an
in-process burst worker on a separate app instance, so everything the API shows crossed
the engine. `api_server`, `worker_process` and the client helpers here are reused by
`test_api_auth.py` and `test_api_schema.py`.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import uvicorn
import websockets
from starlette.applications import Starlette
from starlette.routing import Mount

from conveyor import Conveyor, Worker
from conveyor.api import Tokens, openapi_json
from conveyor.api.models import JobOut, QueueOverviewOut
from conveyor.engines import Event, QueueCounts
from conveyor.job import Job, JobState
from conveyor.live import Subscriber
from conveyor.status import overview_row
from conveyor.testing import eventually
from conveyor.web import create_web_app
from tests.apps.probe import PROBE_QUEUE, probe_app
from tests.conftest import ROOT, SpawnWorker, free_port

Q = PROBE_QUEUE


class ApiServer:
    """An ASGI app served by uvicorn on 127.0.0.1:<free port> in a daemon thread."""

    def __init__(self, asgi: Any) -> None:
        self.asgi = asgi
        self.port = free_port()
        config = uvicorn.Config(
            asgi, host="127.0.0.1", port=self.port, log_level="warning", lifespan="on"
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def start(self) -> ApiServer:
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            assert self.thread.is_alive(), "uvicorn exited during start-up"
            assert time.monotonic() < deadline, "uvicorn did not start within 10s"
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(15)


StartApi = Callable[..., ApiServer]


@pytest.fixture
def api_server() -> Iterator[StartApi]:
    """Start an API for an engine URL: `api_server(url, tokens=..., app=...)`."""
    servers: list[ApiServer] = []

    def start(url: str, *, tokens: Tokens | None = None, app: Conveyor | None = None) -> ApiServer:
        # The API with the dashboard (the dashboard tests share this fixture).
        api = create_web_app(
            app or probe_app(url),
            tokens=tokens or Tokens(),
            metrics_prefix="conveyor_",
            owns_app=True,
        )
        server = ApiServer(api).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def worker_process(spawn_worker: SpawnWorker) -> Callable[[str], subprocess.Popen[bytes]]:
    """Start `conveyor worker tests.apps.probe:app` on the probe queue as a separate process."""
    return lambda url: spawn_worker(url, queues=Q)


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=10) as c:
        yield c


async def enqueue(
    client: httpx.AsyncClient, server: ApiServer, expect: int = 201, **body: Any
) -> dict[str, Any]:
    body.setdefault("task", "probe")
    headers = body.pop("headers", None)
    r = await client.post(f"{server.url}/jobs", json=body, headers=headers)
    assert r.status_code == expect, r.text
    result: dict[str, Any] = r.json()
    return result


Frame = dict[str, Any]


async def frames(
    ws: Any, until: Callable[[Frame], bool], timeout: float = 20
) -> list[tuple[float, Frame]]:
    """Read frames (with their arrival time) until `until(frame)` holds."""
    out: list[tuple[float, dict[str, Any]]] = []
    async with asyncio.timeout(timeout):
        while True:
            frame = orjson.loads(await ws.recv())
            out.append((time.time(), frame))
            if until(frame):
                return out


async def subscribed(ws: Any) -> dict[str, Any]:
    frame: dict[str, Any] = orjson.loads(await asyncio.wait_for(ws.recv(), 10))
    assert frame["type"] == "subscribed", frame
    return frame


# --- live updates ----------------------------------------------------------------------------
async def test_websocket_streams_a_job_run_by_a_worker_process_live(
    durable_url: str, api_server: StartApi, worker_process: Callable[..., Any], client: Any
) -> None:
    server = api_server(durable_url)
    job = await enqueue(client, server, payload={"action": "progress"})
    async with websockets.connect(f"{server.ws_url}/ws/jobs?job={job['id']}") as ws:
        await subscribed(ws)
        worker_process(durable_url)
        got = await frames(ws, lambda f: f.get("kind") in ("completed", "failed"))

    events = [f for _, f in got]
    assert [e["kind"] for e in events] == [
        "started",
        "progress",
        "progress",
        "progress",
        "completed",
    ], events
    assert [e["data"]["progress"] for e in events if e["kind"] == "progress"] == [25, 50, 100]
    assert all(e["job_id"] == job["id"] and e["queue"] == Q and e["id"] for e in events)
    for arrived, event in got:  # pushed as it happened, not polled later
        assert arrived - event["at"] < 1.0, (event, arrived)

    # A client that saw `started` and reconnects with since= gets the rest, once each.
    since = f"{Q}:{events[0]['id']}"
    async with websockets.connect(f"{server.ws_url}/ws/jobs?job={job['id']}&since={since}") as ws:
        await subscribed(ws)
        replayed = [f for _, f in await frames(ws, lambda f: f["type"] == "replayed")]
    assert [f.get("kind") for f in replayed] == [e["kind"] for e in events[1:]] + [None]
    assert replayed[-1]["count"] == 4

    final = (await client.get(f"{server.url}/jobs/{job['id']}")).json()
    assert final["state"] == "completed" and final["progress"] == 100


async def test_one_engine_reader_serves_every_subscriber_of_a_queue(
    sqlite_url: str, api_server: StartApi, client: httpx.AsyncClient
) -> None:
    server = api_server(sqlite_url)
    hub = server.asgi.state.conveyor.hub
    url = f"{server.ws_url}/ws/jobs?queue={Q}"
    async with websockets.connect(url) as a, websockets.connect(url) as b:
        await subscribed(a)
        await subscribed(b)
        assert hub.feeds == 1
        job = await enqueue(client, server)
        for ws in (a, b):
            (_, frame), *_ = await frames(ws, lambda f: f["type"] == "event")
            assert (frame["kind"], frame["job_id"]) == ("enqueued", job["id"])

    async def reader_stopped() -> bool:  # the reader stops with its last subscriber
        return bool(hub.feeds == 0)

    await eventually(reader_stopped, timeout=5, message="the hub's reader stopped")


async def test_websocket_rejects_bad_parameters_with_close_codes(
    sqlite_url: str, api_server: StartApi
) -> None:
    server = api_server(sqlite_url)
    for query, code in [
        ("", 4422),  # neither queue nor job
        ("queue=bad%20name", 4422),
        (f"queue={Q}&since=not-an-id", 4422),
        (f"job={Q}:0123", 4404),
    ]:
        async with websockets.connect(f"{server.ws_url}/ws/jobs?{query}") as ws:
            with pytest.raises(websockets.ConnectionClosed) as info:
                await asyncio.wait_for(ws.recv(), 10)
        assert info.value.rcvd is not None and info.value.rcvd.code == code, query


# --- enqueue ---------------------------------------------------------------------------------
async def test_idempotency_key_returns_the_same_job_while_it_is_active(
    durable_url: str, api_server: StartApi, client: httpx.AsyncClient
) -> None:
    server = api_server(durable_url)
    headers = {"Idempotency-Key": "order-42"}
    first = await enqueue(client, server, payload={"n": 1}, headers=headers)
    r = await client.post(
        f"{server.url}/jobs", json={"task": "probe", "payload": {"n": 1}}, headers=headers
    )
    assert r.status_code == 200 and r.json()["id"] == first["id"]
    assert r.headers["Idempotent-Replayed"] == "true"

    # Same key, different request: refused rather than silently answered with the old job.
    r = await client.post(
        f"{server.url}/jobs", json={"task": "probe", "payload": {"n": 2}}, headers=headers
    )
    assert r.status_code == 422
    assert r.json()["errors"][0] == {
        "field": "Idempotency-Key",
        "location": "header",
        "reason": r.json()["errors"][0]["reason"],
        "position": None,
    }
    # The window is the job's active life: once it finished, the key enqueues anew.
    assert (await client.post(f"{server.url}/jobs/{first['id']}/cancel")).status_code == 200
    again = await enqueue(client, server, payload={"n": 1}, headers=headers)
    assert again["id"] != first["id"]
    # Header and dedupe_key together are ambiguous.
    await enqueue(client, server, 422, dedupe_key="x", headers={"Idempotency-Key": "k"})


async def test_dedupe_key_answers_200_with_the_active_job(
    sqlite_url: str, api_server: StartApi, client: httpx.AsyncClient
) -> None:
    server = api_server(sqlite_url)
    first = await enqueue(client, server, dedupe_key="report:7")
    second = await enqueue(client, server, 200, dedupe_key="report:7")
    assert second["id"] == first["id"] and second["dedupe_key"] == "report:7"


async def test_job_detail_shows_the_policy_a_worker_applies(
    sqlite_url: str, api_server: StartApi, client: httpx.AsyncClient
) -> None:
    server = api_server(sqlite_url)  # the probe app: max_attempts=3, backoff=0, no timeout

    async def in_effect(**body: Any) -> dict[str, Any]:
        job = await enqueue(client, server, **body)
        detail: dict[str, Any] = (await client.get(f"{server.url}/jobs/{job['id']}")).json()
        return detail["in_effect"]

    assert await in_effect() == {
        "timeout_seconds": None,
        "timeout_from": "task",
        "backoff": {"kind": "fixed", "delay": 0},
        "backoff_text": "fixed 0s",
        "backoff_from": "task",
        "max_attempts": 3,
    }
    own = await in_effect(timeout=5, max_attempts=7)
    assert (own["timeout_seconds"], own["timeout_from"], own["backoff_from"]) == (5, "job", "task")
    assert own["max_attempts"] == 7
    # Another service's task: this API cannot know its defaults, and says so.
    other = await in_effect(task="billing.charge", queue="billing")
    assert (other["timeout_from"], other["backoff_from"]) == ("unknown", "unknown")


async def test_enqueue_validation_errors_name_the_field(
    sqlite_url: str, api_server: StartApi, client: httpx.AsyncClient
) -> None:
    server = api_server(sqlite_url, app=probe_app(sqlite_url, max_payload_bytes=2048))

    async def error(expect: int, **body: Any) -> dict[str, Any]:
        r = await client.post(f"{server.url}/jobs", json=body)
        assert r.status_code == expect, r.text
        doc: dict[str, Any] = r.json()
        assert set(doc) == {"error", "message", "errors"}
        return doc

    doc = await error(422, task="probe", priorty=5)
    assert doc["errors"] == [
        {
            "field": "priorty",
            "location": "body",
            "reason": "Extra inputs are not permitted",
            "position": None,
        }
    ]
    assert (await error(422, task="probe", priority=101))["errors"][0]["field"] == "priority"
    assert (await error(422, task="probe", priority=True))["errors"][0]["field"] == "priority"
    assert (await error(422, task="probe", payload=[1]))["errors"][0]["field"] == "payload"
    assert (await error(422, task="probe", delay=-1))["errors"][0]["field"] == "delay"
    assert (await error(422, task="probe", queue="no spaces"))["errors"][0]["field"] == "queue"
    assert (await error(422, payload={}))["errors"][0]["field"] == "task"
    naive = await error(422, task="probe", run_at="2030-01-01T00:00:00")
    assert naive["errors"][0]["field"] == "run_at"
    both = await error(422, task="probe", delay=1, run_at="2030-01-01T00:00:00Z")
    assert both["error"] == "InvalidJob" and "not both" in both["message"]

    unknown = await error(422, task="billing.charge")
    assert unknown["error"] == "UnknownTask"
    assert unknown["errors"][0]["field"] == "queue" and '"queue"' in unknown["errors"][0]["reason"]
    job = await enqueue(client, server, task="billing.charge", queue="billing")
    assert (job["queue"], job["task"], job["state"]) == ("billing", "billing.charge", "pending")

    big = await error(413, task="probe", payload={"blob": "x" * 4096})
    assert big["error"] == "PayloadTooLarge" and big["errors"][0]["field"] == "payload"

    r = await client.post(
        f"{server.url}/jobs", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert r.status_code == 422 and r.json()["error"] == "ValidationError"
    # Where the JSON broke, as a position in the body, never as a "field" named "1".
    (problem,) = r.json()["errors"]
    assert (problem["field"], problem["location"], problem["position"]) == (None, "body", 1)
    assert "not valid JSON" in problem["reason"] and "at character 1" in r.json()["message"]

    delayed = await enqueue(client, server, delay=60, priority=5, max_attempts=2, tenant="t1")
    assert delayed["state"] == "scheduled" and delayed["scheduled_at"] > time.time() + 50
    assert (delayed["priority"], delayed["max_attempts"], delayed["tenant"]) == (5, 2, "t1")


# --- single-job operations -------------------------------------------------------------------
async def test_job_operations_answer_404_and_409_from_the_error_tree(
    durable_url: str, api_server: StartApi, client: httpx.AsyncClient
) -> None:
    server = api_server(durable_url)
    base = server.url
    r = await client.get(f"{base}/jobs/{Q}:0123456789abcdef")
    assert r.status_code == 404 and r.json()["error"] == "JobNotFound"
    for op in ("retry", "cancel", "promote"):
        assert (await client.post(f"{base}/jobs/{Q}:nope/{op}")).status_code == 404

    job = await enqueue(client, server)
    for op in ("retry", "promote"):  # a pending job can be neither
        r = await client.post(f"{base}/jobs/{job['id']}/{op}")
        assert r.status_code == 409 and r.json()["error"] == "InvalidState", op
    assert (await client.post(f"{base}/jobs/{job['id']}/cancel")).json()["state"] == "cancelled"
    assert (await client.post(f"{base}/jobs/{job['id']}/cancel")).status_code == 409
    assert (await client.post(f"{base}/jobs/{job['id']}/retry")).json()["state"] == "pending"

    later = await enqueue(client, server, delay=3600)
    promoted = (await client.post(f"{base}/jobs/{later['id']}/promote")).json()
    assert promoted["state"] == "pending"
    got = (await client.get(f"{base}/jobs/{later['id']}")).json()
    assert got["id"] == later["id"] and got["state"] == "pending"


async def test_listing_pages_with_a_cursor(
    durable_url: str, api_server: StartApi, client: httpx.AsyncClient
) -> None:
    server = api_server(durable_url)
    ids = {(await enqueue(client, server, payload={"i": i}))["id"] for i in range(7)}
    seen: list[str] = []
    cursor: str | None = None
    for _ in range(10):
        params: dict[str, Any] = {"queue": Q, "state": "pending", "limit": 3}
        if cursor:
            params["cursor"] = cursor
        page = (await client.get(f"{server.url}/jobs", params=params)).json()
        assert set(page) == {"jobs", "next_cursor"} and len(page["jobs"]) <= 3
        seen += [j["id"] for j in page["jobs"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert sorted(seen) == sorted(ids) and len(seen) == 7
    empty = (await client.get(f"{server.url}/jobs", params={"queue": Q, "state": "failed"})).json()
    assert empty == {"jobs": [], "next_cursor": None}
    r = await client.get(f"{server.url}/jobs", params={"queue": Q, "cursor": "garbage:x:y"})
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "cursor"
    r = await client.get(f"{server.url}/jobs", params={"queue": Q, "limit": 0})
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "limit"


# --- queues ----------------------------------------------------------------------------------
async def test_queue_operations(
    durable_url: str, api_server: StartApi, client: httpx.AsyncClient
) -> None:
    server = api_server(durable_url)
    base = server.url
    for _ in range(2):
        await enqueue(client, server, payload={"action": "fail"}, max_attempts=1)
    await enqueue(client, server, payload={"action": "ok"})
    runner = probe_app(durable_url)  # another app instance: the API only sees the engine
    try:
        await asyncio.wait_for(Worker(runner, queues=[Q], burst=True).run(), 60)
    finally:
        await runner.close()

    stats = (await client.get(f"{base}/queues/{Q}/stats")).json()
    assert (stats["failed"], stats["completed"], stats["pending"]) == (2, 1, 0)
    assert stats["throughput_per_min"] == 3
    assert (await client.get(f"{base}/queues")).json()["queues"] == [
        {**stats, "oldest_pending_age_seconds": None}
    ]

    assert (await client.post(f"{base}/queues/{Q}/pause")).json() == {"queue": Q, "paused": True}
    assert (await client.get(f"{base}/queues/{Q}/stats")).json()["paused"] is True
    assert (await client.post(f"{base}/queues/{Q}/resume")).json()["paused"] is False

    retried = (await client.post(f"{base}/queues/{Q}/retry-all")).json()
    assert retried == {"queue": Q, "state": "failed", "count": 2}
    # Lifecycle's rules, applied once by the facade: 409 with its message.
    r = await client.post(f"{base}/queues/{Q}/retry-all", json={"state": "completed"})
    assert r.status_code == 409 and "failed or cancelled" in r.json()["message"]
    r = await client.post(f"{base}/queues/{Q}/retry-all", json={"state": "finished"})
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "state"

    cleaned = await client.post(f"{base}/queues/{Q}/clean", json={"state": "completed"})
    assert cleaned.json() == {"queue": Q, "state": "completed", "count": 1}
    r = await client.post(f"{base}/queues/{Q}/clean", json={"state": "pending"})
    assert r.status_code == 409 and "cancel live jobs first" in r.json()["message"]
    assert (await client.post(f"{base}/queues/bad%20q/pause")).status_code == 422


# --- health, metrics, status -----------------------------------------------------------------
async def test_readiness_is_503_on_the_memory_engine_and_while_shutting_down(
    sqlite_url: str, api_server: StartApi, client: httpx.AsyncClient
) -> None:
    memory = api_server("memory://")
    for path in ("/health/ready", "/api/health/ready"):
        r = await client.get(memory.url + path)
        assert r.status_code == 503 and "not durable" in r.json()["reason"], path
    assert (await client.get(f"{memory.url}/health")).status_code == 200  # alive all the same

    durable = api_server(sqlite_url)
    assert (await client.get(f"{durable.url}/health/ready")).json() == {
        "status": "ready",
        "reason": "ok",
    }
    durable.asgi.state.conveyor.stopping = True  # what SIGTERM sets first
    r = await client.get(f"{durable.url}/health/ready")
    assert r.status_code == 503 and r.json()["reason"] == "shutting down"


async def test_unreachable_engine_is_503_with_retry_after(
    api_server: StartApi, client: httpx.AsyncClient
) -> None:
    server = api_server(f"redis://127.0.0.1:{free_port()}/0")
    r = await client.get(f"{server.url}/jobs/{Q}:x")
    assert r.status_code == 503 and r.headers["Retry-After"] == "2"
    assert r.json()["error"] == "EngineUnavailable"
    r = await client.get(f"{server.url}/health/ready")
    assert r.status_code == 503 and r.json()["reason"].startswith("engine unavailable")
    status = (await client.get(f"{server.url}/admin/workers/status")).json()
    assert status["engine"]["status"] == "unavailable"  # the poller still gets a document


async def test_runbook_paths_under_api_prefix(
    durable_url: str, api_server: StartApi, client: httpx.AsyncClient
) -> None:
    server = api_server(durable_url)
    job = await enqueue(client, server)
    health = (await client.get(f"{server.url}/api/health")).json()
    assert health["status"] == "alive"
    # The shared test redis-server runs with AOF off: durable only with AOF on (issue 14.9).
    durable = not durable_url.startswith("redis")
    assert health["engine"]["durable"] is durable and health["engine"]["latency_ms"] is not None
    assert (await client.get(f"{server.url}/api/health/ready")).status_code == 200
    status = (await client.get(f"{server.url}/api/admin/workers/status")).json()
    assert status["engine"]["status"] == "ok"
    assert [q["queue"] for q in status["queues"]] == [Q]
    assert status["totals"]["pending"] == 1
    assert (await client.get(f"{server.url}/api/jobs/{job['id']}")).json()["id"] == job["id"]
    served = (await client.get(f"{server.url}/openapi.json")).json()
    assert not [p for p in served["paths"] if p.startswith("/api/")]  # aliases stay out


async def test_metrics_count_requests_by_route_and_sample_depths(
    sqlite_url: str, api_server: StartApi, client: httpx.AsyncClient
) -> None:
    server = api_server(sqlite_url)
    job = await enqueue(client, server)
    await client.get(f"{server.url}/jobs/{job['id']}")
    await client.get(f"{server.url}/jobs/{Q}:missing")
    text = (await client.get(f"{server.url}/metrics")).text
    assert 'conveyor_http_requests_total{method="POST",route="/jobs",status="201"} 1.0' in text
    assert (
        'conveyor_http_requests_total{method="GET",route="/jobs/{job_id}",status="404"} 1.0' in text
    )
    assert 'conveyor_http_request_duration_seconds_count{method="GET",route="/jobs/{job_id}"}' in (
        text
    )
    assert f'conveyor_queue_depth{{queue="{Q}",state="pending"}} 1.0' in text
    assert "conveyor_engine_up 1.0" in text


# --- schema and embedding --------------------------------------------------------------------
async def test_checked_in_openapi_matches_the_served_schema(
    sqlite_url: str, api_server: StartApi, client: httpx.AsyncClient
) -> None:
    server = api_server(sqlite_url)
    served = (await client.get(f"{server.url}/openapi.json")).json()
    checked_in = json.loads((ROOT / "docs" / "openapi.json").read_text("utf-8"))
    assert served == checked_in, "regenerate: conveyor api --write-openapi docs/openapi.json"
    assert openapi_json(server.asgi) == (ROOT / "docs" / "openapi.json").read_text("utf-8")


def test_response_models_document_what_the_read_model_returns() -> None:
    job = Job(id="q:1", queue="q", task="t", payload={}, state=JobState.PENDING)
    assert set(JobOut.model_fields) == set(job.to_dict())
    # A field named for a state with a dash (waiting-children) carries it as its alias.
    fields = {f.alias or name for name, f in QueueOverviewOut.model_fields.items()}
    assert fields == set(overview_row(QueueCounts(queue="q"), 0))


async def test_mounted_into_a_users_asgi_app(sqlite_url: str, client: httpx.AsyncClient) -> None:
    app = probe_app(sqlite_url)
    outer = Starlette(routes=[Mount("/queue", app=app.asgi(tokens=Tokens()))])
    server = ApiServer(outer).start()
    try:
        job = (await client.post(f"{server.url}/queue/jobs", json={"task": "probe"})).json()
        got = await client.get(f"{server.url}/queue/api/jobs/{job['id']}")
        assert got.json()["state"] == "pending"
        async with websockets.connect(f"{server.ws_url}/queue/ws/jobs?queue={Q}") as ws:
            await subscribed(ws)
    finally:
        server.stop()
        await app.close()


async def test_websocket_names_the_watched_queues_that_are_not_streamed(
    sqlite_url: str,
) -> None:
    """A queue declared with events=False has no event log (lifecycle rule 7): the
    subscribed frame says so, for the dashboard's badge and for any client."""
    app = probe_app(sqlite_url)
    app.limits("quiet", events=False)
    server = ApiServer(app.asgi(tokens=Tokens())).start()
    try:
        async with websockets.connect(f"{server.ws_url}/ws/jobs?queue={Q},quiet") as ws:
            frame = await subscribed(ws)
        assert frame["not_streamed"] == ["quiet"]
        async with websockets.connect(f"{server.ws_url}/ws/jobs?queue={Q}") as ws:
            assert (await subscribed(ws))["not_streamed"] == []
    finally:
        server.stop()
        await app.close()


def test_conveyor_api_command_serves_the_users_app(sqlite_url: str, tmp_path: Path) -> None:
    port = free_port()
    proc = subprocess.Popen(
        [
            *(sys.executable, "-m", "conveyor", "api", "tests.apps.probe:app"),
            *("--url", sqlite_url, "--port", str(port)),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={k: v for k, v in os.environ.items() if not k.startswith("CONVEYOR_")},
        cwd=ROOT,  # so `tests.apps.probe:app` imports
    )
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                r = httpx.post(f"http://127.0.0.1:{port}/jobs", json={"task": "probe"})
                break
            except httpx.TransportError:
                assert proc.poll() is None, proc.communicate()
                assert time.monotonic() < deadline
                time.sleep(0.1)
        # The user's app says where `probe` goes: no `queue` needed.
        assert r.status_code == 201 and r.json()["queue"] == Q
    finally:
        proc.terminate()
        assert proc.wait(15) == 0

    out = subprocess.run(
        [sys.executable, "-m", "conveyor", "api", "--print-openapi"],
        capture_output=True,
        check=True,
    )
    assert out.stdout.decode() == (ROOT / "docs" / "openapi.json").read_text("utf-8")


async def test_a_subscriber_that_falls_behind_is_closed_not_silently_skipped() -> None:
    def event(i: int) -> Event:
        return Event(id=str(i), kind="progress", job_id=f"{Q}:1", queue=Q, at=0.0)

    slow = Subscriber([Q], tenant=None, job=None, buffer=2)
    assert slow.offer(event(1), "one") and slow.offer(event(2), "two")
    assert not slow.offer(event(3), "three")  # a gap would be invisible: close instead
    assert slow.close_code == 1013 and "since=" in slow.close_reason
    assert await slow.next() is None

    # After a replay up to id 2, live copies of 1..2 are skipped, 3 is sent.
    caught_up = Subscriber([Q], tenant=None, job=None, buffer=10)
    caught_up.last_sent[Q] = "2"
    for i in (1, 2, 3):
        caught_up.offer(event(i), f"frame-{i}")
    assert await caught_up.next() == "frame-3"
