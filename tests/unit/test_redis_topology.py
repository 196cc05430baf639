"""Redis engine URLs (engines/redis/topology.py) and the errors of a misrouted call:
parsing only, no server."""

from __future__ import annotations

import pytest
from redis.exceptions import ResponseError

from conveyor.engines.redis.errors import misrouted
from conveyor.engines.redis.topology import parse_url
from conveyor.errors import ConfigError


def test_single_server_url_keeps_its_query_for_redis_py() -> None:
    t = parse_url("redis://:pw@h:6380/2?prefix=app&socket_timeout=3&replicas=1")
    assert (t.kind, t.prefix, t.db, t.replicas, t.replica_timeout_ms) == (
        "single",
        "app",
        2,
        1,
        1000,
    )
    assert t.redis_url == "redis://:pw@h:6380/2?socket_timeout=3"
    assert "pw" not in t.shown


def test_cluster_url_lists_its_seed_nodes() -> None:
    t = parse_url(
        "rediss+cluster://u:s3cret@a:7000,b:7001,[::1]:7002/?prefix=x&replica_timeout=0.5"
    )
    assert t.kind == "cluster" and t.tls
    assert t.nodes == (("a", 7000), ("b", 7001), ("::1", 7002))
    assert (t.username, t.password, t.prefix, t.replica_timeout_ms) == ("u", "s3cret", "x", 500)
    assert t.redis_url.startswith("rediss://u:s3cret@a:7000/0")
    assert "s3cret" not in t.shown


def test_sentinel_url_names_master_and_db() -> None:
    t = parse_url("redis+sentinel://:pw@s1,s2:26380/mymaster/3?sentinel_password=sp")
    assert t.kind == "sentinel"
    assert t.nodes == (("s1", 26379), ("s2", 26380))
    assert (t.master, t.db, t.password, t.sentinel_password) == ("mymaster", 3, "pw", "sp")
    assert "sentinel_password" not in t.redis_url
    assert "sp" not in t.shown.replace("sentinel_password", "") and "pw" not in t.shown


@pytest.mark.parametrize(
    ("url", "needle"),
    [
        ("http://h/", "not a Redis URL"),
        ("redis+sentinel://h:26379", "does not name the master"),
        ("redis+sentinel://h:26379/m/x", "does not name the master"),
        ("redis+cluster://h:7000/3", "db 0 only"),
        ("redis+cluster://h:99999/", "invalid port"),
        ("redis+cluster://,h:1/", "empty host"),
        ("redis://h/0?replicas=1.5", "use 0, 1, 2"),
        ("redis://h/0?replicas=-1", "number >= 0"),
        ("redis://h/0?replicas=1&replica_timeout=0", "must be > 0"),
        ("redis://h/0?prefix=a{b}", "prefix"),
    ],
)
def test_bad_urls_are_config_errors_naming_the_fix(url: str, needle: str) -> None:
    with pytest.raises(ConfigError, match=needle.replace("+", r"\+")):
        parse_url(url)


def test_a_moved_reply_without_cluster_url_names_redis_cluster() -> None:
    error = misrouted(ResponseError("MOVED 7774 127.0.0.1:7102"), "redis://h:7100/0")
    assert isinstance(error, ConfigError) and "redis+cluster://" in str(error)
    other = ResponseError("ERR something")
    assert misrouted(other, "redis://h/0") is other
