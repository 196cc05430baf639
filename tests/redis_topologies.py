"""Private Redis Cluster and Sentinel deployments on loopback, for the tests.

`ClusterServers` starts N masters and N replicas (`redis-server --cluster-enabled yes`,
then `redis-cli --cluster create --cluster-replicas 1`); `SentinelServers` starts a
master, a replica and three sentinels. Both live in a temporary directory on free
ports, may lose a node to `kill -9` (failover tests), and are torn down by `stop()`.
They need only redis-server and redis-cli, which scripts/test installs.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from tests.conftest import REDIS_SERVER, RedisServer, free_port

REDIS_CLI = shutil.which("redis-cli")


def command(port: int, *args: str, timeout: float = 2.0) -> str:
    """One redis-cli command against 127.0.0.1:`port`; its output ('' when unreachable)."""
    assert REDIS_CLI, "redis-cli is not installed (scripts/test installs it)"
    try:
        out = subprocess.run(
            [REDIS_CLI, "-h", "127.0.0.1", "-p", str(port), *args],
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        return ""
    return out.stdout


Deployment = TypeVar("Deployment", "ClusterServers", "SentinelServers")


@contextmanager
def running(deployment: Deployment) -> Iterator[Deployment]:
    """`deployment` started, and stopped (every process of it) however the block ends."""
    try:
        deployment.start()
        yield deployment
    finally:
        deployment.stop()


def wait_until(what: str, check: object, timeout: float = 30.0) -> None:
    """Poll `check()` (a callable returning a truthy value) until true or fail."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():  # type: ignore[operator]
            return
        time.sleep(0.1)
    raise RuntimeError(f"timed out waiting for {what}")


