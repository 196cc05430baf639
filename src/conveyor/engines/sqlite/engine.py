"""`sqlite:///path` — the embedded default engine: durable, no server, one machine —
and `memory://`, the same engine on a private in-memory database (for tests).

URL forms (the part after ``sqlite:///`` is a filesystem path, as in SQLAlchemy):
``sqlite:///conveyor.db`` and ``sqlite:///data/q.db`` are relative to the working
directory, ``sqlite:////var/lib/conveyor/q.db`` is absolute, ``~`` is expanded, and
the parent directory is created if missing. ``:memory:``, ``sqlite://host/...`` and
query strings are rejected with `ConfigError` (use ``memory://``).

The engine is assembled from its parts, one module each:

* `connection` — the file, its thread, transactions, durability, error mapping;
* `flow` — enqueue, exchange (outcomes, promotion, recovery, fair claims), heartbeats,
  progress and the wake-up notifier;
* `flows` — flows: store one whole, settle a flow job's finish in the same transaction;
* `operations` — pause/resume, retry, cancel, promote, retry-all, clean, purge;
* `read_model` — jobs, counts, listings, events, throughput;
* `coordination` — leases, schedules, the worker registry, limits;
* `queries.sql` (named queries), `transitions` (outcome statements derived from
  `conveyor.lifecycle`) and `migrations/` (numbered schema migrations).
"""

from __future__ import annotations

from .connection import BUSY_TIMEOUT_MS, MEMORY_URL, parse_sqlite_url
from .coordination import SqliteCoordination
from .flow import SqliteFlow
from .flows import SqliteFlows
from .migrations import SCHEMA_VERSION
from .operations import SqliteOperations
from .read_model import SqliteReadModel

__all__ = ["BUSY_TIMEOUT_MS", "MEMORY_URL", "SCHEMA_VERSION", "SqliteEngine", "parse_sqlite_url"]


class SqliteEngine(SqliteFlows, SqliteFlow, SqliteOperations, SqliteReadModel, SqliteCoordination):
    """Jobs in one SQLite file shared by the processes of one machine, or (``memory://``)
    in a private in-memory database that is not durable.

    Args:
        url: ``sqlite:///relative.db``, ``sqlite:////absolute.db`` or ``memory://``.
        clock: decides due times and lease deadlines (tests pass a `FakeClock`).
        events_maxlen: events kept per queue (older ones are trimmed in batches).

    Raises:
        ConfigError: the URL is malformed.
    """
