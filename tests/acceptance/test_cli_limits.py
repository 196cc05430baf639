"""`conveyor limits` and the worker's limit flags, run as an operator runs them."""

from __future__ import annotations

import asyncio
import sys

import pytest

from conveyor import Conveyor, Worker
from conveyor.limits import QueueLimits
from tests.acceptance.test_cli_ops import assert_one_line_error, conveyor
from tests.apps.probe import probe_app
from tests.conftest import ROOT


async def test_limits_are_set_changed_shown_and_cleared(durable_url: str, app: Conveyor) -> None:
    done = await conveyor(
        durable_url, "limits", "mail", "--tenant-concurrency", "2", "--rate", "100/1s"
    )
    assert done.code == 0 and "tenant_concurrency=2, rate=100/1s" in done.out, done
    assert await app.get_limits("mail") == QueueLimits.build(tenant_concurrency=2, rate="100/1s")
    # Options change only what they name.
    await conveyor(durable_url, "limits", "mail", "--concurrency", "5", "--tenant-rate", "10/1s")
    shown = await conveyor(durable_url, "limits", "mail", "--json")
    assert shown.json()["limits"] == {
        "concurrency": 5,
        "tenant_concurrency": 2,
        "rate": "100/1s",
        "tenant_rate": "10/1s",
    }
    assert {"running", "pending", "tenant_running"} <= set(shown.json())
    table = await conveyor(durable_url, "limits", "mail")
    assert "100/1s" in table.out and "concurrency" in table.out
    cleared = await conveyor(durable_url, "limits", "mail", "--clear", "--rate", "5/1s")
    assert cleared.code == 0 and "rate=5/1s" in cleared.out
    assert await app.get_limits("mail") == QueueLimits.build(rate="5/1s")
    await conveyor(durable_url, "limits", "mail", "--clear")
    assert (await app.get_limits("mail")).empty


@pytest.mark.parametrize(
    ("args", "names"),
    [
        (("--rate", "fast"), "100/1s"),
        (("--concurrency", "-1"), "concurrency=-1"),
        (("--tenant-rate", "0/1s"), "tenant_rate"),
    ],
)
async def test_bad_limits_are_one_line_errors_that_name_the_fix(
    durable_url: str, app: Conveyor, args: tuple[str, ...], names: str
) -> None:
    result = await conveyor(durable_url, "limits", "mail", *args)
    assert_one_line_error(result, "ConfigError")
    assert names in result.err
    assert (await app.get_limits("mail")).empty  # nothing changed


async def test_worker_flags_store_limits_over_the_apps(durable_url: str) -> None:
    app = probe_app(durable_url)
    app.limits("probe", concurrency=3, rate="50/1s")
    worker = Worker(
        app,
        queues=("probe",),
        burst=True,
        limits=QueueLimits.build(tenant_concurrency=2, rate="10/1s"),
    )
    await worker.run()
    stored = await app.get_limits("probe")
    await app.close()
    assert stored == QueueLimits.build(concurrency=3, tenant_concurrency=2, rate="10/1s")


async def test_worker_rejects_a_bad_rate_flag(durable_url: str) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "conveyor", "worker", "tests.apps.probe:app", "--url",
        durable_url, "--rate", "fast", "--health-port", "0",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, cwd=ROOT,
    )  # fmt: skip
    _, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 2
    assert "rate='fast' is invalid" in err.decode() and "--rate" in err.decode()
