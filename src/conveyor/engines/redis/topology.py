"""Which Redis deployment an engine URL names, and the redis-py client for it.

```
redis://[user:pw@]host:6379/0           one server (or a Sentinel-less replica pair)
rediss://...                             the same over TLS
redis+cluster://h:p[,h:p...]/            Redis Cluster: any reachable nodes seed the
rediss+cluster://...                     slot map; keys route by their hash tag
redis+sentinel://h:26379[,h:p...]/NAME/DB  the master the sentinels call NAME, found
                                            again by asking them after a failover
```

Every URL takes `?prefix=` (key namespace), `?socket_connect_timeout=` /
`?socket_timeout=` (seconds), and `?replicas=N&replica_timeout=S`: acknowledge an
enqueue or a worker's outcomes only once N replicas have them (`WAIT N`, see
replicas.py). A Sentinel URL also takes `?sentinel_password=` (the sentinels' own AUTH;
the URL's user:password is the master's). The rest of the query goes to redis-py (e.g.
`ssl_ca_certs=`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import ExponentialWithJitterBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from ...errors import ConfigError

Kind = Literal["single", "cluster", "sentinel"]

_SCHEMES: dict[str, tuple[Kind, bool]] = {
    "redis": ("single", False),
    "rediss": ("single", True),
    "redis+cluster": ("cluster", False),
    "rediss+cluster": ("cluster", True),
    "redis+sentinel": ("sentinel", False),
}
_EXAMPLES = (
    "redis://host:6379/0, rediss://host:6380/0, redis+cluster://host:7000,host:7001/ "
    "or redis+sentinel://host:26379,host:26380/MASTER_NAME/0"
)
# Sentinel: a connection refused while the sentinels promote a replica is retried (the
# command never ran); a read timeout is not (a script may have run).
_RETRIED: tuple[type[RedisError], ...] = (RedisConnectionError,)
REPLICA_TIMEOUT_S = 1.0  # default `?replica_timeout=`: how long WAIT may take


@dataclass(frozen=True)
class Target:
    """A parsed engine URL.

    `redis_url` is a `redis://`/`rediss://` URL redis-py understands, without Conveyor's
    own parameters: for a single server the server itself; for a cluster or Sentinel
    one seed node (its query carries the shared options: timeouts, TLS files).
    """

    kind: Kind
    redis_url: str
    prefix: str
    shown: str  # the URL with its password hidden, for messages
    tls: bool = False
    nodes: tuple[tuple[str, int], ...] = ()  # cluster seeds / sentinels
    master: str = ""  # Sentinel's master name
    sentinel_password: str | None = None  # `?sentinel_password=`: AUTH for the sentinels
    db: int = 0
    username: str | None = None
    password: str | None = None
    replicas: int = 0
    replica_timeout_ms: int = int(REPLICA_TIMEOUT_S * 1000)
    options: dict[str, str] = field(default_factory=dict)  # the rest of the query


def _hosts(netloc: str, default_port: int, url: str) -> tuple[tuple[str, int], ...]:
    out = []
    for part in netloc.split(","):
        host, port = part, default_port
        if part.startswith("["):  # [::1]:7000
            host, _, rest = part[1:].partition("]")
            if rest.startswith(":"):
                port = _port(rest[1:], url)
        elif ":" in part:
            host, raw = part.rsplit(":", 1)
            port = _port(raw, url)
        if not host:
            raise ConfigError(f"{url!r} names an empty host: use {_EXAMPLES}")
        out.append((host, port))
    return tuple(out)


def _port(raw: str, url: str) -> int:
    if not raw.isdigit() or not 0 < int(raw) < 65536:
        raise ConfigError(f"{url!r} has an invalid port {raw!r}: use {_EXAMPLES}")
    return int(raw)


def _number(options: dict[str, str], name: str, default: float, url: str) -> float:
    raw = options.pop(name, None)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value >= 0 or value == float("inf"):
        raise ConfigError(f"{name}={raw!r} in {url!r} is invalid: use a number >= 0")
    return value


def parse_url(url: str) -> Target:
    """The deployment `url` names.

    Raises:
        ConfigError: not a Redis URL, an unusable prefix, a bad host list, a Sentinel
            URL without a master name, or a bad `replicas` / `replica_timeout`.
    """
    parts = urlsplit(url)
    if parts.scheme not in _SCHEMES:
        raise ConfigError(f"{url!r} is not a Redis URL: use {_EXAMPLES}")
    kind, tls = _SCHEMES[parts.scheme]
    options = dict(parse_qsl(parts.query, keep_blank_values=True))
    prefix = options.pop("prefix", "conveyor")
    if not prefix or any(c in prefix for c in "{} \t\r\n"):
        raise ConfigError(
            f"Redis key prefix {prefix!r} is unusable: use letters, digits, '_', '-', '.' "
            "or ':', e.g. ?prefix=conveyor"
        )
    replicas = _number(options, "replicas", 0, url)
    if replicas != int(replicas):
        raise ConfigError(f"replicas={replicas!r} in {url!r} is invalid: use 0, 1, 2...")
    timeout_s = _number(options, "replica_timeout", REPLICA_TIMEOUT_S, url)
    if replicas and timeout_s <= 0:
        # WAIT 1 0 blocks forever: a lost replica would stop every producer.
        raise ConfigError(f"replica_timeout must be > 0 seconds in {url!r}, e.g. 1")
    userinfo, _, hostpart = parts.netloc.rpartition("@")
    username = password = None
    if userinfo:
        user, _, pw = userinfo.partition(":")
        username, password = (unquote(user) or None), (unquote(pw) if pw else None)
    shown = url
    if password is not None:
        masked = f"{username or ''}:***@"
        shown = urlunsplit(parts._replace(netloc=masked + hostpart))
    if "sentinel_password" in options:  # never shown in messages either
        shown_query = [
            (k, "***" if k == "sentinel_password" else v)
            for k, v in parse_qsl(parts.query, keep_blank_values=True)
        ]
        shown = urlunsplit(urlsplit(shown)._replace(query=urlencode(shown_query)))
    common = dict(
        prefix=prefix,
        shown=shown,
        tls=tls,
        username=username,
        password=password,
        replicas=int(replicas),
        replica_timeout_ms=max(1, int(timeout_s * 1000)),
        options=options,
    )
    query = urlencode(options)
    if kind == "single":
        redis_url = urlunsplit(parts._replace(query=query))
        path = parts.path.strip("/")
        return Target(kind, redis_url, db=int(path) if path.isdigit() else 0, **common)  # type: ignore[arg-type]
    if not hostpart:
        raise ConfigError(f"{url!r} names no host: use {_EXAMPLES}")
    default = 26379 if kind == "sentinel" else 6379
    nodes = _hosts(hostpart, default, url)
    master, db = "", 0
    if kind == "sentinel":
        segments = [s for s in parts.path.split("/") if s]
        if not segments or len(segments) > 2 or (len(segments) == 2 and not segments[1].isdigit()):
            raise ConfigError(
                f"{url!r} does not name the master: use redis+sentinel://host:26379/"
                "MASTER_NAME/0 (the name in `sentinel monitor`, then the db)"
            )
        master = unquote(segments[0])
        db = int(segments[1]) if len(segments) == 2 else 0
        common["sentinel_password"] = options.pop("sentinel_password", None)
        query = urlencode(options)
    elif parts.path.strip("/"):
        raise ConfigError(
            f"{url!r} names a database, which Redis Cluster does not have: use "
            "redis+cluster://host:7000,host:7001/?prefix=... (db 0 only)"
        )
    host, port = nodes[0]
    netloc = f"{_netloc_auth(username, password)}{host}:{port}"
    seed = urlunsplit(("rediss" if tls else "redis", netloc, f"/{db}", query, ""))
    return Target(kind, seed, nodes=nodes, master=master, db=db, **common)  # type: ignore[arg-type]


def _netloc_auth(username: str | None, password: str | None) -> str:
    from urllib.parse import quote

    if password is None:
        return ""
    return f"{quote(username or '', safe='')}:{quote(password, safe='')}@"


def client_options(target: Target) -> dict[str, Any]:
    """redis-py keyword arguments for the URL's extra query (TLS files and the like),
    parsed as redis-py parses them for `from_url`."""
    from redis.asyncio.connection import parse_url as redis_parse_url

    if not target.options:
        return {}
    parsed: dict[str, Any] = dict(redis_parse_url(f"redis://x/0?{urlencode(target.options)}"))
    for key in ("host", "port", "db", "username", "password", "path"):
        parsed.pop(key, None)
    return parsed


def cluster_client(target: Target, connect_timeout: float, timeout: float) -> RedisCluster:
    """redis-py's cluster client for a `redis+cluster://` URL (reads, operator calls,
    pub/sub and the slot map the hot-path lane routes by).

    redis-py follows MOVED/ASK and, on CLUSTERDOWN or a dead node, re-reads the slot map
    and retries (`cluster_error_retry_attempts`), so reads ride out a failover too.
    """
    return RedisCluster(
        startup_nodes=[ClusterNode(host, port) for host, port in target.nodes],
        decode_responses=True,
        username=target.username,
        password=target.password,
        ssl=target.tls,
        socket_connect_timeout=connect_timeout,
        socket_timeout=timeout,
        socket_keepalive=True,
        max_connections=1000,
        retry=Retry(ExponentialWithJitterBackoff(cap=1.0, base=0.05), 6),
        **client_options(target),
    )


def sentinel_client(
    target: Target, connect_timeout: float, timeout: float
) -> tuple[aioredis.Redis, Sentinel]:
    """A client for the master the sentinels name, and the sentinels (for the lane): the
    client's pool asks them for the master's address on every new connection, so after a
    failover the next connection goes to the promoted replica, and a connection to a
    demoted master is dropped (READONLY)."""
    sentinel = Sentinel(  # type: ignore[no-untyped-call]
        list(target.nodes),
        # The sentinels' own AUTH (`?sentinel_password=`), when they require one.
        sentinel_kwargs={
            "password": target.sentinel_password,
            "socket_connect_timeout": connect_timeout,
            "socket_timeout": timeout,
        },
        socket_connect_timeout=connect_timeout,
        socket_timeout=timeout,
    )
    client: aioredis.Redis = sentinel.master_for(
        target.master,
        db=target.db,
        decode_responses=True,
        username=target.username,
        password=target.password,
        socket_connect_timeout=connect_timeout,
        socket_timeout=timeout,
        socket_keepalive=True,
        retry=Retry(ExponentialWithJitterBackoff(cap=1.0, base=0.05), 6, supported_errors=_RETRIED),
        retry_on_error=list(_RETRIED),
        **client_options(target),
    )
    return client, sentinel
