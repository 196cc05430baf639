"""The hot-path Redis connection (engines/redis/lane.py) against a real redis-server:
ordering, error replies, AUTH/SELECT, a restart and a server that stops answering."""

from __future__ import annotations

import asyncio
import os
import signal

import pytest
import redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ResponseError

from conveyor.engines.redis.lane import Lane
from tests.conftest import RedisServer


def lane(url: str, *, timeout: float = 5.0) -> Lane:
    return Lane(url, connect_timeout=2.0, timeout=timeout)


async def test_concurrent_calls_get_their_own_replies_in_order(private_redis: RedisServer) -> None:
    hot = lane(private_redis.url)
    replies = await asyncio.gather(*(hot.call("INCR", f"k{i % 3}") for i in range(300)))
    per_key: dict[int, list[int]] = {0: [], 1: [], 2: []}
    for i, reply in enumerate(replies):
        per_key[i % 3].append(reply)
    assert all(values == list(range(1, 101)) for values in per_key.values())
    many = await hot.call_many([("SET", "a", "1"), ("INCR", "a"), ("GET", "a")])
    assert many == ["OK", 2, "2"]
    hot.close()


async def test_a_call_sent_while_one_is_in_flight_leaves_with_the_next_batch(
    private_redis: RedisServer,
) -> None:
    """On an idle connection a call is written at once; one sent while it is in flight
    waits for the loop iteration's batch. So a worker's two exchanges, sent in the same
    iteration, leave apart and are answered apart: in one write they were answered in one,
    and worker and Redis took turns for the whole run (issue 15, point 5: W1 with 200+
    slots was a third slower than with 100; bench/RESULTS.md, branch `concurrency`)."""
    hot = lane(private_redis.url)
    await hot.call("PING")  # connected
    loop = asyncio.get_running_loop()
    unwritten: list[int] = []

    def look() -> None:
        assert hot._proto is not None
        unwritten.append(len(hot._proto.out))

    first = asyncio.create_task(hot.call("INCR", "n"))
    loop.call_soon(look)  # runs right after that task's first step
    second = asyncio.create_task(hot.call("INCR", "n"))
    loop.call_soon(look)
    assert await asyncio.gather(first, second) == [1, 2]
    assert unwritten == [0, 1]
    hot.close()


async def test_error_replies_are_redis_py_exceptions(private_redis: RedisServer) -> None:
    hot = lane(private_redis.url)
    with pytest.raises(NoScriptError):
        await hot.call("EVALSHA", "0" * 40, 0)
    replies = await hot.call_many([("INCR", "x"), ("HGET", "x", "f"), ("INCR", "x")])
    assert replies[0] == 1 and isinstance(replies[1], ResponseError) and replies[2] == 2
    hot.close()


async def test_password_and_database_from_the_url(private_redis: RedisServer) -> None:
    admin = redis.Redis(port=private_redis.port)
    admin.config_set("requirepass", "s3cret")
    url = f"redis://:s3cret@127.0.0.1:{private_redis.port}/3"
    hot = lane(url)
    await hot.call("SET", "where", "db3")
    authed = redis.Redis(port=private_redis.port, password="s3cret", db=3)
    assert authed.get("where") == b"db3"
    hot.close()
    wrong = lane(f"redis://:nope@127.0.0.1:{private_redis.port}/0")
    with pytest.raises(RedisConnectionError, match="refused the connection set-up"):
        await wrong.call("PING")


async def test_restart_fails_calls_in_flight_then_reconnects(private_redis: RedisServer) -> None:
    hot = lane(private_redis.url)
    assert await hot.call("PING") == "PONG"
    private_redis.kill()
    with pytest.raises(RedisConnectionError):
        await hot.call("PING")  # the old socket is dead, the new one is refused
    private_redis.start()
    assert await hot.call("PING") == "PONG"
    hot.close()


@pytest.mark.fault
async def test_a_server_that_stops_answering_times_the_call_out(
    private_redis: RedisServer,
) -> None:
    hot = lane(private_redis.url, timeout=0.3)
    assert await hot.call("PING") == "PONG"
    assert private_redis.proc is not None
    os.kill(private_redis.proc.pid, signal.SIGSTOP)
    try:
        with pytest.raises(RedisConnectionError, match="did not reply within"):
            await asyncio.wait_for(hot.call("PING"), 10)
    finally:
        os.kill(private_redis.proc.pid, signal.SIGCONT)
    assert await hot.call("PING") == "PONG"  # a fresh connection
    hot.close()


@pytest.mark.fault
async def test_url_timeouts_reach_the_lane_and_fail_an_enqueue(
    private_redis: RedisServer,
) -> None:
    """`?socket_timeout=` bounds how long an enqueue waits on a frozen Redis (issue 13,
    item 3: it used to be a fixed 30 s the URL could not change)."""
    from conveyor import EngineUnavailable
    from tests.apps.probe import probe_app

    app = probe_app(f"{private_redis.url}?socket_timeout=0.3&socket_connect_timeout=0.5")
    await app.connect()
    await app.enqueue("probe", {})
    assert private_redis.proc is not None
    os.kill(private_redis.proc.pid, signal.SIGSTOP)
    try:
        # Bounded well below the default of 5 s: only the URL's 0.3 s can make it.
        with pytest.raises(EngineUnavailable, match=r"did not reply within 0\.3 s"):
            await asyncio.wait_for(app.enqueue("probe", {}), 3)
    finally:
        os.kill(private_redis.proc.pid, signal.SIGCONT)
    await app.close()


def test_url_timeouts_default_to_a_few_seconds_and_are_validated() -> None:
    from conveyor import ConfigError
    from conveyor.engines.redis.lane import url_timeouts

    assert url_timeouts("redis://h:6379/0") == (2.0, 5.0)
    assert url_timeouts("redis://h/0?socket_timeout=1.5&socket_connect_timeout=0.2") == (0.2, 1.5)
    for bad in ("0", "-1", "soon", "inf"):
        with pytest.raises(ConfigError, match=r"socket_timeout=.*use seconds > 0"):
            url_timeouts(f"redis://h/0?socket_timeout={bad}")


async def test_a_prefixed_call_is_the_whole_command(private_redis: RedisServer) -> None:
    """`call_prefixed` sends the packed prefix and the tail as one command."""
    from conveyor.engines.redis.lane import pack_prefix

    hot = lane(private_redis.url)
    prefix = pack_prefix(("RPUSH", "list"))
    assert await hot.call_prefixed(prefix, ["a"]) == 1
    assert await hot.call_prefixed(prefix, ["b", 3, "ü"]) == 4
    assert await hot.call("LRANGE", "list", 0, -1) == ["a", "b", "3", "ü"]
    hot.close()


async def test_single_enqueue_after_the_scripts_are_gone(private_redis: RedisServer) -> None:
    """Redis restarted without its scripts (SCRIPT FLUSH): the single enqueue, whose
    EVALSHA prefix is packed once per queue, loads the script and stores the job once."""
    from conveyor import Conveyor, JobState

    app = Conveyor(private_redis.url)

    @app.task("t", queue="q")
    async def t(job: object) -> None: ...

    await app.enqueue("t", {"i": 0})  # the queue is known and its prefix packed
    redis.Redis(port=private_redis.port).script_flush()
    job = await app.enqueue("t", {"i": 1})
    assert job.state == JobState.PENDING
    assert (await app.counts("q")).pending == 2
    await app.close()
