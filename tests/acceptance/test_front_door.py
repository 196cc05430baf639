"""The README's first command: the demo runs on the embedded engine, jobs flow, and the
dashboard it advertises answers while it runs."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import httpx

from ..conftest import free_port


def test_demo_shows_jobs_flowing_and_serves_the_dashboard(tmp_path: Path) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONVEYOR_")}
    env.pop("REDIS_URL", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "conveyor", "demo", "--duration", "6", "--port", str(port)],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        status = None
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and status != 200:
            try:
                status = httpx.get(f"http://127.0.0.1:{port}/dashboard", timeout=1).status_code
            except httpx.HTTPError:
                time.sleep(0.1)
        assert status == 200, "the dashboard answered while the demo ran"
        out, _ = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 0, out
    assert f"http://127.0.0.1:{port}/dashboard" in out
    # When it stops, a summary of what it did stays on the screen.
    summary = out[out.index("demo stopped after") :]
    assert "enqueued" in summary and "completed" in summary and "failed (dead-letter)" in summary
    # the embedded default: a SQLite file in the working directory, with finished jobs
    with sqlite3.connect(tmp_path / "conveyor.db") as db:
        done = db.execute("SELECT count(*) FROM jobs WHERE state = 'completed'").fetchone()[0]
    assert done > 20


def test_dev_runs_worker_api_and_scheduler(tmp_path: Path) -> None:
    port = free_port()
    app_file = tmp_path / "myjobs.py"
    app_file.write_text(
        "from conveyor import Conveyor\n"
        "app = Conveyor()\n"
        "@app.task('hello', queue='greetings')\n"
        "async def hello(job):\n"
        "    return {'hi': job.payload['name']}\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONVEYOR_")}
    env.pop("REDIS_URL", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "conveyor", "dev", "myjobs:app", "--port", str(port)],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 20
        created = None
        while time.monotonic() < deadline and created is None:
            try:
                created = httpx.post(
                    f"{base}/jobs", json={"task": "hello", "payload": {"name": "ada"}}, timeout=2
                )
            except httpx.HTTPError:
                time.sleep(0.1)
        assert created is not None and created.status_code == 201, created
        job_id = created.json()["id"]
        state = None
        while time.monotonic() < deadline and state != "completed":
            state = httpx.get(f"{base}/jobs/{job_id}", timeout=2).json()["state"]
            time.sleep(0.05)
        assert state == "completed"
        assert httpx.get(f"{base}/jobs/{job_id}", timeout=2).json()["result"] == {"hi": "ada"}
        proc.send_signal(2)  # Ctrl-C: graceful
        out, _ = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 0, out
    assert "dashboard:" in out