class ClusterServers:
    """`masters` masters with one replica each, on loopback; `url` is a
    `redis+cluster://` URL naming every node."""

    def __init__(self, directory: Path, *, masters: int = 3, node_timeout_ms: int = 1000) -> None:
        self.directory = directory
        self.masters = masters
        self.node_timeout_ms = node_timeout_ms
        self.nodes: list[RedisServer] = []

    @property
    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{n.port}" for n in self.nodes if n.proc is not None)
        return f"redis+cluster://{hosts}/"

    def start(self) -> None:
        assert REDIS_SERVER and REDIS_CLI, "redis-server/redis-cli missing (scripts/test)"
        for i in range(self.masters * 2):
            node_dir = self.directory / f"node{i}"
            node_dir.mkdir(parents=True, exist_ok=True)
            server = RedisServer(node_dir, appendonly=False)
            server.extra_args = [
                *("--cluster-enabled", "yes"),
                *("--cluster-config-file", f"nodes-{server.port}.conf"),
                # The bus port defaults to port + 10000, which may be taken or > 65535.
                *("--cluster-port", str(free_port())),
                *("--cluster-node-timeout", str(self.node_timeout_ms)),
                # A replica with stale data may still take over: the test kills masters.
                *("--cluster-replica-validity-factor", "0"),
                *("--appendfsync", "everysec"),
            ]
            server.start()
            self.nodes.append(server)
        addresses = [f"127.0.0.1:{n.port}" for n in self.nodes]
        subprocess.run(
            [
                REDIS_CLI,
                "--cluster",
                "create",
                *addresses,
                "--cluster-replicas",
                "1",
                "--cluster-yes",
            ],
            check=True,
            capture_output=True,
            timeout=60,
        )
        wait_until("the cluster to be ok on every node", self._all_ok)
        wait_until("every master to have an online replica", self._replicated)

    def _replicated(self) -> bool:
        return all(
            "state=online" in command(port, "INFO", "replication") for port in self.master_ports()
        )

    def _all_ok(self) -> bool:
        for node in self.nodes:
            if node.proc is None:
                continue
            info = command(node.port, "CLUSTER", "INFO")
            if "cluster_state:ok" not in info or "cluster_known_nodes:" not in info:
                return False
            known = int(info.split("cluster_known_nodes:")[1].split()[0])
            if known < len(self.nodes):
                return False
        return True

    def master_ports(self) -> list[int]:
        """Ports of the live masters (as the first live node sees them)."""
        for node in self.nodes:
            if node.proc is None:
                continue
            out = command(node.port, "CLUSTER", "NODES")
            ports = []
            for line in out.splitlines():
                fields = line.split()
                if len(fields) > 2 and "master" in fields[2] and "fail" not in fields[2]:
                    ports.append(int(fields[1].split("@")[0].rsplit(":", 1)[1]))
            return ports
        return []

    def owner(self, key: str) -> tuple[int, str]:
        """(port, node id) of the live master that serves `key`'s slot."""
        from redis.crc import key_slot

        slot = key_slot(key.encode())
        live = next(n for n in self.nodes if n.proc is not None)
        for line in command(live.port, "CLUSTER", "NODES").splitlines():
            fields = line.split()
            if len(fields) < 9 or "master" not in fields[2] or "fail" in fields[2]:
                continue
            for span in fields[8:]:
                if span.startswith("["):  # a slot being migrated: "[slot->-id]"
                    continue
                low, _, high = span.partition("-")
                if int(low) <= slot <= int(high or low):
                    return int(fields[1].split("@")[0].rsplit(":", 1)[1]), fields[0]
        raise RuntimeError(f"no live master serves slot {slot}")

    def reshard(self, source: str, target: str, slots: int) -> None:
        """Move `slots` slots (the lowest of `source`'s) to `target` with redis-cli, keys
        and all, while clients keep working (MIGRATING/IMPORTING, ASK, then MOVED)."""
        live = next(n for n in self.nodes if n.proc is not None)
        subprocess.run(
            [
                REDIS_CLI,
                "--cluster",
                "reshard",
                f"127.0.0.1:{live.port}",
                "--cluster-from",
                source,
                "--cluster-to",
                target,
                "--cluster-slots",
                str(slots),
                "--cluster-yes",
                "--cluster-pipeline",
                "5",
            ],
            check=True,
            capture_output=True,
            timeout=120,
        )

    def node(self, port: int) -> RedisServer:
        return next(n for n in self.nodes if n.port == port)

    def _nodes(self, port: int) -> list[list[str]]:
        """CLUSTER NODES as `port` sees it, one list of fields per node."""
        return [ln.split() for ln in command(port, "CLUSTER", "NODES").splitlines() if ln.strip()]

    def kill_master_and_wait_failover(self, port: int, timeout: float = 30.0) -> None:
        """kill -9 the master on `port` and wait until one of its replicas has been
        promoted and every live node routes the slots to it.

        Not "the killed node is no longer listed as a live master": a node that stops
        answering is first only suspected (`fail?`, PFAIL) for `cluster-node-timeout`
        while `cluster_state` stays ok, and nothing is promoted until the majority
        agrees (`fail`) and the replica wins its election. Starting the killed node
        again in that window (it has no persistence here) made it come back as the
        master, empty, and its replica resync from it: every write of its slots
        gone, WAIT or not (issue 17: the "lost" acknowledged calls on Cluster).
        """
        rows = self._nodes(port)
        me = next(f for f in rows if "myself" in f[2])
        replicas = [
            int(f[1].split("@")[0].rsplit(":", 1)[1])
            for f in rows
            if "slave" in f[2] and f[3] == me[0] and "fail" not in f[2]
        ]
        assert replicas, f"the master on port {port} has no live replica to promote"
        self.node(port).kill()

        def promoted() -> bool:
            if not any("role:master" in command(r, "INFO", "replication") for r in replicas):
                return False
            for node in self.nodes:
                if node.proc is None:
                    continue
                dead = [f for f in self._nodes(node.port) if f[0] == me[0]]
                # The killed node still listed with slots: this node routes to it.
                if not dead or len(dead[0]) > 8:
                    return False
            return self._all_ok()

        wait_until(
            "a replica to be promoted and serve the killed master's slots", promoted, timeout
        )

    def stop(self) -> None:
        for node in self.nodes:
            node.kill()


