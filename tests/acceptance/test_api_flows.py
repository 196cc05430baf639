"""`POST /flows` and `GET /flows/{id}` over real HTTP: a flow stored at once, its tree,
dedupe, tenant scope (a tenant never sees another's flow), the body limit and bad input."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from conveyor.api import Tokens, create_api
from tests.acceptance.test_api import ApiServer, StartApi, api_server
from tests.apps.probe import PROBE_QUEUE, probe_app

__all__ = ["api_server"]  # the fixture, re-exported for pytest

Q = PROBE_QUEUE
ADMIN = "admin-token-0123456789abcdef"
ACME = "acme-token-0123456789abcdef"
GLOBEX = "globex-token-0123456789abcdef"
TOKENS = Tokens(admin=ADMIN, tenants={ACME: "acme", GLOBEX: "globex"})


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


FLOW = {
    "parent": {"task": "probe", "payload": {"action": "ok"}},
    "children": [
        {"task": "probe", "payload": {"action": "ok"}},
        {
            "task": "probe",
            "on_failure": "ignore",
            "children": [{"task": "probe", "payload": {"action": "ok"}}],
        },
    ],
}


@pytest.fixture
async def http(sqlite_url: str, api_server: StartApi) -> Any:
    server = api_server(sqlite_url, tokens=TOKENS)
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as c:
        yield c


def shape(node: dict[str, Any]) -> Any:
    return (node["state"], node["policy"], [shape(k) for k in node["children"]])


async def test_post_flow_stores_it_whole_and_get_shows_the_tree(http: httpx.AsyncClient) -> None:
    body = {**FLOW, "parent": {**FLOW["parent"], "dedupe_key": "order-7"}}
    r = await http.post("/flows", json=body, headers=auth(ADMIN))
    assert r.status_code == 201, r.text
    parent = r.json()
    assert parent["state"] == "waiting-children"
    tree = (await http.get(f"/flows/{parent['id']}", headers=auth(ADMIN))).json()
    assert shape(tree) == (
        "waiting-children",
        None,
        [("pending", "fail_parent", []), ("waiting-children", "ignore", [("pending",
                                                                          "fail_parent", [])])],
    )  # fmt: skip
    # from any job of the flow, the same tree
    leaf = tree["children"][1]["children"][0]["id"]
    assert (await http.get(f"/flows/{leaf}", headers=auth(ADMIN))).json() == tree
    again = await http.post("/flows", json=body, headers=auth(ADMIN))
    assert again.status_code == 200 and again.json()["id"] == parent["id"]
    counts = (await http.get(f"/queues/{Q}/stats", headers=auth(ADMIN))).json()
    assert counts["waiting-children"] == 2 and counts["pending"] == 2


async def test_a_tenant_never_sees_another_tenants_flow(http: httpx.AsyncClient) -> None:
    r = await http.post("/flows", json=FLOW, headers=auth(ACME))
    assert r.status_code == 201, r.text
    parent = r.json()
    assert parent["tenant"] == "acme"
    tree = (await http.get(f"/flows/{parent['id']}", headers=auth(ACME))).json()
    ids = [tree["id"], *(k["id"] for k in tree["children"])]
    for job_id in ids:
        job = (await http.get(f"/jobs/{job_id}", headers=auth(ACME))).json()
        assert job["tenant"] == "acme"  # every job of a tenant's flow carries its tenant
        for path in (f"/flows/{job_id}", f"/jobs/{job_id}"):
            r = await http.get(path, headers=auth(GLOBEX))
            assert r.status_code == 404, (path, r.text)
    # a tenant cannot put a job of another tenant into its flow
    other = {**FLOW, "children": [{"task": "probe", "tenant": "globex"}]}
    assert (await http.post("/flows", json=other, headers=auth(ACME))).status_code == 403
    # dedupe keys are scoped per tenant: globex's key never meets acme's flow
    keyed = {**FLOW, "parent": {**FLOW["parent"], "dedupe_key": "k"}}
    a = (await http.post("/flows", json=keyed, headers=auth(ACME))).json()
    g = await http.post("/flows", json=keyed, headers=auth(GLOBEX))
    assert g.status_code == 201 and g.json()["id"] != a["id"]


async def test_bad_flow_is_422_and_stores_nothing(http: httpx.AsyncClient) -> None:
    for body, field in (
        ({**FLOW, "children": [{"task": "probe", "queue": "elsewhere"}]}, "one queue"),
        ({**FLOW, "children": [{"task": "probe", "dedupe_key": "x"}]}, "flow's parent"),
        ({**FLOW, "children": [{"task": "probe", "on_failure": "maybe"}]}, "on_failure"),
        ({**FLOW, "children": []}, "children"),
    ):
        r = await http.post("/flows", json=body, headers=auth(ADMIN))
        assert r.status_code == 422, r.text
        assert field in r.text
    r = await http.get(f"/jobs?queue={Q}&state=waiting-children", headers=auth(ADMIN))
    assert r.status_code == 200 and r.json()["jobs"] == []
    assert (await http.post("/flows", json=FLOW)).status_code == 401


async def test_flow_bodies_are_bounded(sqlite_url: str) -> None:
    server = ApiServer(
        create_api(probe_app(sqlite_url), tokens=TOKENS, max_body_bytes=2000, owns_app=True)
    ).start()
    try:
        async with httpx.AsyncClient(base_url=server.url, timeout=10) as http:
            big = {**FLOW, "children": [{"task": "probe", "payload": {"x": "y" * 3000}}]}
            r = await http.post("/flows", json=big)  # no token: the size is checked first
            assert r.status_code == 413 and r.json()["error"] == "PayloadTooLarge"
    finally:
        server.stop()


async def test_a_cross_site_page_cannot_post_a_flow(sqlite_url: str, api_server: StartApi) -> None:
    """The open loopback mode (no tokens): a no-cors POST from another origin is refused
    before it stores anything; the API's own origin and tools without Origin may post."""
    server = api_server(sqlite_url)
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as http:
        for origin in ("http://attacker.example", f"http://localhost:{server.port + 1}", "null"):
            r = await http.post("/flows", json=FLOW, headers={"Origin": origin})
            assert r.status_code == 403, (origin, r.text)
        rows = (await http.get("/queues")).json()["queues"]
        assert not [row for row in rows if row["queue"] == Q and row["waiting-children"]], rows
        assert not [row for row in rows if row["queue"] == Q and row["pending"]], rows
        own = f"http://127.0.0.1:{server.port}"
        assert (await http.post("/flows", json=FLOW, headers={"Origin": own})).status_code == 201
