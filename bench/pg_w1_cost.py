"""Postgres W1's server-side cost per job, counted by the server (load-independent).

    .venv/bin/python bench/pg_w1_cost.py --port 55471 --reps 3
    PYTHONPATH=/work/main/src .venv/bin/python bench/pg_w1_cost.py --port 55471   # main's tree

W1's protocol on Postgres without the harness: `--jobs` noop jobs enqueued with
``enqueue_many`` (1,000 a statement), then one in-process worker (concurrency `--concurrency`,
burst mode) drains them. Counted from the worker's start to the empty queue, per job:

* statements (``pg_stat_statements`` calls, nested ones inside the functions included, as
  ``track = all``), the rows they returned or touched, and how often they were planned
  (``track_planning = on``); ``--top`` lists the costliest statements;
* WAL bytes (``pg_current_wal_lsn`` difference) and commits (``pg_stat_database``);
* jobs-table updates, of which HOT (``pg_stat_user_tables``), and the exchange calls;
* the backends' CPU (utime + stime from /proc; machine load inflates it, the counts not).

The server must have ``pg_stat_statements`` in ``shared_preload_libraries`` (with
``pg_stat_statements.track = all`` and ``track_planning = on``) and nobody else
using it (its counts are cluster-wide): start a private one with ``initdb`` and pass
``--port``. Each rep uses a fresh database, unless ``--same-db``: then every rep runs in
one database and starts with ``app.purge`` of the queue, as bench/run's producer does
before each measurement, so what churn leaves behind (dead tuples and index entries,
table growth) shows in the counts of later reps. Each rep then also prints the jobs
table's live/dead tuples and its heap and index sizes at its start.

    .venv/bin/python bench/pg_w1_cost.py --port 55471 --reps 6 --same-db

``--fair`` measures W5 instead (bench/README.md): job i gets tenant ``t{i mod 100}`` and the
queue a limit of 2 running jobs per tenant, stored before the enqueue, so every claim goes
through ``claim_fair`` (tenant turns, running counts). With ``--same-db`` each rep's start
also prints the tenants table's live/dead tuples and index pages (every turn rewrites a row).

    .venv/bin/python bench/pg_w1_cost.py --port 55471 --reps 6 --same-db --fair --top
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time
from pathlib import Path
from typing import Any

import psycopg

import conveyor
from conveyor import Conveyor, Job, Worker

_TICK = os.sysconf("SC_CLK_TCK")
# W5 (bench/harness.py): job i of a rep gets tenant t{i mod W5_TENANTS}, at most
# W5_TENANT_CONCURRENCY of a tenant's jobs run at once.
W5_TENANTS = 100
W5_TENANT_CONCURRENCY = 2


def backend_cpu(database: str) -> dict[int, float]:
    """CPU seconds of each backend serving `database` (by process title)."""
    out = {}
    needle = f" {database} ".encode()
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            title = Path(entry.path, "cmdline").read_bytes()
            if not (title.startswith(b"postgres: ") and needle in title):
                continue
            fields = Path(entry.path, "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        out[int(entry.name)] = (int(fields[11]) + int(fields[12])) / _TICK
    return out


def server_counts(admin: psycopg.Connection[Any], database: str) -> dict[str, float]:
    row = admin.execute(
        "SELECT pg_current_wal_lsn() - '0/0'::pg_lsn, d.xact_commit,"
        " (SELECT wal_records FROM pg_stat_wal)"
        " FROM pg_stat_database d WHERE d.datname = %s",
        (database,),
    ).fetchone()
    assert row is not None
    return {"wal_bytes": float(row[0]), "commits": float(row[1]), "wal_records": float(row[2])}


def table_counts(url: str) -> dict[str, float]:
    with psycopg.connect(url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT relname, n_tup_ins, n_tup_upd, n_tup_hot_upd, n_tup_del, autovacuum_count,"
            " autoanalyze_count FROM pg_stat_user_tables WHERE schemaname = 'conveyor'"
        ).fetchall()
    out: dict[str, float] = {}
    for name, ins, upd, hot, dele, av, aa in rows:
        out |= {f"{name}.ins": ins, f"{name}.upd": upd, f"{name}.hot": hot, f"{name}.del": dele,
                f"{name}.autovacuum": av, f"{name}.autoanalyze": aa}  # fmt: skip
    return out


def table_state(url: str, table: str, index: str) -> dict[str, float]:
    """A table's live and dead tuples (as of the last stats flush), its heap and index
    sizes, and the size of one of its indexes (in pages)."""
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT n_live_tup, n_dead_tup, pg_relation_size(relid) / 8192,"
            " pg_indexes_size(relid) / 8192, pg_relation_size(%s::regclass) / 8192"
            " FROM pg_stat_user_tables WHERE schemaname = 'conveyor' AND relname = %s",
            (f"conveyor.{index}", table),
        ).fetchone()
    if row is None:  # the first rep of a fresh database: no schema yet
        return {}
    keys = ("live_tup", "dead_tup", "heap_pages", "index_pages", f"{index}_pages")
    return {f"{table}.{k}": float(v) for k, v in zip(keys, row, strict=True)}


async def one_run(
    server: str,
    admin: psycopg.Connection[Any],
    jobs: int,
    concurrency: int,
    rep: int,
    same_db: bool,
    fair: bool,
) -> dict[str, Any]:
    database = f"pgw1_cost_{os.getpid()}" + ("" if same_db else f"_{rep}")
    if not same_db or rep == 0:
        admin.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        admin.execute(f'CREATE DATABASE "{database}"')
    url = f"{server}/{database}"
    app = Conveyor(f"{url}?schema=conveyor")

    @app.task("noop", queue="bench", max_attempts=1)
    async def noop(job: Job) -> None:
        return None

    try:
        await app.connect()
        await app.purge("bench")  # what the previous rep left (bench/run's producer does it)
        # As the conveyor-postgres peer's producer does: no limits, or W5's before enqueueing.
        await app.set_limits("bench", tenant_concurrency=W5_TENANT_CONCURRENCY if fair else None)
        await asyncio.sleep(0.7)  # stats are flushed by backends at most once a second
        admin.execute("SELECT pg_stat_clear_snapshot()")
        state = table_state(url, "jobs", "jobs_claim")
        if fair:
            state |= table_state(url, "tenants", "tenants_turn")
        for start in range(0, jobs, 1000):
            await app.enqueue_many(
                [
                    {"task": "noop", "payload": {"i": i}}
                    | ({"tenant": f"t{i % W5_TENANTS}"} if fair else {})
                    for i in range(start, min(jobs, start + 1000))
                ]
            )
        await asyncio.sleep(0.5)  # let the enqueue's stats settle
        admin.execute("SELECT pg_stat_statements_reset()")
        admin.execute("SELECT pg_stat_clear_snapshot()")
        before = server_counts(admin, database)
        tables0 = table_counts(url)
        cpu0 = backend_cpu(database)
        worker = Worker(app, queues=("bench",), concurrency=concurrency, burst=True)
        t0 = time.perf_counter()
        await worker.run()
        elapsed = time.perf_counter() - t0
        cpu1 = backend_cpu(database)
        done = (await app.counts("bench")).completed
        assert done == jobs, f"only {done} of {jobs} completed"
    finally:
        await app.close()
    await asyncio.sleep(0.7)  # stats are flushed by backends at most once a second / at exit
    admin.execute("SELECT pg_stat_clear_snapshot()")
    after = server_counts(admin, database)
    tables1 = table_counts(url)
    stmts = admin.execute(
        "SELECT calls, rows, total_exec_time, plans, total_plan_time,"
        " left(regexp_replace(query, '\\s+', ' ', 'g'), 100),"
        " shared_blks_hit + shared_blks_read, toplevel"
        " FROM pg_stat_statements s JOIN pg_database d ON d.oid = s.dbid"
        " WHERE d.datname = %s ORDER BY total_exec_time + total_plan_time DESC",
        (database,),
    ).fetchall()
    if not same_db:
        admin.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
    cpu = sum(v - cpu0.get(pid, 0.0) for pid, v in cpu1.items())
    out: dict[str, Any] = {
        "jobs/s": jobs / elapsed,
        "cpu_us/job": cpu * 1e6 / jobs,
        "statements/job": sum(s[0] for s in stmts) / jobs,
        "rows/job": sum(s[1] for s in stmts) / jobs,
        "exec_ms/job": sum(s[2] for s in stmts) / jobs,
        # Buffers touched by top-level statements only: with `track = all` a nested
        # statement's buffers are counted in its own row and again in its caller's.
        "buffers/job": sum(s[6] for s in stmts if s[7]) / jobs,
        "wal_bytes/job": (after["wal_bytes"] - before["wal_bytes"]) / jobs,
        "wal_records/job": (after["wal_records"] - before["wal_records"]) / jobs,
        "commits/job": (after["commits"] - before["commits"]) / jobs,
        "exchanges/job": sum(s[0] for s in stmts if s[5].startswith('SELECT "conveyor".exchange('))
        / jobs,
        "plans/job": sum(s[3] for s in stmts) / jobs,
        "plan_ms/job": sum(s[4] for s in stmts) / jobs,
    }
    for key in sorted(tables1):
        delta = tables1[key] - tables0.get(key, 0)
        if delta and not key.endswith(("autovacuum", "autoanalyze")):
            out[f"{key}/job"] = delta / jobs
        elif delta:
            out[key] = delta
    out |= state
    out["top"] = stmts[:25]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=55471)
    parser.add_argument("--jobs", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--top", action="store_true", help="print the costliest statements")
    parser.add_argument(
        "--same-db", action="store_true", help="one database for every rep, purged between"
    )
    parser.add_argument(
        "--fair", action="store_true", help="W5: 100 tenants, 2 running jobs per tenant"
    )
    args = parser.parse_args()
    server = f"postgresql://postgres@127.0.0.1:{args.port}"
    print(f"conveyor from {Path(conveyor.__file__).parent}", flush=True)
    results = []
    with psycopg.connect(f"{server}/postgres", autocommit=True) as admin:
        admin.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        for rep in range(args.reps):
            r = asyncio.run(
                one_run(server, admin, args.jobs, args.concurrency, rep, args.same_db, args.fair)
            )
            results.append(r)
            line = ", ".join(
                f"{k} {v:,.2f}" for k, v in r.items() if k != "top" and isinstance(v, float)
            )
            print(f"rep {rep + 1}: {line}", flush=True)
            if args.top:
                for calls, rows, ms, plans, plan_ms, query, blks, _ in r["top"]:
                    print(
                        f"    {calls:>7} calls {rows:>7} rows {ms:9.1f} ms"
                        f" {plans:>6} plans {plan_ms:7.1f} ms {blks:>9} bufs  {query}"
                    )
    keys = [k for k in results[0] if k != "top" and isinstance(results[0][k], float)]
    print("median: " + ", ".join(f"{k} {statistics.median(r.get(k, 0.0) for r in results):,.2f}"
                                for k in keys))  # fmt: skip


if __name__ == "__main__":
    main()
