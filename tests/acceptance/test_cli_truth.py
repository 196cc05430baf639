"""CLI output that says what is true (issue 14.8): version, import errors told apart,
task defaults from the app, "did you mean" for queues nobody declared."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import orjson
import pytest

from conveyor.testing import eventually


def conveyor(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "conveyor", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": ":".join([str(cwd), *sys.path])},
    )


def test_version_prints_the_installed_distribution_version(tmp_path: Path) -> None:
    result = conveyor(tmp_path, "--version")
    assert result.returncode == 0
    assert result.stdout == f"conveyor {version('conveyor-jobs')}\n"


@pytest.mark.parametrize(
    ("source", "target", "expected"),
    [
        (None, "nosuchmodule:app", "no module named 'nosuchmodule' is on the path"),
        (None, "nosuchpkg.jobs:app", "no module named 'nosuchpkg' is on the path"),
        (
            'import os\nraise RuntimeError("settings missing")\n',
            "jobs:app",
            "importing 'jobs' raised RuntimeError: settings missing at {dir}/jobs.py:2",
        ),
        (
            "import not_installed_dependency\n",
            "jobs:app",
            "importing 'jobs' raised ModuleNotFoundError: No module named "
            "'not_installed_dependency' at {dir}/jobs.py:1",
        ),
        ("def broken(:\n", "jobs:app", "importing 'jobs' raised SyntaxError"),
    ],
)
def test_import_errors_tell_not_found_from_raised(
    tmp_path: Path, source: str | None, target: str, expected: str
) -> None:
    if source is not None:
        (tmp_path / "jobs.py").write_text(source)
    result = conveyor(tmp_path, "worker", target, "--url", "memory://", "--burst")
    assert result.returncode == 2, result
    assert expected.format(dir=tmp_path) in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


APP_SOURCE = """
from conveyor import Conveyor

app = Conveyor()


@app.task("email.send", queue="emails", max_attempts=5, backoff=[7], timeout=12)
async def send(job):
    return None
