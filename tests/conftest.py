"""Shared fixtures: private redis-server processes, per-test SQLite files and prefixes,
per-test Postgres schemas.

Tests never touch the shared Redis on 6379: `redis_server` starts one on a free port
(session-wide), and every test gets its own key prefix, so tests can run in parallel.
Tests that stop or restart Redis use `private_redis` (a server of their own).

Postgres: `postgres_server` uses the server on 127.0.0.1:5432 (user postgres, trust)
or, when none answers, starts a private one (initdb in a temporary directory, a free
port); it creates one database per test session and drops it at the end, and every
test gets its own schema in it. Postgres tests never skip: a missing server fails.
"""

from __future__ import annotations

import os
import random
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from conveyor import Conveyor
from tests.apps.probe import probe_app

if TYPE_CHECKING:
    from tests.redis_topologies import ClusterServers, SentinelServers

REDIS_SERVER = shutil.which("redis-server")


# Below Linux's ephemeral range (32768-60999): a port picked there can be taken by any
# process's outgoing connection between the pick and the server's bind.
_PORTS = range(20_000, 32_000)


def free_port() -> int:
    """A loopback port nothing listens on now, outside the ephemeral range."""
    rng = random.Random()
    while True:
        port = rng.choice(_PORTS)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port


class RedisServer:
    """A redis-server child process we may stop and start again on the same port."""

    def __init__(
        self, directory: Path, *, appendonly: bool = False, extra_args: Sequence[str] = ()
    ) -> None:
        self.directory = directory
        self.port = free_port()
        self.appendonly = appendonly
        # More redis-server flags, e.g. for fault tests (may be changed between restarts).
        self.extra_args = list(extra_args)
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, *, loaded: bool = True) -> None:
        """Start and wait until it answers PING (`loaded=False`: until it answers at
        all, LOADING included, for tests of a restart with data to load)."""
        assert REDIS_SERVER, "redis-server is not installed (scripts/test installs it)"
        args = [
            REDIS_SERVER,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(self.directory),
            "--save",
            "",
            "--appendonly",
            "yes" if self.appendonly else "no",
            "--appendfsync",
            "always",
            *self.extra_args,
        ]
        log = self.directory / f"redis-{self.port}.log"
        with log.open("ab") as out:
            self.proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and self.proc.poll() is None:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as s:
                    s.sendall(b"PING\r\n")
                    reply = s.recv(16)
                    if reply.startswith(b"+PONG") or (not loaded and reply.startswith(b"-LOAD")):
                        return
            except OSError:
                time.sleep(0.05)
        tail = log.read_text("utf-8", "replace").strip().splitlines()[-3:]
        raise RuntimeError(f"redis-server on port {self.port} did not start: {tail}")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)
            self.proc = None

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(10)
            self.proc = None


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    if not REDIS_SERVER:
        pytest.fail("redis-server is not installed; run scripts/test, which installs it")
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of this test's own (may be stopped/restarted), AOF on."""
    if not REDIS_SERVER:
        pytest.fail("redis-server is not installed; run scripts/test, which installs it")
    server = RedisServer(tmp_path, appendonly=True)
    server.start()
    yield server
    server.kill()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """The shared private server with a key prefix unique to this test."""
    return f"{redis_server.url}?prefix=t{uuid.uuid4().hex[:10]}"


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClusterServers]:
    """A Redis Cluster of this session's own: 3 masters, 3 replicas on loopback
    (tests/redis_topologies.py). Tests that kill nodes start their own."""
    from tests.redis_topologies import ClusterServers, running

    if not REDIS_SERVER or not shutil.which("redis-cli"):
        pytest.fail("redis-server/redis-cli are not installed; run scripts/test")
    with running(ClusterServers(tmp_path_factory.mktemp("redis-cluster"))) as cluster:
        yield cluster


@pytest.fixture
def cluster_url(redis_cluster: ClusterServers) -> str:
    """The session's cluster with a key prefix unique to this test."""
    return f"{redis_cluster.url}?prefix=t{uuid.uuid4().hex[:10]}"


