"""The Postgres side of the benchmark harness: the run's database and its server CPU.

The Postgres libraries (``conveyor-postgres``, ``pgqueuer``, ``procrastinate``) keep their jobs
in one database the harness creates on the machine's Postgres for the run
(``conveyor_bench_<redis port>``, so two runs at once never share one) and drops at the end;
no other database is touched. Their ``ENGINE_URL`` names it with the ``{pg_url}`` placeholder.

Postgres server CPU per job is the process CPU (utime + stime from ``/proc/<pid>/stat``) of
the backends serving that database, found by their process title
(``postgres: <cluster>: <user> <database> <host> <state>``). It is sampled while the workers
run and once more before they are stopped; each backend counts with its last sample, so a
backend that exits between two samples loses at most one interval (``SAMPLE_S``). The
server's shared processes (WAL writer, checkpointer, autovacuum) serve every database of
the machine and are not counted. A measurement counts from the moment its monitor is made.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path
from urllib.parse import urlsplit

PG_SERVER = os.environ.get("BENCH_PG_SERVER", "postgresql://postgres@127.0.0.1:5432")
SAMPLE_S = 0.1
_TICK = os.sysconf("SC_CLK_TCK")


def database_name(redis_url: str) -> str:
    return f"conveyor_bench_{urlsplit(redis_url).port}"


def pg_url(redis_url: str) -> str:
    """The run's database URL (``{pg_url}`` in a peer's ENGINE_URL)."""
    return f"{PG_SERVER}/{database_name(redis_url)}"


def _psql(sql: str) -> None:
    proc = subprocess.run(
        ["psql", f"{PG_SERVER}/postgres", "-v", "ON_ERROR_STOP=1", "-qAtc", sql],
        capture_output=True,
        text=True,
        timeout=60,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"psql {sql!r}: {proc.stderr.strip()[:200]}")


def create_database(redis_url: str) -> None:
    """A fresh database for this run (a leftover of a killed run with the same port is
    dropped first: the name carries this run's private Redis port, so it is ours)."""
    drop_database(redis_url)
    _psql(f'CREATE DATABASE "{database_name(redis_url)}"')


def drop_database(redis_url: str) -> None:
    _psql(f'DROP DATABASE IF EXISTS "{database_name(redis_url)}" WITH (FORCE)')


class BackendCpu:
    """CPU seconds of the Postgres backends serving one database, sampled from /proc."""

    def __init__(self, database: str) -> None:
        self.needle = f" {database} "
        self.seen: dict[int, float] = {}
        self.last = 0.0
        self.sample(force=True)
        # Backends already there (none, normally: the producer has exited) count from now.
        self.base = dict(self.seen)

    def _backends(self) -> list[int]:
        pids = []
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            try:
                title = Path(entry.path, "cmdline").read_bytes()
            except OSError:
                continue
            if title.startswith(b"postgres: ") and self.needle.encode() in title:
                pids.append(int(entry.name))
        return pids

    def sample(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self.last < SAMPLE_S:
            return
        self.last = now
        for pid in self._backends():
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            # utime and stime are fields 14 and 15 of stat, 12 and 13 after the command name.
            self.seen[pid] = (int(fields[11]) + int(fields[12])) / _TICK

    def total(self) -> float:
        return sum(cpu - self.base.get(pid, 0.0) for pid, cpu in self.seen.items())
