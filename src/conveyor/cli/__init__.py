"""The `conveyor` command: runs each process and performs every runbook operation.

Commands live in modules by what they do (`run.py`: processes; `ops.py`: operator
actions; `views.py`: read commands; `limits.py`, `schedule.py`, `api.py`);
`commands.py` registers them all. User mistakes print one readable line and exit 2.
"""

from __future__ import annotations

import sys


def main() -> None:
    """Entry point of the `conveyor` script.

    `conveyor worker` registers only `run.py`: a worker's start-up is on the clock of every
    deploy, restart and autoscaling step, and the API, views and schedule commands it never
    runs were a fifth of it (issue 15, point 7; tests/unit/test_worker_imports.py), and
    with plain arguments it does not load typer at all. Every other command line,
    `--help` included, sees all commands.
    """
    if sys.argv[1:2] == ["worker"]:
        # Plain arguments start the worker without typer (worker_start.py); the rest
        # (--help, a mistake) go to the typer command, which explains them.
        from .worker_start import start_fast

        if start_fast(sys.argv[2:]):
            return
        from . import run as _run  # noqa: F401  (registers `worker` on cli)
    else:
        from . import commands as _commands  # noqa: F401  (registers every command)
    from .common import cli

    cli()


__all__ = ["main"]