_SENTINEL_CONF = """port {port}
bind 127.0.0.1
dir {dir}
sentinel monitor {name} 127.0.0.1 {master} 2
sentinel down-after-milliseconds {name} 1000
sentinel failover-timeout {name} 5000
sentinel parallel-syncs {name} 1
"""


class SentinelServers:
    """One master, one replica and three sentinels watching them as `name`."""

    def __init__(self, directory: Path, name: str = "conveyor") -> None:
        self.directory = directory
        self.name = name
        self.master = RedisServer(directory / "master", appendonly=False)
        self.replica = RedisServer(directory / "replica", appendonly=False)
        self.sentinel_ports = [free_port() for _ in range(3)]
        self.sentinels: list[subprocess.Popen[bytes]] = []

    @property
    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{p}" for p in self.sentinel_ports)
        return f"redis+sentinel://{hosts}/{self.name}/0"

    def start(self) -> None:
        assert REDIS_SERVER, "redis-server is not installed (scripts/test installs it)"
        for server in (self.master, self.replica):
            server.directory.mkdir(parents=True, exist_ok=True)
        self.master.start()
        self.replica.extra_args = ["--replicaof", "127.0.0.1", str(self.master.port)]
        self.replica.start()
        wait_until(
            "the replica to sync",
            lambda: "master_link_status:up" in command(self.replica.port, "INFO", "replication"),
        )
        for port in self.sentinel_ports:
            conf = self.directory / f"sentinel-{port}.conf"
            conf.write_text(
                _SENTINEL_CONF.format(
                    port=port, dir=self.directory, name=self.name, master=self.master.port
                )
            )
            proc = subprocess.Popen(
                [REDIS_SERVER, str(conf), "--sentinel"],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            self.sentinels.append(proc)
        for port in self.sentinel_ports:
            wait_until(
                f"sentinel {port} to see the replica and its peers",
                lambda p=port: self._sentinel_ready(p),  # type: ignore[misc]
            )

    def _sentinel_ready(self, port: int) -> bool:
        out = command(port, "SENTINEL", "MASTER", self.name)
        lines = out.splitlines()
        fields = dict(zip(lines[::2], lines[1::2], strict=False))
        return fields.get("num-slaves") == "1" and fields.get("num-other-sentinels") == "2"

    def master_port(self) -> int | None:
        out = command(self.sentinel_ports[0], "SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.name)
        lines = out.split()
        return int(lines[1]) if len(lines) == 2 else None

    def kill_master_and_wait_failover(self, timeout: float = 30.0) -> None:
        """kill -9 the master and wait until the sentinels promoted the replica."""
        self.master.kill()
        wait_until(
            "the sentinels to promote the replica",
            lambda: (
                self.master_port() == self.replica.port
                and "role:master" in command(self.replica.port, "INFO", "replication")
            ),
            timeout,
        )

    def stop(self) -> None:
        for proc in self.sentinels:
            proc.kill()
            proc.wait(10)
        self.sentinels.clear()
        self.master.kill()
        self.replica.kill()


def raw_client(url: str, **options: object) -> Any:
    """A plain redis-py client for an engine URL, under Conveyor (tests that write or
    read keys directly): a cluster client for `redis+cluster://`, the sentinels' master
    for `redis+sentinel://`, else one server."""
    import redis.asyncio as aioredis
    from redis.asyncio.cluster import RedisCluster

    base = url.split("?")[0]
    if base.startswith("redis+sentinel://"):
        from redis.asyncio.sentinel import Sentinel

        hosts, name, db = base.removeprefix("redis+sentinel://").split("/")[:3]
        sentinels = [(h.rsplit(":", 1)[0], int(h.rsplit(":", 1)[1])) for h in hosts.split(",")]
        return Sentinel(sentinels).master_for(name, db=int(db or 0), **options)
    if base.startswith("redis+cluster://"):
        seed = base.removeprefix("redis+cluster://").split(",")[0].rstrip("/")
        return RedisCluster.from_url(f"redis://{seed}", **options)
    return aioredis.Redis.from_url(base, **options)