"""


def test_worker_warns_about_a_queue_no_task_declares(tmp_path: Path) -> None:
    (tmp_path / "jobs.py").write_text(APP_SOURCE)
    flags = ("--url", "memory://", "--burst", "--health-port", "0")
    result = conveyor(tmp_path, "worker", "jobs:app", "--queues", "emials,default", *flags)
    assert result.returncode == 0, result.stderr
    assert "queue 'emials' is not declared" in result.stderr
    assert "did you mean 'emails'?" in result.stderr
    assert "'default'" not in result.stderr  # the app's default queue is declared


def test_schedules_add_refuses_a_task_the_app_does_not_know(tmp_path: Path) -> None:
    (tmp_path / "jobs.py").write_text(APP_SOURCE)
    url = ("--url", f"sqlite:///{tmp_path / 'conveyor.db'}")
    typo = conveyor(tmp_path, "schedules", "add", "s", "--task", "email.snd", "--every", "5m",
                    "--app", "jobs:app", *url)  # fmt: skip
    assert typo.returncode == 2
    assert "'email.snd' is not registered in the app (did you mean 'email.send'?)" in typo.stderr
    listed = conveyor(tmp_path, "schedules", "list", "--json", *url)
    assert listed.stdout.strip() == "[]"  # nothing was stored

    # Without the app nothing can be checked: stored, with a warning that says so; then
    # `list --app` shows the error the scheduler would meet.
    unchecked = conveyor(tmp_path, "schedules", "add", "s", "--task", "email.snd",
                         "--every", "5m", *url)  # fmt: skip
    assert unchecked.returncode == 0 and "not checked" in unchecked.stderr
    listed = conveyor(tmp_path, "schedules", "list", "--json", *url, "--app", "jobs:app")
    (row,) = orjson.loads(listed.stdout)
    assert row["error"].startswith("UnknownTask: task 'email.snd' is not registered")
    table = conveyor(tmp_path, "schedules", "list", *url, "--app", "jobs:app")
    assert "UnknownTask" in table.stdout


def test_schedules_list_shows_the_last_error_the_scheduler_met(tmp_path: Path) -> None:
    (tmp_path / "jobs.py").write_text(APP_SOURCE)
    url = ("--url", f"sqlite:///{tmp_path / 'conveyor.db'}")
    added = conveyor(tmp_path, "schedules", "add", "s", "--task", "email.snd", "--every", "1",
                     *url)  # fmt: skip
    assert added.returncode == 0, added.stderr
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": ":".join([str(tmp_path), *sys.path])}
    with (tmp_path / "scheduler.log").open("wb") as log:
        scheduler = subprocess.Popen(
            [sys.executable, "-m", "conveyor", "scheduler", "jobs:app", *url],
            cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:

        async def stored() -> bool:
            listed = conveyor(tmp_path, "schedules", "list", "--json", *url)
            return orjson.loads(listed.stdout)[0]["last_error"] is not None

        asyncio.run(eventually(stored, timeout=30, message="the scheduler stored an error"))
    finally:
        scheduler.terminate()
        scheduler.wait(timeout=30)
    (row,) = orjson.loads(conveyor(tmp_path, "schedules", "list", "--json", *url).stdout)
    error = row["last_error"]
    assert error["type"] == "UnknownTask" and row["last_run"] is None
    assert error["message"].startswith("task 'email.snd' is not registered")
    assert error["at"] >= error["occurrence"] > 0
    table = conveyor(tmp_path, "schedules", "list", *url)
    assert "UnknownTask: task 'email.snd'" in " ".join(table.stdout.split())


def test_enqueue_with_the_app_uses_the_tasks_declared_defaults(tmp_path: Path) -> None:
    (tmp_path / "jobs.py").write_text(APP_SOURCE)
    url = ("--url", f"sqlite:///{tmp_path / 'conveyor.db'}")
    done = conveyor(tmp_path, "enqueue", "email.send", "--app", "jobs:app", "--json", *url)
    assert done.returncode == 0, done.stderr
    job = orjson.loads(done.stdout)
    # The task says emails / 5 attempts; the CLI used to store default / 3.
    assert (job["queue"], job["max_attempts"]) == ("emails", 5)

    # `conveyor job` shows what the worker will apply, and where it comes from.
    shown = conveyor(tmp_path, "job", job["id"], "--app", "jobs:app", "--json", *url)
    policy = orjson.loads(shown.stdout)["in_effect"]
    assert (policy["timeout_seconds"], policy["timeout_from"]) == (12, "task")
    assert policy["backoff_text"] == "7s (the last repeats)"
    table = conveyor(tmp_path, "job", job["id"], "--app", "jobs:app", *url).stdout
    assert "12s (task default)" in table and "7s (the last repeats) (task default)" in table
    bare = conveyor(tmp_path, "job", job["id"], *url).stdout
    assert "set by task 'email.send' in the worker's code (pass --app to see it)" in bare

    # Without the app the CLI cannot know the task's queue: it says what to pass.
    unsure = conveyor(tmp_path, "enqueue", "email.send", *url)
    assert unsure.returncode == 2 and "pass --queue, or --app" in unsure.stderr
    typo = conveyor(tmp_path, "enqueue", "email.snd", "--app", "jobs:app", *url)
    assert typo.returncode == 2 and "did you mean 'email.send'?" in typo.stderr


def test_typo_queue_names_get_a_did_you_mean_and_drain_refuses_them(tmp_path: Path) -> None:
    (tmp_path / "jobs.py").write_text(APP_SOURCE)
    url = ("--url", f"sqlite:///{tmp_path / 'conveyor.db'}")
    ok = conveyor(tmp_path, "enqueue", "email.send", "--app", "jobs:app", *url)
    assert ok.returncode == 0, ok.stderr
    drain = conveyor(tmp_path, "drain", "emalis", "--timeout", "1", *url)
    assert drain.returncode != 0
    assert "did you mean 'emails'?" in drain.stderr and "nothing to drain" in drain.stderr

    typo = conveyor(tmp_path, "enqueue", "other.task", "--queue", "emials", *url)
    assert typo.returncode == 0  # enqueued (another service may own it), with a warning
    assert "queue 'emials' has never held a job (did you mean 'emails'?)" in typo.stderr


def test_queues_table_shows_limits_and_why_pending_jobs_wait(tmp_path: Path) -> None:
    (tmp_path / "jobs.py").write_text(APP_SOURCE)
    url = ("--url", f"sqlite:///{tmp_path / 'conveyor.db'}")
    assert conveyor(tmp_path, "enqueue", "email.send", "--app", "jobs:app", *url).returncode == 0
    assert conveyor(tmp_path, "limits", "emails", "--concurrency", "5", *url).returncode == 0
    table = conveyor(tmp_path, "queues", *url).stdout
    (row,) = [line for line in table.splitlines() if line.lstrip().startswith("emails")]
    assert "concurrency 5" in row and "no live worker consumes this queue" in row
    doc = orjson.loads(conveyor(tmp_path, "queues", "--json", *url).stdout)
    assert doc[0]["limits"] == {"concurrency": 5}
    assert doc[0]["held_back"] == ["no live worker consumes this queue"]
