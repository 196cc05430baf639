"""`conveyor worker` starts without typer for plain arguments (cli/worker_start.py): the
fast path must take exactly the typer command's options, parse them to the same values,
and hand everything else (help, mistakes) to typer, which explains it.
"""

from __future__ import annotations

import inspect
import subprocess
import sys
from typing import Any

import pytest
import typer.main

from conveyor.cli.common import cli
from conveyor.cli.run import worker as typer_worker
from conveyor.cli.worker_start import FLAGS, OPTIONS, parse_worker_args, start_worker


def _command() -> Any:
    """The click command typer builds for `conveyor worker`."""
    return typer.main.get_command(cli).commands["worker"]  # type: ignore[attr-defined]


def _typer_params(args: list[str]) -> dict[str, Any]:
    """What the typer command would call its function with."""
    with _command().make_context("worker", list(args)) as ctx:
        return dict(ctx.params)


def test_the_fast_path_takes_exactly_the_typer_commands_options() -> None:
    options = [p for p in _command().params if p.param_type_name == "option"]
    flags = {p.opts[0]: p.name for p in options if p.is_flag}
    # The Python type typer converts each value to (its annotation in run.py).
    valued = {p.opts[0]: (p.name, p.type_descriptor.annotation) for p in options if not p.is_flag}
    assert flags == FLAGS
    assert valued == OPTIONS
    # ... and `start_worker` has a parameter for each, as the typer command passes them.
    assert list(inspect.signature(start_worker).parameters) == list(
        inspect.signature(typer_worker).parameters
    )


@pytest.mark.parametrize(
    "args",
    [
        ["jobs:app"],
        ["jobs:app", "--url", "redis://h:1/0", "--concurrency", "50", "--health-port", "0"],
        ["--queues=a,b", "jobs:app", "--burst", "--lease-timeout", "2.5", "--log-level", "info"],
        ["jobs:app", "--max-memory-per-child", "512MB", "--pool", "process", "--processes=3"],
        ["jobs:app", "--concurrency", "10", "--concurrency", "20"],  # the last one counts
        ["jobs:app", "--url", "-x"],  # a value that looks like an option is still the value
        ["jobs:app", "--health-port", "-1", "--shutdown-timeout=0.25"],
    ],
)
def test_plain_arguments_parse_as_typer_parses_them(args: list[str]) -> None:
    parsed = parse_worker_args(args)
    assert parsed is not None
    target, options = parsed
    defaults = {name: None for name, _ in OPTIONS.values()} | {"burst": False}
    assert {"target": target, **defaults, **options} == _typer_params(args)


@pytest.mark.parametrize(
    "args",
    [
        ["--help"],
        ["jobs:app", "--help"],
        ["jobs:app", "-h"],
        ["jobs:app", "--nope", "1"],
        ["jobs:app", "--concurrency", "lots"],
        ["jobs:app", "--concurrency", "1_000"],  # int() and typer may read these apart
        ["jobs:app", "--concurrency", "+5"],
        ["jobs:app", "--concurrency", " 5"],
        ["jobs:app", "--lease-timeout", "1e3"],
        ["jobs:app", "--lease-timeout", "inf"],
        ["jobs:app", "--concurrency"],
        ["jobs:app", "--burst=yes"],
        ["jobs:app", "other:app"],
        [],
        ["jobs:app", "--", "x"],
    ],
)
def test_anything_else_goes_to_typer(args: list[str]) -> None:
    assert parse_worker_args(args) is None


def test_a_mistake_gets_typers_message_and_exit_code() -> None:
    code = (
        "import sys; sys.argv = ['conveyor', 'worker', 'jobs:app', '--concurrency', 'lots']\n"
        "from conveyor.cli import main\nmain()"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 2
    assert "Invalid value" in proc.stderr and "--concurrency" in proc.stderr


def test_a_conveyor_error_on_the_fast_path_is_one_line_and_exit_2(tmp_path: Any) -> None:
    code = (
        "import sys; sys.argv = ['conveyor', 'worker', 'no_such_module:app', '--url', "
        "'memory://']\nfrom conveyor.cli import main\nmain()"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path
    )
    assert proc.returncode == 2
    assert "error: ConfigError: cannot import 'no_such_module'" in proc.stderr
    assert "Traceback" not in proc.stderr
