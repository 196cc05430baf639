"""`GET /jobs` cursors over real HTTP (issue 12 item 10): a tenant pages through its own
jobs only, and a cursor is bound to the tenant, queue and state it was handed out for:
used by another tenant, for another state, or forged, it is 422 on the `cursor` field
and the answer holds no job.
"""

from __future__ import annotations

import httpx

from conveyor.api import Tokens
from tests.acceptance.test_api import StartApi, api_server
from tests.apps.probe import PROBE_QUEUE

__all__ = ["api_server"]  # the fixture, re-exported for pytest

Q = PROBE_QUEUE
ADMIN = "admin-token-0123456789abcdef"
ACME = "acme-token-0123456789abcdef"
GLOBEX = "globex-token-0123456789abcdef"
TOKENS = Tokens(admin=ADMIN, tenants={ACME: "acme", GLOBEX: "globex"})


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def test_tenant_cursors_page_own_jobs_and_are_refused_elsewhere(
    durable_url: str, api_server: StartApi
) -> None:
    server = api_server(durable_url, tokens=TOKENS)
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as http:
        acme_ids = []
        for _ in range(5):
            r = await http.post("/jobs", json={"task": "probe", "payload": {}}, headers=auth(ACME))
            acme_ids.append(r.json()["id"])
            for _ in range(3):  # globex's jobs in between
                r = await http.post("/jobs", json={"task": "probe"}, headers=auth(GLOBEX))
                assert r.status_code == 201, r.text
        seen: list[str] = []
        cursors: list[str] = []
        params: dict[str, str | int] = {"queue": Q, "limit": 2}
        while True:
            r = await http.get("/jobs", params=params, headers=auth(ACME))
            assert r.status_code == 200, r.text
            seen += [job["id"] for job in r.json()["jobs"]]
            if r.json()["next_cursor"] is None:
                break
            cursors.append(r.json()["next_cursor"])
            params["cursor"] = r.json()["next_cursor"]
        assert seen == acme_ids
        assert len({len(c) for c in cursors}) == 1

        refused = [
            (GLOBEX, {"queue": Q, "cursor": cursors[0]}),  # another tenant
            (ACME, {"queue": Q, "state": "scheduled", "cursor": cursors[0]}),  # another state
            (ADMIN, {"queue": Q, "tenant": "globex", "cursor": cursors[0]}),  # admin, other tenant
            (ACME, {"queue": Q, "cursor": cursors[0][:-3] + "abc"}),  # altered
            (ACME, {"queue": Q, "cursor": "2"}),  # an engine position
        ]
        for token, query in refused:
            r = await http.get("/jobs", params=query, headers=auth(token))
            assert r.status_code == 422, (query, r.text)
            body = r.json()
            assert body["errors"][0]["field"] == "cursor" and "jobs" not in body
