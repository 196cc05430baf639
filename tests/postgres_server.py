"""The Postgres server the tests use: the machine's, or a private one started here.

`PostgresServer.start` first tries 127.0.0.1:5432 as user postgres (trust), or the
libpq URL in CONVEYOR_TEST_POSTGRES; when none answers it runs `initdb` in a
temporary directory and starts a private server on a free port (as user `postgres`
when the tests run as root, since Postgres refuses to run as root). It then creates
a database of the session's own, which `stop` drops. A server that cannot be found or
started fails the tests with the fix (scripts/test installs Debian's postgresql):
Postgres tests never skip.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import socket
import subprocess
import uuid
from pathlib import Path

import psycopg

DEFAULT = "postgresql://postgres@127.0.0.1:5432/postgres"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _answers(url: str) -> bool:
    try:
        with psycopg.connect(url, connect_timeout=3):
            return True
    except psycopg.OperationalError:
        return False


def _binary(name: str) -> str:
    found = shutil.which(name) or next(
        iter(sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True)), None
    )
    if not found:
        raise RuntimeError(
            f"no Postgres server answers on 127.0.0.1:5432 and {name} is not installed: "
            "run scripts/test (it installs Debian's postgresql), or set "
            "CONVEYOR_TEST_POSTGRES=postgresql://user@host:port/db"
        )
    return found


class PostgresServer:
    """The session's Postgres database (and the private server behind it, if any)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.admin_url = os.environ.get("CONVEYOR_TEST_POSTGRES", DEFAULT)
        self.data: Path | None = None
        self._options = ""  # the private server's command-line options
        self.database = f"conveyor_test_{uuid.uuid4().hex[:10]}"

    def _as_postgres(self, *args: str) -> list[str]:
        if os.geteuid() != 0:
            return list(args)
        return ["runuser", "-u", "postgres", "--", *args]

    def _start_private(self, settings: tuple[str, ...] = ()) -> None:
        initdb = _binary("initdb")
        self.data = self.directory / "data"
        self.data.mkdir()
        if os.geteuid() == 0:
            shutil.chown(self.directory, "postgres")
            shutil.chown(self.data, "postgres")
        port = _free_port()
        subprocess.run(
            self._as_postgres(initdb, "-D", str(self.data), "-U", "postgres", "--auth=trust"),
            check=True,
            capture_output=True,
        )
        self._options = f"-p {port} -k {self.data} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._options += "".join(f" -c {setting}" for setting in settings)
        self._pg_ctl("start")
        self.admin_url = f"postgresql://postgres@127.0.0.1:{port}/postgres"

    def _pg_ctl(self, action: str) -> None:
        assert self.data is not None
        subprocess.run(
            self._as_postgres(_binary("pg_ctl"), "-D", str(self.data), "-o", self._options,
                              "-m", "immediate", "-w", action, "-l", str(self.data / "log")),
            check=True,
            capture_output=True,
        )  # fmt: skip

    def start_private(self, *settings: str) -> str:
        """Start a private server (even when 5432 answers) with extra settings
        (``"name=value"``), create the session's database; returns its URL. For tests
        that crash the server (`crash`); `stop` stops it."""
        self._start_private(settings)
        return self.start()

    def crash(self) -> None:
        """Kill the private server as a crash would (``pg_ctl stop -m immediate``: no
        shutdown checkpoint, and WAL not yet written out of shared memory is lost), then
        start it again; it recovers from the WAL on disk."""
        self._pg_ctl("stop")
        self._pg_ctl("start")

    def start(self) -> str:
        """Find or start a server and create the session's database; returns its URL."""
        if not _answers(self.admin_url):
            self._start_private()
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{self.database}"')
        base = self.admin_url.rsplit("/", 1)[0]
        return f"{base}/{self.database}"

    def stop(self) -> None:
        """Drop the session's database; stop the private server if one was started."""
        try:
            with psycopg.connect(self.admin_url, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{self.database}" WITH (FORCE)')
        finally:
            if self.data is not None:
                with contextlib.suppress(subprocess.CalledProcessError):
                    self._pg_ctl("stop")


def drop_schema(url: str, schema: str) -> None:
    """Drop a test's schema (and everything in it)."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
