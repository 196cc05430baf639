"""What a worker prints, as an operator's log shipper sees it (issue 14.5): the start-up
line after the engine answered, JSON lines with `--log-format json`, nothing wrapped at
80 columns off a terminal."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson

from conveyor import Conveyor
from tests.apps.probe import PROBE_QUEUE, probe_app

from ..conftest import ROOT, free_port


def run_worker(cwd: Path, url: str, *flags: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            *(sys.executable, "-m", "conveyor", "worker", "tests.apps.probe:app"),
            *("--url", url, "--queues", PROBE_QUEUE, "--health-port", "0", "--burst", *flags),
        ],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": ":".join([str(ROOT), *sys.path])},
    )


async def enqueue(url: str, *actions: str) -> list[str]:
    app: Conveyor = probe_app(url)
    try:
        jobs = await app.enqueue_many(
            [{"task": "probe", "payload": {"action": a}, "max_attempts": 1} for a in actions]
        )
    finally:
        await app.close()
    return [job.id for job in jobs]


async def test_json_format_makes_every_line_one_object_startup_line_included(
    tmp_path: Path,
) -> None:
    ok, failed = await enqueue(f"sqlite:///{tmp_path / 'conveyor.db'}", "ok", "fail")
    # A relative SQLite URL: the start-up line must say which file that is.
    result = run_worker(tmp_path, "sqlite:///conveyor.db", "--log-format", "json")
    assert result.returncode == 0, result.stderr
    lines = [orjson.loads(line) for line in (result.stdout + result.stderr).splitlines()]
    startup: dict[str, Any] = orjson.loads(result.stdout.splitlines()[0])
    assert startup["msg"].startswith("worker ")
    assert startup["engine"] == f"sqlite:///{(tmp_path / 'conveyor.db').resolve()}"
    assert str((tmp_path / "conveyor.db").resolve()) in startup["msg"]
    by_job = {line.get("job_id"): line for line in lines if line.get("logger") == "conveyor.jobs"}
    assert by_job[ok]["event"] == "completed" and by_job[ok]["level"] == "INFO"
    assert by_job[failed]["event"] == "dead_lettered" and by_job[failed]["level"] == "ERROR"
    assert "RuntimeError: probe failure" in by_job[failed]["exc"]


async def test_text_startup_line_is_not_wrapped_off_a_terminal(tmp_path: Path) -> None:
    deep = tmp_path / ("a-rather-long-directory-name-" * 3) / "conveyor.db"
    result = run_worker(tmp_path, f"sqlite:///{deep}", "--log-level", "WARNING")
    assert result.returncode == 0, result.stderr
    first = result.stdout.splitlines()[0]
    assert first.startswith("worker ") and len(first) > 120
    assert f"sqlite:///{deep}" in first and "health port=off" in first


def test_no_startup_line_until_the_engine_answers(tmp_path: Path) -> None:
    # Nothing listens on this port: the worker must fail without claiming to be ready.
    result = run_worker(tmp_path, f"redis://127.0.0.1:{free_port()}/0")
    assert result.returncode == 2, result
    assert "worker " not in result.stdout
    assert "EngineUnavailable" in result.stderr


async def test_piped_tables_keep_long_rows_on_one_line(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'conveyor.db'}"
    queue = "q" * 60
    app = Conveyor(url)
    try:
        await app.enqueue("elsewhere.task", {}, queue=queue)
    finally:
        await app.close()
    result = subprocess.run(
        [sys.executable, "-m", "conveyor", "queues", "--url", url],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": ":".join(sys.path)},  # no COLUMNS
    )
    assert result.returncode == 0, result.stderr
    (row,) = [line for line in result.stdout.splitlines() if queue in line]
    assert len(row) > 80 and "pending" in result.stdout
