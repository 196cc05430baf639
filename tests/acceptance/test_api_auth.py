"""API auth over real HTTP: 401 without a valid token, admin-only operations, and tenant
isolation on every endpoint that takes or returns a job (another tenant's job is 404,
exactly like a missing one)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import websockets

from conveyor.api import Tokens, check_exposure
from conveyor.errors import ConfigError
from conveyor.settings import Settings
from tests.acceptance.test_api import ApiServer, StartApi, api_server, frames, subscribed
from tests.apps.probe import PROBE_QUEUE
from tests.conftest import free_port

__all__ = ["api_server"]  # the fixture, re-exported for pytest

Q = PROBE_QUEUE
ADMIN = "admin-token-0123456789abcdef"
ACME = "acme-token-0123456789abcdef"
GLOBEX = "globex-token-0123456789abcdef"
TOKENS = Tokens(admin=ADMIN, tenants={ACME: "acme", GLOBEX: "globex"})


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def server(sqlite_url: str, api_server: StartApi) -> ApiServer:
    return api_server(sqlite_url, tokens=TOKENS)


@pytest.fixture
async def http(server: ApiServer) -> Any:
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as c:
        yield c


async def post_job(http: httpx.AsyncClient, token: str, **body: Any) -> dict[str, Any]:
    r = await http.post("/jobs", json={"task": "probe", **body}, headers=auth(token))
    assert r.status_code in (200, 201), r.text
    doc: dict[str, Any] = r.json()
    return doc


async def test_missing_or_invalid_token_is_401_with_www_authenticate(
    http: httpx.AsyncClient,
) -> None:
    for path in ("/jobs?queue=probe", "/jobs/probe:x", "/queues", "/admin/workers/status"):
        r = await http.get(path)
        assert r.status_code == 401, path
        assert r.headers["WWW-Authenticate"] == 'Bearer realm="conveyor"'
        assert r.json()["error"] == "Unauthorized"
        r = await http.get(path, headers=auth("wrong-token-0123456789abcdef"))
        assert r.status_code == 401
        assert 'error="invalid_token"' in r.headers["WWW-Authenticate"]
        r = await http.get(path, headers={"Authorization": f"Basic {ADMIN}"})
        assert r.status_code == 401
    assert (await http.post("/jobs", json={"task": "probe"})).status_code == 401


async def test_probes_need_no_token(http: httpx.AsyncClient) -> None:
    # /metrics does: test_api_security.test_metrics_need_the_admin_token_unless_public
    for path in ("/health", "/health/ready", "/api/health/ready", "/openapi.json"):
        assert (await http.get(path)).status_code == 200, path


async def test_queue_and_admin_endpoints_are_admin_only(http: httpx.AsyncClient) -> None:
    calls = [
        ("GET", "/queues", None),
        ("GET", f"/queues/{Q}/stats", None),
        ("POST", f"/queues/{Q}/pause", None),
        ("POST", f"/queues/{Q}/resume", None),
        ("POST", f"/queues/{Q}/retry-all", None),
        ("POST", f"/queues/{Q}/clean", {"state": "completed"}),
        ("GET", "/admin/workers/status", None),
        ("GET", "/api/admin/workers/status", None),
    ]
    for method, path, body in calls:
        r = await http.request(method, path, json=body, headers=auth(ACME))
        assert r.status_code == 403 and r.json()["error"] == "Forbidden", path
        assert (await http.request(method, path, json=body)).status_code == 401, path
        r = await http.request(method, path, json=body, headers=auth(ADMIN))
        assert r.status_code == 200, (path, r.text)


async def test_tenant_tokens_only_see_their_own_jobs(http: httpx.AsyncClient) -> None:
    mine = await post_job(http, ACME)
    assert mine["tenant"] == "acme"  # forced from the token
    theirs = await post_job(http, GLOBEX, delay=3600)
    assert theirs["tenant"] == "globex"
    r = await http.post("/jobs", json={"task": "probe", "tenant": "globex"}, headers=auth(ACME))
    assert r.status_code == 403  # cannot enqueue for another tenant
    assert (await post_job(http, ACME, tenant="acme"))["tenant"] == "acme"

    # Another tenant's job is indistinguishable from a missing one, for every job route.
    missing = (await http.get(f"/jobs/{Q}:0000", headers=auth(ACME))).json()
    for method, path in [
        ("GET", f"/jobs/{theirs['id']}"),
        # The long poll checks visibility first: 404 at once, no wait, no probing.
        ("GET", f"/jobs/{theirs['id']}?wait=30"),
        ("GET", f"/api/jobs/{theirs['id']}"),
        ("POST", f"/jobs/{theirs['id']}/cancel"),
        ("POST", f"/jobs/{theirs['id']}/promote"),
        ("POST", f"/jobs/{theirs['id']}/retry"),
    ]:
        r = await http.request(method, path, headers=auth(ACME))
        assert r.status_code == 404, path
        assert r.json()["error"] == missing["error"] == "JobNotFound"
    # ...and nothing happened to it.
    untouched = (await http.get(f"/jobs/{theirs['id']}", headers=auth(ADMIN))).json()
    assert untouched["state"] == "scheduled"

    assert (await http.get(f"/jobs/{mine['id']}", headers=auth(ACME))).status_code == 200
    assert (await http.post(f"/jobs/{mine['id']}/cancel", headers=auth(ACME))).status_code == 200
    assert (await http.post(f"/jobs/{mine['id']}/retry", headers=auth(ACME))).status_code == 200

    async def listed(token: str, **params: Any) -> set[str]:
        r = await http.get("/jobs", params={"queue": Q, **params}, headers=auth(token))
        assert r.status_code == 200, r.text
        return {j["tenant"] for j in r.json()["jobs"]}

    assert await listed(ACME) == {"acme"}
    assert await listed(GLOBEX, state="scheduled") == {"globex"}
    assert await listed(GLOBEX) == set()  # its only job is scheduled, not pending
    assert await listed(ADMIN) == {"acme"} and await listed(ADMIN, state="scheduled") == {"globex"}
    r = await http.get("/jobs", params={"queue": Q, "tenant": "globex"}, headers=auth(ACME))
    assert r.status_code == 403


async def test_keys_of_two_tenants_never_collide(http: httpx.AsyncClient) -> None:
    key = {"Idempotency-Key": "same-key"}
    a = await http.post("/jobs", json={"task": "probe"}, headers=auth(ACME) | key)
    b = await http.post("/jobs", json={"task": "probe"}, headers=auth(GLOBEX) | key)
    assert a.status_code == b.status_code == 201
    assert a.json()["id"] != b.json()["id"] and b.json()["tenant"] == "globex"
    first = await post_job(http, ACME, dedupe_key="nightly")
    second = await post_job(http, GLOBEX, dedupe_key="nightly")
    assert first["id"] != second["id"]  # globex must not get (and so see) acme's job


async def test_tenant_names_with_separators_cannot_reach_each_others_keys(
    sqlite_url: str, api_server: StartApi
) -> None:
    """Tenant `acme` with key `eu:x` must not hit tenant `acme:eu`'s job with key `x`
    (the composed keys were `tenant:acme:eu:x` for both), nor through Idempotency-Key."""
    short, long_ = "acme-short-token-0123456789", "acme-eu-token-0123456789ab"
    tokens = Tokens(admin=ADMIN, tenants={short: "acme", long_: "acme:eu"})
    server = api_server(sqlite_url, tokens=tokens)
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as http:
        theirs = await post_job(http, long_, dedupe_key="x", payload={"secret": "eu"})
        r = await http.post(
            "/jobs", json={"task": "probe", "dedupe_key": "eu:x"}, headers=auth(short)
        )
        assert r.status_code == 201, r.text  # a new job, not acme:eu's
        assert r.json()["id"] != theirs["id"] and "secret" not in r.json()["payload"]
        idem = await http.post(
            "/jobs", json={"task": "probe"}, headers=auth(long_) | {"Idempotency-Key": "k"}
        )
        r = await http.post(
            "/jobs", json={"task": "probe"}, headers=auth(short) | {"Idempotency-Key": "eu:k"}
        )
        assert r.status_code == 201 and r.json()["id"] != idem.json()["id"]
        # An admin may store any raw key; a dedupe hit on it still never hands a tenant
        # the admin's job.
        admin_job = await post_job(http, ADMIN, dedupe_key="tenant:4:acme:y")
        r = await http.post("/jobs", json={"task": "probe", "dedupe_key": "y"}, headers=auth(short))
        assert r.status_code == 409 and admin_job["id"] not in r.text


async def test_websocket_streams_only_the_tenants_own_events(
    server: ApiServer, http: httpx.AsyncClient
) -> None:
    url = f"{server.ws_url}/ws/jobs?queue={Q}"
    async with (
        websockets.connect(url, additional_headers=auth(ACME)) as acme,
        websockets.connect(f"{url}&token={ADMIN}") as admin,  # browsers: query token
    ):
        await subscribed(acme)
        await subscribed(admin)
        theirs = await post_job(http, GLOBEX)
        mine = await post_job(http, ACME)
        seen = await frames(acme, lambda f: f.get("job_id") == mine["id"])
        assert {f["job_id"] for _, f in seen} == {mine["id"]}
        assert {f["tenant"] for _, f in seen} == {"acme"}
        every = await frames(admin, lambda f: f.get("job_id") == mine["id"])
        assert theirs["id"] in {f["job_id"] for _, f in every}

    async def refused(query: str, headers: dict[str, str] | None = None) -> int:
        async with websockets.connect(
            f"{server.ws_url}/ws/jobs?{query}", additional_headers=headers
        ) as ws:
            with pytest.raises(websockets.ConnectionClosed) as info:
                await asyncio.wait_for(ws.recv(), 10)
        assert info.value.rcvd is not None
        return info.value.rcvd.code

    assert await refused(f"queue={Q}") == 4401
    assert await refused(f"queue={Q}&token=nope-0123456789abcdef") == 4401
    assert await refused(f"queue={Q}&tenant=acme", auth(GLOBEX)) == 4403
    assert await refused(f"job={mine['id']}", auth(GLOBEX)) == 4404  # not 403: no probing
    async with websockets.connect(
        f"{server.ws_url}/ws/jobs?job={mine['id']}", additional_headers=auth(ACME)
    ) as ws:
        assert (await subscribed(ws))["tenant"] == "acme"


def test_tokens_from_settings_and_file(tmp_path: Path) -> None:
    env = {
        "CONVEYOR_API_ADMIN_TOKEN": ADMIN,
        "CONVEYOR_API_TENANT_TOKENS": f"{ACME}:acme, {GLOBEX}:globex",
    }
    tokens = Tokens.load(Settings.load(env))  # the settings accept the CONVEYOR_API_* names
    assert tokens.identify(ADMIN) is not None and tokens.identify(ADMIN).admin  # type: ignore[union-attr]
    assert tokens.identify(GLOBEX).tenant == "globex"  # type: ignore[union-attr]
    assert tokens.identify("nope") is None

    path = tmp_path / "tokens.json"
    path.write_bytes(orjson.dumps({"tenants": {"file-token-0123456789abcdef": "initech"}}))
    from_file = Tokens.load(Settings.load({"CONVEYOR_API_TOKENS_FILE": str(path)}))
    assert from_file.identify("file-token-0123456789abcdef").tenant == "initech"  # type: ignore[union-attr]
    assert from_file.admin is None

    for bad in ({"CONVEYOR_API_ADMIN_TOKEN": "short"}, {"CONVEYOR_API_TENANT_TOKENS": "novalue"}):
        with pytest.raises(ConfigError):
            Tokens.load(Settings.load(bad))
    path.write_text("[1, 2]")
    with pytest.raises(ConfigError, match="must be"):
        Tokens.load(Settings.load(), str(path))


def test_an_open_api_is_refused_beyond_loopback() -> None:
    check_exposure("127.0.0.1", Tokens(), insecure=False)
    check_exposure("::1", Tokens(), insecure=False)
    check_exposure("0.0.0.0", TOKENS, insecure=False)
    check_exposure("0.0.0.0", Tokens(), insecure=True)
    for host in ("0.0.0.0", "10.1.2.3", "api.internal"):
        with pytest.raises(ConfigError, match="refusing"):
            check_exposure(host, Tokens(), insecure=False)


def test_conveyor_api_refuses_to_start_on_all_interfaces_without_tokens(sqlite_url: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONVEYOR_")}
    base = [sys.executable, "-m", "conveyor", "api", "--url", sqlite_url, "--host", "0.0.0.0"]
    out = subprocess.run([*base, "--port", str(free_port())], capture_output=True, env=env)
    assert out.returncode == 2
    assert out.stderr.decode().startswith("error: ConfigError: refusing to serve the API")
    assert b"Traceback" not in out.stderr

    # With an admin token it starts, and enforces it.
    port = free_port()
    proc = subprocess.Popen(
        [*base, "--port", str(port)],
        env={**env, "CONVEYOR_API_ADMIN_TOKEN": ADMIN},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                r = httpx.get(f"http://127.0.0.1:{port}/queues")
                break
            except httpx.TransportError:
                assert proc.poll() is None, proc.communicate()
                assert time.monotonic() < deadline
                time.sleep(0.1)
        assert r.status_code == 401
        r = httpx.get(f"http://127.0.0.1:{port}/queues", headers=auth(ADMIN))
        assert r.status_code == 200
    finally:
        proc.terminate()
        assert proc.wait(15) == 0


async def test_tenant_tokens_limited_to_queues_and_tasks(
    sqlite_url: str, api_server: StartApi, tmp_path: Path
) -> None:
    limited = "acme-limited-token-0123456789"
    path = tmp_path / "tokens.json"
    path.write_bytes(
        orjson.dumps(
            {
                "admin": ADMIN,
                "tenants": {
                    ACME: "acme",
                    limited: {"tenant": "acme", "queues": [Q], "tasks": ["probe"]},
                },
            }
        )
    )
    tokens = Tokens.load(Settings.load({"CONVEYOR_API_TOKENS_FILE": str(path)}))
    server = api_server(sqlite_url, tokens=tokens)
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as http:
        mine = await post_job(http, limited)
        assert mine["tenant"] == "acme"
        for body in ({"task": "report", "queue": Q}, {"task": "probe", "queue": "other"}):
            r = await http.post("/jobs", json=body, headers=auth(limited))
            assert r.status_code == 403, (body, r.text)
        # The same tenant's jobs outside the scope are invisible, like another tenant's.
        report = await post_job(http, ACME, task="report", queue=Q)
        elsewhere = await post_job(http, ACME, queue="other")
        for job in (report, elsewhere):
            assert (await http.get(f"/jobs/{job['id']}", headers=auth(limited))).status_code == 404
            r = await http.post(f"/jobs/{job['id']}/cancel", headers=auth(limited))
            assert r.status_code == 404
        listed = (await http.get(f"/jobs?queue={Q}", headers=auth(limited))).json()["jobs"]
        assert [j["id"] for j in listed] == [mine["id"]]
        assert (await http.get("/jobs?queue=other", headers=auth(limited))).status_code == 403
        # ACME's unlimited token still sees everything of its tenant.
        listed = (await http.get(f"/jobs?queue={Q}", headers=auth(ACME))).json()["jobs"]
        assert {j["id"] for j in listed} == {mine["id"], report["id"]}

    async def close_code(query: str) -> int:
        async with websockets.connect(
            f"{server.ws_url}/ws/jobs?{query}", additional_headers=auth(limited)
        ) as ws:
            with pytest.raises(websockets.ConnectionClosed) as info:
                await asyncio.wait_for(ws.recv(), 10)
        assert info.value.rcvd is not None
        return info.value.rcvd.code

    assert await close_code("queue=other") == 4403
    assert await close_code(f"job={report['id']}") == 4404
    async with (
        websockets.connect(
            f"{server.ws_url}/ws/jobs?queue={Q}", additional_headers=auth(limited)
        ) as ws,
        httpx.AsyncClient(base_url=server.url, timeout=10) as http,
    ):
        await subscribed(ws)
        await post_job(http, ACME, task="report", queue=Q)
        last = await post_job(http, limited)
        seen = await frames(ws, lambda f: f.get("job_id") == last["id"])
        assert {f["task"] for _, f in seen} == {"probe"}
