"""A worker imports what a worker needs, no web stack (issue 15, point 7: start-up).

`conveyor worker` runs in a fresh interpreter here, through the real entry point
(`conveyor.cli.main`) on `memory://` in burst mode, and the modules it loaded are read at
exit. Structural, not timed: timing belongs to bench/ (`bench/run protocol --parts
startup`, which also runs `python -X importtime`), while this says *what* a worker loads.
FastAPI, uvicorn and Starlette are imported only when the health server runs (the second
test is the control that the check can see them); the API, the dashboard and the other
CLI commands and Rich (their output) never are; nor, on memory:// and sqlite://, another
engine's client library (redis-py, psycopg) or OpenTelemetry (not configured), nor
pydantic-settings on any engine, nor prometheus_client without the health server,
nor typer (the arguments are plain).
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

WEB = (
    "fastapi",
    "uvicorn",
    "starlette",
    "jinja2",
    "conveyor.api",
    "conveyor.dashboard",
    "conveyor.web",
)
# The other commands' modules, and Rich, which only their tables and messages use.
OTHER_COMMANDS = ("conveyor.cli.api", "conveyor.cli.views", "conveyor.cli.schedule", "rich")
# Each engine's client library comes with its URL only (redis-py alone is ~65 ms of import,
# its asyncio cluster and sentinel clients with it), and OpenTelemetry only when a tracer is
# configured (`conveyor.otel`): a worker on memory:// or sqlite:// loads none of them.
ENGINE_LIBRARIES = (
    "redis",
    "hiredis",
    "psycopg",
    "psycopg_pool",
    "conveyor.engines.redis",
    "conveyor.engines.postgresql",
    "opentelemetry",
    "conveyor.otel",
)

# Libraries a worker does not need before its first job, each ~5% of a worker's start-up
# instructions on Redis (bench/RESULTS.md, "Start-up, branch startup"): pydantic-settings
# (the settings read the environment themselves and validate with pydantic alone), and
# prometheus_client without a health server (nobody could read the metrics); and typer
# (~10%): plain arguments start the worker without it (cli/worker_start.py).
STARTUP = ("pydantic_settings", "dotenv", "prometheus_client", "typer")

APP = """
from conveyor import Conveyor, Job

app = Conveyor({url!r})


@app.task("noop")
async def noop(job: Job) -> None:
    return None
"""

# Run `conveyor worker` as the console script does, and print what it imported at exit.
RUN = """
import atexit, json, sys
watched = {watched!r}
atexit.register(lambda: print(json.dumps(sorted(m for m in watched if m in sys.modules))))
sys.argv = ["conveyor", "worker", "jobs_app:app", "--url", {url!r}, "--burst",
            "--health-port", {port!r}, "--log-level", "WARNING"]
from conveyor.cli import main
main()
"""


def _worker_imports(tmp_path: Path, health_port: int, url: str = "memory://") -> list[str]:
    (tmp_path / "jobs_app.py").write_text(APP.format(url=url))
    watched = WEB + OTHER_COMMANDS + ENGINE_LIBRARIES + STARTUP
    code = RUN.format(watched=watched, port=str(health_port), url=url)
    proc = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        env={"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    loaded: list[str] = json.loads(proc.stdout.strip().splitlines()[-1])
    return loaded


def test_a_worker_without_health_server_loads_no_web_stack_and_no_other_commands(
    tmp_path: Path,
) -> None:
    assert _worker_imports(tmp_path, health_port=0) == []


def test_the_health_server_brings_its_web_stack(tmp_path: Path) -> None:
    """The control: the same check sees Starlette and uvicorn when a port is set."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    loaded = _worker_imports(tmp_path, health_port=port)
    assert {"starlette", "uvicorn", "prometheus_client"} <= set(loaded)
    assert not {"fastapi", "conveyor.api", "conveyor.dashboard"} & set(loaded)


def test_a_worker_on_sqlite_loads_no_other_engine_library_and_no_opentelemetry(
    tmp_path: Path,
) -> None:
    """The default engine: neither redis-py nor psycopg, nor OpenTelemetry unconfigured."""
    url = f"sqlite:///{tmp_path / 'jobs.db'}"
    assert _worker_imports(tmp_path, health_port=0, url=url) == []
    assert (tmp_path / "jobs.db").exists()  # the control: the worker did open its engine
