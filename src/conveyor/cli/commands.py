"""Every `conveyor` command, registered on `cli` in `conveyor --help` order.

Importing this module registers them all; `conveyor.cli.main` does that for every command
line but `conveyor worker`, whose start-up imports only its own module (see `main`).
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

__all__ = ["cli"]
