"""Every Redis error reply is classified (engines/redis/errors.py): no I/O."""

from __future__ import annotations

import pytest
from redis.exceptions import (
    BusyLoadingError,
    NoScriptError,
    OutOfMemoryError,
    ReadOnlyError,
    ResponseError,
)

from conveyor import ConveyorError, EngineFull, EngineUnavailable
from conveyor.engines.redis.errors import classify, reply_error, with_flags

URL = "redis://127.0.0.1:6399/0"


@pytest.mark.parametrize(
    "text",
    [
        "LOADING Redis is loading the dataset in memory",
        "BUSY Redis is busy running a script. You can only call SCRIPT KILL or SHUTDOWN NOSAVE.",
        "MASTERDOWN Link with MASTER is down and replica-serve-stale-data is set to 'no'.",
        "READONLY You can't write against a read only replica.",
        "TRYAGAIN Multiple keys request during rehashing of slot",
        "CLUSTERDOWN The cluster is down",
    ],
)
def test_transient_replies_are_engine_unavailable(text: str) -> None:
    """As the lane sees them (whole text) and as redis-py does (its own class or text)."""
    for exc in (reply_error(text), ResponseError(text)):
        error = classify(exc, URL)
        assert type(error) is EngineUnavailable, text
        assert text.split()[0] in str(error) and "retry with backoff" in str(error)


@pytest.mark.parametrize(
    "exc",
    [
        BusyLoadingError("Redis is loading the dataset in memory"),  # redis-py cuts the code
        ReadOnlyError("You can't write against a read only replica."),
    ],
)
def test_redis_py_classes_are_classified_too(exc: Exception) -> None:
    assert type(classify(exc, URL)) is EngineUnavailable


@pytest.mark.parametrize(
    "exc",
    [
        reply_error("OOM command not allowed when used memory > 'maxmemory'. script: x"),
        OutOfMemoryError("command not allowed when used memory > 'maxmemory'."),
    ],
)
def test_oom_is_engine_full(exc: Exception) -> None:
    error = classify(exc, URL)
    assert isinstance(error, EngineFull) and isinstance(error, EngineUnavailable)
    assert isinstance(error, ConveyorError)
    assert "maxmemory" in str(error) and URL in str(error)


@pytest.mark.parametrize(
    "text",
    [
        "ERR wrong number of arguments for 'get' command",
        "WRONGTYPE Operation against a key holding the wrong kind of value",
        "ERR Error running script: attempt to compare nil with number",
        "NOSCRIPT No matching script. Please use EVAL.",
        "some lowercase text",
    ],
)
def test_bugs_and_noscript_are_left_alone(text: str) -> None:
    assert classify(reply_error(text), URL) is None


def test_noscript_reply_is_redis_py_noscript_error() -> None:
    assert isinstance(reply_error("NOSCRIPT No matching script."), NoScriptError)


def test_worker_scripts_may_write_past_maxmemory_and_producers_may_not() -> None:
    for name in ("exchange", "heartbeat", "register_worker", "recover", "clean"):
        assert with_flags(name, "return 1", (7, 0)) == "#!lua flags=allow-oom\nreturn 1", name
        assert with_flags(name, "#!lua\nreturn 1", (7, 2)) == "#!lua flags=allow-oom\nreturn 1"
        assert with_flags(name, "return 1", (6, 2)) == "return 1", "no shebang on Redis 6.2"
    for name in ("enqueue", "retry_job", "set_limits"):
        assert with_flags(name, "return 1", (7, 0)) == "return 1", name
