"""Process isolation's configuration: settings, the task option, the pool's choice.

The behaviour of the pool itself (killing, crashes, recycling) is tested with real
worker processes in tests/integration/test_isolation.py.
"""

from __future__ import annotations

import signal
import subprocess
import sys

import pytest

from conveyor import ConfigError, Conveyor, Job
from conveyor.settings import Settings, parse_size
from conveyor.worker import Worker
from conveyor.worker.isolation import ProcessPool, ProcessPoolOptions, describe_exit, find_target
from tests.apps import isolated
from tests.conftest import ROOT


def test_pool_settings_from_flags_and_environment() -> None:
    env = {
        "CONVEYOR_POOL": "process",
        "CONVEYOR_PROCESSES": "3",
        "CONVEYOR_MAX_JOBS_PER_CHILD": "100",
        "CONVEYOR_MAX_MEMORY_PER_CHILD": "512MB",
    }
    s = Settings.load(env)
    assert (s.pool, s.processes, s.max_jobs_per_child) == ("process", 3, 100)
    assert s.max_memory_per_child == 512 * 1024 * 1024
    assert Settings.load(env, max_memory_per_child="1GB").max_memory_per_child == 1 << 30
    assert Settings.load({}).pool == "thread"


@pytest.mark.parametrize(
    ("env", "needle"),
    [
        ({"CONVEYOR_POOL": "fork"}, r"'thread' or 'process'.*CONVEYOR_POOL"),
        ({"CONVEYOR_PROCESSES": "0"}, "--processes"),
        ({"CONVEYOR_MAX_JOBS_PER_CHILD": "0"}, "CONVEYOR_MAX_JOBS_PER_CHILD"),
        ({"CONVEYOR_MAX_MEMORY_PER_CHILD": "lots"}, r"512MB.*--max-memory-per-child"),
        ({"CONVEYOR_MAX_MEMORY_PER_CHILD": "0MB"}, "CONVEYOR_MAX_MEMORY_PER_CHILD"),
    ],
)
def test_invalid_pool_settings_name_the_fix(env: dict[str, str], needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        Settings.load(env)


@pytest.mark.parametrize(
    ("text", "size"),
    [("1048576", 1 << 20), ("800KB", 800 << 10), ("512 mb", 512 << 20), ("1.5GiB", 3 << 29)],
)
def test_parse_size(text: str, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "MB", "-1MB", "2TB", "0", "lots"])
def test_parse_size_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="is not a size"):
        parse_size(text)


def test_worker_cli_rejects_a_bad_pool_at_start() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "conveyor", "worker", "tests.apps.isolated:app", "--pool", "fork"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode != 0
    assert "--pool" in proc.stderr + proc.stdout


def test_task_isolation_must_be_process_or_left_out() -> None:
    app = Conveyor("memory://")
    with pytest.raises(ConfigError, match="isolation='process'"):
        app.task("t", isolation="thread")  # type: ignore[arg-type]

    @app.task("ok", isolation="process")
    def ok(job: Job) -> None: ...

    assert app.tasks["ok"].isolation == "process"


def test_a_worker_starts_a_pool_only_when_a_task_or_the_flag_asks() -> None:
    plain = Conveyor("memory://")

    @plain.task("plain")
    def handler(job: Job) -> None: ...

    assert Worker(plain).process_pool is None
    pool = Worker(isolated.app).process_pool  # `iso.isolated` asks for it
    assert pool is not None
    assert pool.target == "tests.apps.isolated:app"  # found among the imported modules
    assert pool.handles(isolated.app.tasks["iso.isolated"])
    assert not pool.handles(isolated.app.tasks["iso.pid"])
    every = ProcessPool.for_worker(isolated.app, ProcessPoolOptions(every_task=True, processes=2))
    assert every is not None and every.processes == 2
    assert every.handles(isolated.app.tasks["iso.pid"])


def test_health_detailed_shows_the_process_pool() -> None:
    from conveyor.health import detailed_document

    plain = Conveyor("memory://")
    assert detailed_document(Worker(plain), True, "")["process_pool"] is None
    doc = detailed_document(Worker(isolated.app), True, "")["process_pool"]
    assert doc is not None and doc["pids"] == [] and doc["recycled"] == doc["died"] == 0


def test_an_app_outside_any_module_needs_its_target_named() -> None:
    app = Conveyor("memory://")  # a local: no module attribute holds it
    with pytest.raises(ConfigError, match=r"myproject\.jobs:app"):
        find_target(app)
    with pytest.raises(ConfigError):
        Worker(app, isolation=ProcessPoolOptions(every_task=True))
    named = ProcessPoolOptions(target="somewhere:app", every_task=True)
    assert Worker(app, isolation=named).process_pool is not None


def test_describe_exit_says_how_the_child_died() -> None:
    assert "SIGSEGV" in describe_exit(7, -signal.SIGSEGV)
    assert "OOM" in describe_exit(7, -signal.SIGKILL)
    assert "exited with code 3" in describe_exit(7, 3)