@pytest.fixture(scope="session")
def redis_sentinels(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SentinelServers]:
    """A master, a replica and three sentinels of this session's own
    (tests/redis_topologies.py). Tests that kill the master start their own."""
    from tests.redis_topologies import SentinelServers, running

    if not REDIS_SERVER:
        pytest.fail("redis-server is not installed; run scripts/test, which installs it")
    with running(SentinelServers(tmp_path_factory.mktemp("redis-sentinel"))) as deployment:
        yield deployment


@pytest.fixture
def sentinel_url(redis_sentinels: SentinelServers) -> str:
    """The session's Sentinel set with a key prefix unique to this test."""
    return f"{redis_sentinels.url}?prefix=t{uuid.uuid4().hex[:10]}"


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'conveyor.db'}"


@pytest.fixture(scope="session")
def postgres_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A database of this test session's own, created now and dropped at the end;
    yields its URL (without a schema)."""
    from tests.postgres_server import PostgresServer

    server = PostgresServer(tmp_path_factory.mktemp("postgres"))
    yield server.start()
    server.stop()


@pytest.fixture
def postgres_url(postgres_server: str) -> Iterator[str]:
    """The session's database with a schema unique to this test (dropped afterwards)."""
    from tests.postgres_server import drop_schema

    schema = f"t{uuid.uuid4().hex[:12]}"
    yield f"{postgres_server}?schema={schema}"
    drop_schema(postgres_server, schema)


@pytest.fixture(
    params=["memory", "sqlite", "redis", "redis+cluster", "redis+sentinel", "postgresql"]
)
def engine_url(request: pytest.FixtureRequest) -> str:
    """Every engine, for the contract suite (Redis three ways: one server, a cluster,
    and a Sentinel-watched master)."""
    kind = request.param
    if kind == "memory":
        return "memory://"
    if kind == "redis+cluster":
        return str(request.getfixturevalue("cluster_url"))
    if kind == "redis+sentinel":
        return str(request.getfixturevalue("sentinel_url"))
    if kind == "sqlite":
        return str(request.getfixturevalue("sqlite_url"))
    if kind == "postgresql":
        return str(request.getfixturevalue("postgres_url"))
    return str(request.getfixturevalue("redis_url"))


@pytest.fixture(params=["sqlite", "redis", "postgresql"])
def durable_url(request: pytest.FixtureRequest) -> str:
    """Engines shared across processes (fault-injection tests)."""
    if request.param == "sqlite":
        return str(request.getfixturevalue("sqlite_url"))
    if request.param == "postgresql":
        return str(request.getfixturevalue("postgres_url"))
    return str(request.getfixturevalue("redis_url"))


@pytest.fixture
async def app(durable_url: str) -> AsyncIterator[Conveyor]:
    """The probe app (tests/apps/probe.py) on a durable engine, connected. Unit tests and
    tests that need another app define their own `app`, which takes precedence."""
    app = probe_app(durable_url)
    await app.connect()
    yield app
    await app.close()


ROOT = Path(__file__).resolve().parents[1]
SpawnWorker = Callable[..., "subprocess.Popen[bytes]"]


@pytest.fixture
def spawn_worker() -> Iterator[SpawnWorker]:
    """`start(url, *flags, app_ref=..., queues=..., log_level=...)` runs `conveyor worker`
    as a separate process (from the repository root, so `tests.*` modules import);
    every process started is stopped (SIGTERM, then SIGKILL) when the test ends."""
    procs: list[subprocess.Popen[bytes]] = []

    def start(
        url: str,
        *flags: str,
        app_ref: str = "tests.apps.probe:app",
        queues: str = "default",
        log_level: str = "WARNING",
    ) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(
            [
                *(sys.executable, "-m", "conveyor", "worker", app_ref, "--url", url),
                *("--queues", queues, "--health-port", "0", "--log-level", log_level, *flags),
            ],
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


@pytest.fixture(autouse=True)
def _no_ambient_config(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests never pick up the developer's CONVEYOR_* / REDIS_URL environment."""
    for name in list(os.environ):
        if name.startswith("CONVEYOR_") or name == "REDIS_URL":
            monkeypatch.delenv(name, raising=False)
