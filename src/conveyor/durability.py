"""What the engine server's own settings mean for Conveyor's guarantees, checked at start.

Guarantee 1 (no acknowledged job is lost) holds on Redis only when Redis itself keeps
what it acknowledged and never deletes it on its own:

```
maxmemory-policy  noeviction            required: any other policy lets Redis delete keys
                                        (a pending index, a job hash) when memory is
                                        full, and jobs silently never run  -> ERROR
appendonly        yes                   a crash of Redis loses nothing acknowledged
                                        (appendfsync always) or about 1 s (everysec)
                  no                    a crash loses every job since the last RDB
                                        snapshot: not durable                -> WARNING
```

Workers, the API and the scheduler read these at start (`check_engine`), log what is
wrong with the fix, and with `CONVEYOR_REQUIRE_NOEVICTION=true` refuse to start under
an evicting policy. `status` and `/health/detailed` show them (`settings_document`).
Engines without a server (SQLite, memory) have nothing to check.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from .errors import ConfigError

log = logging.getLogger("conveyor.durability")

SAFE_POLICY = "noeviction"


@dataclass(frozen=True, slots=True)
class ServerSettings:
    """The durability-relevant settings of an engine server (None: could not be read)."""

    maxmemory_policy: str | None = None
    appendonly: str | None = None  # "yes" | "no"
    appendfsync: str | None = None  # "always" | "everysec" | "no"

    @property
    def evicting(self) -> bool:
        """Redis may delete keys on its own when memory is full."""
        return self.maxmemory_policy is not None and self.maxmemory_policy != SAFE_POLICY

    @property
    def durable(self) -> bool | None:
        """Acknowledged jobs survive a crash of the server (None: unknown)."""
        return None if self.appendonly is None else self.appendonly == "yes"

    def problems(self) -> list[tuple[int, str]]:
        """(log level, message naming the fix) for each setting that weakens a guarantee."""
        out: list[tuple[int, str]] = []
        if self.evicting:
            out.append(
                (
                    logging.ERROR,
                    f"Redis maxmemory-policy is {self.maxmemory_policy}: when memory is full "
                    "Redis deletes keys on its own, and jobs silently never run. Fix: "
                    "CONFIG SET maxmemory-policy noeviction (and set it in redis.conf)",
                )
            )
        if self.appendonly == "no":
            out.append(
                (
                    logging.WARNING,
                    "Redis AOF is off (appendonly no): a crash of Redis loses every job "
                    "since its last snapshot, so the engine is not durable. Fix: "
                    "CONFIG SET appendonly yes (appendfsync everysec or always)",
                )
            )
        return out

    def to_dict(self) -> dict[str, Any]:
        """The JSON shape of `status` and `/health/detailed` (`engine.server`)."""
        return {
            "maxmemory_policy": self.maxmemory_policy,
            "appendonly": self.appendonly,
            "appendfsync": self.appendfsync,
            "evicting": self.evicting,
            "problems": [message for _, message in self.problems()],
        }


# Engines are taken as `object`: engines/redis imports this module, so naming the engine
# protocol here (even for type checking only) would tie the two layers in a cycle.
def server_settings(engine: object) -> ServerSettings | None:
    """The settings `engine`'s server reported when it connected (None: no server, as
    for SQLite and memory, or not connected yet)."""
    # Only engines with a server have the attribute; it is not part of the protocol.
    value = getattr(engine, "server_settings", None)
    return value if isinstance(value, ServerSettings) else None


def settings_document(engine: object) -> dict[str, Any] | None:
    """`server_settings(engine)` as JSON, or None."""
    settings = server_settings(engine)
    return None if settings is None else settings.to_dict()


def check_engine(engine: object, *, role: str, require_noeviction: bool = False) -> None:
    """Log what the connected engine's server settings put at risk (see the module doc).

    Args:
        engine: a connected engine.
        role: who checks ("worker", "API", "scheduler"), for the log line.
        require_noeviction: refuse an evicting `maxmemory-policy` instead of logging it.

    Raises:
        ConfigError: `require_noeviction` and Redis may evict keys.
    """
    settings = server_settings(engine)
    if settings is None:
        return
    if settings.evicting and require_noeviction:
        raise ConfigError(
            f"{role} refuses to start: Redis maxmemory-policy is {settings.maxmemory_policy}, "
            "which deletes jobs when memory is full. Fix: CONFIG SET maxmemory-policy "
            "noeviction (or unset CONVEYOR_REQUIRE_NOEVICTION to only log this)"
        )
    for level, message in settings.problems():
        log.log(level, "%s: %s", role, message)
