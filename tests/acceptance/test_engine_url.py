"""Issue 14 item 0: every process runs on the engine the app names in code, unless a
flag or the environment overrides it (and then its start-up line says so).

Real `conveyor` subprocesses against real SQLite files: the app module
(`tests/apps/coded_url.py`) passes a literal `sqlite:///` URL to `Conveyor(...)`.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from conveyor import Conveyor, JobState

from ..conftest import ROOT, free_port

APP = "tests.apps.coded_url:app"


def _env(coded: Path, **extra: str) -> dict[str, str]:
    env = {
        k: v for k, v in os.environ.items() if not k.startswith("CONVEYOR_") and k != "REDIS_URL"
    }
    env.update(CODED_APP_DB=str(coded), COLUMNS="400", **extra)
    return env


def _first_line(args: list[str], env: dict[str, str], marker: str) -> str:
    """Start a long-running command, return its start-up line (the first stdout line
    containing `marker`), then stop it."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "conveyor", *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert proc.stdout is not None
        seen = []
        for line in proc.stdout:  # blocks until the process prints (or exits)
            seen.append(line)
            if marker in line:
                return " ".join(line.split())
        raise AssertionError(f"no start-up line with {marker!r}: {''.join(seen)}")
    finally:
        proc.terminate()
        proc.wait(20)


async def _enqueue(url: str) -> str:
    app = Conveyor(url)
    async with app:
        return (await app.enqueue("coded.echo", {"n": 1}, queue="coded")).id


async def _state(url: str, job_id: str) -> JobState:
    async with Conveyor(url) as app:
        return (await app.get_job(job_id)).state


def _burst(env: dict[str, str], *flags: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "conveyor", "worker", APP, "--burst", "--health-port", "0", *flags],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return " ".join(done.stdout.split())


async def test_worker_runs_on_the_url_in_code(tmp_path: Path) -> None:
    coded = tmp_path / "coded.db"
    job_id = await _enqueue(f"sqlite:///{coded}")
    out = _burst(_env(coded))
    assert f"on sqlite:///{coded} " in out
    assert "overrides" not in out
    assert await _state(f"sqlite:///{coded}", job_id) == JobState.COMPLETED


@pytest.mark.parametrize("how", ["--url", "CONVEYOR_URL", "REDIS_URL"])
async def test_flag_or_environment_overrides_the_code_and_says_so(tmp_path: Path, how: str) -> None:
    coded, other = tmp_path / "coded.db", tmp_path / "other.db"
    coded_job = await _enqueue(f"sqlite:///{coded}")
    other_job = await _enqueue(f"sqlite:///{other}")
    other_url = f"sqlite:///{other}"
    if how == "--url":
        out = _burst(_env(coded), "--url", other_url)
    else:
        out = _burst(_env(coded, **{how: other_url}))
    assert f"on {other_url} ({how} overrides sqlite:///{coded} in the app's code)" in out
    assert await _state(other_url, other_job) == JobState.COMPLETED
    assert await _state(f"sqlite:///{coded}", coded_job) == JobState.PENDING


def test_flag_wins_over_environment(tmp_path: Path) -> None:
    coded, env_db, flag_db = tmp_path / "c.db", tmp_path / "e.db", tmp_path / "f.db"
    out = _burst(_env(coded, CONVEYOR_URL=f"sqlite:///{env_db}"), "--url", f"sqlite:///{flag_db}")
    assert f"on sqlite:///{flag_db} (--url overrides" in out


@pytest.mark.parametrize(
    ("command", "marker"),
    [
        (["scheduler", APP], "scheduler "),
        (["api", APP, "--port", "{port}"], "api on "),
        (["dev", APP, "--port", "{port}", "--no-scheduler"], "conveyor dev on "),
    ],
)
def test_api_dev_and_scheduler_use_the_url_in_code(
    tmp_path: Path, command: list[str], marker: str
) -> None:
    coded, other = tmp_path / "coded.db", tmp_path / "other.db"
    args = [a.replace("{port}", str(free_port())) for a in command]
    line = _first_line(args, _env(coded), marker)
    assert f"sqlite:///{coded}" in line and "overrides" not in line, line
    args = [a.replace("{port}", str(free_port())) for a in command]
    line = _first_line([*args, "--url", f"sqlite:///{other}"], _env(coded), marker)
    assert f"sqlite:///{other} (--url overrides sqlite:///{coded} in the app's code)" in line


def test_operations_given_an_app_use_its_url_unless_overridden(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`operate(..., app=)` (what an operations command given `--app` calls) follows the
    same precedence: flag, environment, the URL in the app's code, the default."""
    from conveyor.cli.common import operate

    coded, env_db = tmp_path / "coded.db", tmp_path / "env.db"
    seen: list[str] = []

    async def url_of(app: Conveyor) -> None:
        seen.append(app.url)

    operate(None, url_of, app=Conveyor(f"sqlite:///{coded}"))
    monkeypatch.setenv("CONVEYOR_URL", f"sqlite:///{env_db}")
    operate(None, url_of, app=Conveyor(f"sqlite:///{coded}"))
    operate(f"sqlite:///{tmp_path / 'flag.db'}", url_of, app=Conveyor(f"sqlite:///{coded}"))
    assert seen == [
        f"sqlite:///{coded}",
        f"sqlite:///{env_db}",
        f"sqlite:///{tmp_path / 'flag.db'}",
    ]
