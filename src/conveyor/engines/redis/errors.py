"""Redis error replies, classified once for the lane and the engine.

A Redis server answers a command it cannot run now with an error reply, whose first word
is its code. Conveyor sorts every code into one of three kinds:

```
NOSCRIPT                      the script cache is empty (Redis restarted): load it and
                              send the call again (the call did not run)
LOADING BUSY MASTERDOWN       the server is there but cannot serve now (loading its data,
READONLY TRYAGAIN CLUSTERDOWN  a script running too long, a replica or a failover, a slot
                              moving): EngineUnavailable, retry with backoff
OOM                           `maxmemory` reached under `noeviction`: EngineFull
anything else (ERR, WRONGTYPE a bug or foreign data: left as redis-py's ResponseError
 a script's own error)
```

redis-py names some codes itself (LOADING -> BusyLoadingError, READONLY -> ReadOnlyError,
OOM -> OutOfMemoryError, each with the code cut off its message); the lane keeps the
whole text. `classify` reads both.

Which scripts may write past `maxmemory` is decided here too (`script_flags`): the ones
a worker or the scheduler needs to finish, hand back and keep leases on jobs already
accepted. Producers' scripts keep Redis's default: refused with OOM while memory is full,
so a full Redis stops new work and lets the fleet drain what it holds.
"""

from __future__ import annotations

from redis.exceptions import (
    BusyLoadingError,
    NoScriptError,
    OutOfMemoryError,
    ReadOnlyError,
    ResponseError,
)

from ...errors import ConfigError, EngineFull, EngineUnavailable

TRANSIENT_CODES = frozenset(
    {"LOADING", "BUSY", "MASTERDOWN", "READONLY", "TRYAGAIN", "CLUSTERDOWN"}
)
FULL_CODES = frozenset({"OOM"})

# Scripts that run whatever Redis's memory use (`#!lua flags=allow-oom`): acknowledging
# outcomes, renewing leases, recovering expired ones, staying registered, cleaning up and
# scheduler leadership. Each writes little beyond what it frees or replaces, and refusing
# them would turn a full Redis into re-run jobs (leases expiring) and a stalled fleet.
ALLOW_OOM = frozenset(
    {
        "exchange",
        "heartbeat",
        "recover",
        "clean",
        "purge",
        "register_worker",
        "unregister_worker",
        "lease_acquire",
        "lease_renew",
        "lease_release",
    }
)


FLAGS_SINCE = (7, 0)  # script flags (`#!lua flags=...`) exist from Redis 7.0 on


def script_flags(name: str) -> str:
    """The flags script `name` declares ("" when it keeps Redis's defaults)."""
    return "allow-oom" if name in ALLOW_OOM else ""


def with_flags(name: str, text: str, server_version: tuple[int, ...]) -> str:
    """Script `name`'s text with its flags, when the server knows flags (Redis 7+).

    On Redis 6.2 the text is returned unchanged (a shebang would not compile there):
    worker scripts are then refused with OOM like any other, and the worker keeps its
    outcomes and retries them with backoff until memory frees up.
    """
    flags = script_flags(name)
    if not flags or server_version < FLAGS_SINCE:
        return text
    if text.startswith("#!lua"):  # already a shebang (e.g. a test's strict mode)
        first, _, rest = text.partition("\n")
        return f"{first} flags={flags}\n{rest}"
    return f"#!lua flags={flags}\n{text}"


def server_version(info: dict[str, object]) -> tuple[int, ...]:
    """`redis_version` of an INFO server reply as a tuple ((0,) when unreadable)."""
    try:
        return tuple(int(p) for p in str(info.get("redis_version", "0")).split(".")[:2])
    except ValueError:
        return (0,)


def reply_error(text: str) -> ResponseError:
    """An error reply's text as redis-py's exception (NOSCRIPT: load the script again)."""
    return NoScriptError(text) if text.startswith("NOSCRIPT") else ResponseError(text)


def code_of(exc: BaseException) -> str | None:
    """The Redis error code of `exc` (`LOADING`, `OOM`, ...), None for other errors."""
    if isinstance(exc, BusyLoadingError):
        return "LOADING"
    if isinstance(exc, OutOfMemoryError):
        return "OOM"
    if isinstance(exc, ReadOnlyError):
        return "READONLY"
    if isinstance(exc, NoScriptError):
        return "NOSCRIPT"
    if isinstance(exc, ResponseError):
        word = str(exc).split(" ", 1)[0]
        return word if word.isupper() else None
    return None


def classify(exc: BaseException, url: str) -> EngineUnavailable | None:
    """The Conveyor error for a Redis error reply, None when it is not the server's state.

    Args:
        exc: what redis-py or the lane raised.
        url: the engine URL to name (password already hidden).

    Returns:
        `EngineFull` for OOM, `EngineUnavailable` for the transient codes, else None
        (the caller re-raises `exc` unchanged).
    """
    code = code_of(exc)
    if code in FULL_CODES:
        return EngineFull(
            f"Redis at {url} is full (maxmemory reached): new jobs are refused until "
            "memory frees up; running jobs still finish. Raise maxmemory, lower retention "
            "(--keep-completed) or clean finished jobs, then retry"
        )
    if code in TRANSIENT_CODES:
        return EngineUnavailable(
            f"Redis at {url} cannot serve now ({code}: {_message(exc, code)}); "
            "retry with backoff (loading its data, a long script, or a failover)"
        )
    return None


def misrouted(exc: ResponseError, url: str) -> Exception:
    """A MOVED/ASK reply on a URL that is not `redis+cluster://` (the server became a
    cluster node after connect checked it) as a `ConfigError` naming the fix; any other
    reply is returned unchanged."""
    if code_of(exc) not in ("MOVED", "ASK"):
        return exc
    return ConfigError(
        f"{url} answered {exc}: it is a Redis Cluster node; use a redis+cluster://host:port/ "
        "URL (with the same ?prefix=), which follows slots to their masters"
    )


def _message(exc: BaseException, code: str) -> str:
    text = str(exc)
    return text[len(code) + 1 :] if text.startswith(code + " ") else text
