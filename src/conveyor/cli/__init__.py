"""The `conveyor` command: runs each process and performs every runbook operation.

Commands live in modules by what they do (`run.py`: processes; `ops.py`: operator
actions; `views.py`: read commands; `limits.py`, `schedule.py`, `api.py`);
this module only assembles them. User mistakes print one readable line and exit 2.
"""

from __future__ import annotations

# Registration order is `conveyor --help` order: read commands before operator actions.
# isort: off
from . import api as _api  # noqa: F401  (registers commands)
from . import views as _views  # noqa: F401  (registers commands)
from . import ops as _ops  # noqa: F401  (registers commands)
from . import limits as _limits  # noqa: F401  (registers commands)
from . import relay as _relay  # noqa: F401  (registers commands)
from . import run as _run  # noqa: F401  (registers commands)
from . import schedule as _schedule  # noqa: F401  (registers commands)

# isort: on
from .common import cli


def main() -> None:
    """Entry point of the `conveyor` script."""
    cli()


__all__ = ["cli", "main"]
