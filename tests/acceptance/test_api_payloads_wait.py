"""Issue 14 over HTTP: a typed task's invalid payload is a 422 naming the field, the
OpenAPI document shows each typed task's payload schema (item 2), and
`GET /jobs/{id}?wait=N` answers as soon as the job is finished (item 1)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from conveyor import Worker
from conveyor.api import Tokens, create_api
from tests.acceptance.test_api import ApiServer
from tests.apps.typed import Email, build
from tests.conftest import ROOT


@pytest.fixture
def server(sqlite_url: str) -> Iterator[ApiServer]:
    api = create_api(build(sqlite_url), tokens=Tokens(), metrics_prefix="c_", owns_app=True)
    started = ApiServer(api).start()
    yield started
    started.stop()


async def test_an_invalid_typed_payload_is_a_422_naming_the_field(
    server: ApiServer,
) -> None:
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
        bad = await client.post("/jobs", json={"task": "email.send", "payload": {"to": "x"}})
        assert bad.status_code == 422, bad.text
        body = bad.json()
        fields = {e["field"]: e["reason"] for e in body["errors"]}
        assert set(fields) == {"payload.to", "payload.subject"}, body
        assert "Field required" in fields["payload.subject"]
        assert (await client.get("/jobs", params={"queue": "mail", "state": "pending"})).json()[
            "jobs"
        ] == []
        good = await client.post(
            "/jobs", json={"task": "email.send", "payload": {"to": "a@b.c", "subject": "hi"}}
        )
        assert good.status_code == 201, good.text
        plain = await client.post("/jobs", json={"task": "plain", "payload": {"any": [1]}})
        assert plain.status_code == 201, plain.text


async def test_the_openapi_schema_shows_each_typed_tasks_payload(
    server: ApiServer,
) -> None:
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
        schema = (await client.get("/openapi.json")).json()
    assert schema["components"]["schemas"]["Email"] == Email.model_json_schema()
    body = schema["paths"]["/jobs"]["post"]["requestBody"]["content"]["application/json"]
    variants = body["schema"]["anyOf"]
    typed = [v for v in variants if v.get("title") == "enqueue email.send"]
    assert typed, variants
    (extra,) = [part for part in typed[0]["allOf"] if "properties" in part]
    assert extra["properties"]["task"] == {"const": "email.send"}
    assert extra["properties"]["payload"] == {"$ref": "#/components/schemas/Email"}
    assert {"$ref": "#/components/schemas/EnqueueRequest"} in variants  # untyped tasks


def test_print_openapi_documents_the_apps_typed_tasks(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "conveyor", "api", "tests.apps.typed:app", "--print-openapi"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    )
    assert "Email" in json.loads(out.stdout)["components"]["schemas"]


async def test_get_job_with_wait_answers_when_the_job_finishes(
    server: ApiServer, sqlite_url: str
) -> None:
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
        made = await client.post(
            "/jobs", json={"task": "email.send", "payload": {"to": "a@b.c", "subject": "s"}}
        )
        job_id = made.json()["id"]
        short = await client.get(f"/jobs/{job_id}", params={"wait": 0.2})
        assert short.status_code == 200 and short.json()["state"] == "pending"
        poll = asyncio.create_task(client.get(f"/jobs/{job_id}", params={"wait": 20}))
        await asyncio.sleep(0)  # the request is out before the worker runs
        worker_app = build(sqlite_url)
        await asyncio.wait_for(
            Worker(worker_app, queues=("mail",), burst=True, health_port=0).run(), 30
        )
        await worker_app.close()
        answer = await poll
        assert answer.status_code == 200
        assert answer.json()["state"] == "completed"
        assert answer.json()["result"] == {"message_id": "m-a@b.c"}
        too_long = await client.get(f"/jobs/{job_id}", params={"wait": 61})
        assert too_long.status_code == 422
