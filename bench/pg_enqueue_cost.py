"""What one enqueue costs on Postgres, single or in bulk, in measures a busy machine does not
blur.

Two modes, both on the machine's Postgres (127.0.0.1:5432, user postgres), each in a fresh
database dropped at the end:

* producers (default): for each source tree (`--src`, repeatable) and optionally pgqueuer
  (`--pgqueuer-python`, the interpreter of a venv with pgqueuer and asyncpg, e.g. the
  bench's `bench/.peers/venvs/pgqueuer_lib/bin/python`), one subprocess enqueues `--n` jobs
  one at a time, rounds interleaved; per job it reports the client's CPU (process_time),
  the CPU of the database's Postgres backends (utime + stime from /proc, so the listener's
  backend counts when there is one), the WAL bytes of one enqueue (min over 30 single
  calls of the insert-LSN delta, commit record included) and the wall rate (load-bound).
* `--functions`: server CPU of the schema's `enqueue` function alone, one job per call,
  4,000 calls in one DO block (no round trip, no commit), the function of migration 0007,
  the current one and `enqueue_one` (0017, the usual single job), interleaved. With
  `--bulk K`: server CPU and WAL per job of K-job calls, the JSON `enqueue` (every batch
  before migration 0015) against `enqueue_batch` (`bulk_functions`).

    .venv/bin/python bench/pg_enqueue_cost.py --src /tmp/main/src --src src \\
        --pgqueuer-python bench/.peers/venvs/pgqueuer_lib/bin/python --rounds 3 --n 3000
    .venv/bin/python bench/pg_enqueue_cost.py --src /tmp/main/src --src src --bulk 1000 \\
        --pgqueuer-python bench/.peers/venvs/pgqueuer_lib/bin/python --rounds 5 --n 20000
    .venv/bin/python bench/pg_enqueue_cost.py --functions
    .venv/bin/python bench/pg_enqueue_cost.py --functions --bulk 1000 --rounds 8
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

# The pgqueuer venv has no psycopg: its producer borrows it from the caller's site-packages,
# last on the path so that venv's own packages win.
if os.environ.get("PG_COST_EXTRA_PATH"):
    sys.path.extend(os.environ["PG_COST_EXTRA_PATH"].split(os.pathsep))

import psycopg

ADMIN = "postgresql://postgres@127.0.0.1/postgres"
MIGRATIONS = Path(__file__).resolve().parent.parent / "src/conveyor/engines/postgres/migrations"


def cpu_of(pid: int) -> float:
    """CPU time of a process, in seconds: its run time from /proc/PID/schedstat (ns), else
    utime + stime (clock ticks, 10 ms here: too coarse for one bulk call)."""
    try:
        with open(f"/proc/{pid}/schedstat") as f:
            return int(f.read().split()[0]) / 1e9
    except (OSError, ValueError, IndexError):
        pass
    with open(f"/proc/{pid}/stat") as f:
        parts = f.read().rsplit(")", 1)[1].split()
    return (int(parts[11]) + int(parts[12])) / os.sysconf("SC_CLK_TCK")


def fresh_database(name: str) -> str:
    with psycopg.connect(ADMIN, autocommit=True) as admin:
        admin.execute(f"DROP DATABASE IF EXISTS {name}")
        admin.execute(f"CREATE DATABASE {name}")
    return f"postgresql://postgres@127.0.0.1/{name}"


def migrated_database(name: str) -> str:
    """`fresh_database` with Conveyor's schema (`conveyor`) migrated into it."""
    from conveyor import Conveyor

    dsn = fresh_database(name)

    async def migrate() -> None:
        app = Conveyor(f"{dsn}?schema=conveyor")
        await app.connect()
        await app.close()

    asyncio.run(migrate())
    return dsn


def drop_database(name: str) -> None:
    with psycopg.connect(ADMIN, autocommit=True) as admin:
        admin.execute(f"DROP DATABASE {name} WITH (FORCE)")


async def producer(
    kind: str, dsn: str, bulk: int = 0
) -> tuple[Callable[[int], Awaitable[None]], Callable[[], Awaitable[None]]]:
    """(enqueue call i, close) of one producer: Conveyor's `app.enqueue`, or pgqueuer's
    `Queries.enqueue` on asyncpg (also used by `pg_client_instructions.py`); with `bulk`,
    call i is one bulk call of jobs i * bulk ... (i + 1) * bulk - 1."""
    if kind == "conveyor":
        from conveyor import Conveyor

        app = Conveyor(f"{dsn}?schema=conveyor")

        @app.task(name="job")
        async def job(t: int, s: int) -> None: ...

        await app.connect()

        async def one(i: int) -> None:
            await app.enqueue("job", {"t": i, "s": i})

        async def many(i: int) -> None:
            await app.enqueue_many(
                [
                    {"task": "job", "payload": {"t": k, "s": k}}
                    for k in range(i * bulk, (i + 1) * bulk)
                ]
            )

        return (many if bulk else one), app.close
    import asyncpg  # type: ignore[import-not-found]
    from pgqueuer.db import AsyncpgDriver  # type: ignore[import-not-found]
    from pgqueuer.queries import Queries  # type: ignore[import-not-found]

    conn = await asyncpg.connect(dsn)
    queries = Queries(AsyncpgDriver(conn))
    await queries.install()

    async def enqueue(i: int) -> None:
        await queries.enqueue("job", f"{i} {i}".encode())

    async def enqueue_many(i: int) -> None:
        jobs = range(i * bulk, (i + 1) * bulk)
        await queries.enqueue(["job"] * bulk, [f"{k} {k}".encode() for k in jobs], [0] * bulk)

    return (enqueue_many if bulk else enqueue), conn.close


async def produce(kind: str, db: str, n: int, bulk: int) -> dict[str, Any]:
    """One producer's figures (run in a subprocess, on the interpreter of its kind): `n`
    jobs, one per call or `bulk` per call."""
    dsn = fresh_database(db)
    mon = psycopg.connect(dsn, autocommit=True)
    one, close = await producer(kind, dsn, bulk)
    per_call = bulk or 1
    calls = n // per_call
    for i in range(10 if bulk else 50):  # warm: prepared statements, caches
        await one(i)
    pids = [
        int(r[0])
        for r in mon.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
            (db,),
        ).fetchall()
    ]
    backend0 = {p: cpu_of(p) for p in pids}
    cpu0, t0 = time.process_time(), time.perf_counter()
    for i in range(calls):
        await one(i)
    t1, cpu1 = time.perf_counter(), time.process_time()
    backend1 = {p: cpu_of(p) for p in pids}
    n = calls * per_call
    wal = []
    for i in range(10 if bulk else 30):
        row = mon.execute("SELECT pg_current_wal_insert_lsn()").fetchone()
        assert row is not None
        await one(i)
        diff = mon.execute(
            "SELECT pg_wal_lsn_diff(pg_current_wal_insert_lsn(), %s)", (row[0],)
        ).fetchone()
        assert diff is not None
        wal.append(float(diff[0]) / per_call)
    await close()
    mon.close()
    drop_database(db)
    return {
        "rate": n / (t1 - t0),
        "client_us": 1e6 * (cpu1 - cpu0) / n,
        "backend_us": 1e6 * sum(backend1[p] - backend0[p] for p in pids) / n,
        "wal_bytes": min(wal),
        "backends": len(pids),
    }


def producer_sides(
    script: str, srcs: list[str], pgqueuer_python: str | None
) -> list[tuple[str, list[str], dict[str, str]]]:
    """(name, argv, env) of each producer subprocess: `script --producer KIND` on each
    source tree, and on pgqueuer's interpreter when given."""
    sides: list[tuple[str, list[str], dict[str, str]]] = []
    for src in srcs:
        env = {**os.environ, "PYTHONPATH": str(Path(src).resolve())}
        sides.append((f"conveyor {src}", [sys.executable, script, "--producer", "conveyor"], env))
    if pgqueuer_python:
        # psycopg (this script's monitor) from this interpreter's site-packages, last.
        extra = os.pathsep.join(p for p in sys.path if p.endswith("site-packages"))
        env = {**os.environ, "PG_COST_EXTRA_PATH": extra}
        sides.append(("pgqueuer", [pgqueuer_python, script, "--producer", "pgqueuer"], env))
    return sides


def producers(args: argparse.Namespace) -> None:
    sides = producer_sides(str(Path(__file__).resolve()), args.src, args.pgqueuer_python)
    calls = f"bulk calls of {args.bulk:,} jobs" if args.bulk else "single enqueues"
    results: dict[str, list[dict[str, Any]]] = {name: [] for name, _, _ in sides}
    for _ in range(args.rounds):
        for index, (name, argv, env) in enumerate(sides):
            out = subprocess.run(
                [*argv, f"pg_enqueue_cost_{index}", str(args.n), str(args.bulk)],
                env=env, check=True, capture_output=True, text=True,
            )  # fmt: skip
            results[name].append(json.loads(out.stdout.strip().splitlines()[-1]))
    print(f"{args.n:,} jobs per round in {calls}, {args.rounds} rounds interleaved; per job:")
    print("| producer | client CPU (µs) | Postgres backend CPU (µs) | WAL (bytes) | jobs/s |")
    print("|---|---|---|---|---|")
    for name, runs in results.items():

        def col(key: str, runs: list[dict[str, Any]] = runs) -> str:
            return " / ".join(f"{r[key]:,.0f}" for r in runs)

        print(
            f"| {name} | {col('client_us')} | {col('backend_us')} | {col('wal_bytes')} "
            f"| {col('rate')} |"
        )


def functions(args: argparse.Namespace) -> None:
    """Server CPU per call of the enqueue function of 0007 against the current one and
    `enqueue_one` (0017), one job per call."""
    name = "pg_enqueue_cost_fn"
    dsn = migrated_database(name)

    def function_of(path: Path, new_name: str) -> str:
        text = path.read_text()
        body = text[text.index("CREATE OR REPLACE FUNCTION {schema}.enqueue(") :]
        body = body[: body.index("\n$$;") + 4]
        body = body.replace("{schema}", "conveyor").replace("{channel}", "'conveyor:conveyor'")
        return body.replace("FUNCTION conveyor.enqueue(", f"FUNCTION conveyor.{new_name}(")

    latest = sorted(MIGRATIONS.glob("*.sql"))
    current = next(p for p in reversed(latest) if "FUNCTION {schema}.enqueue(" in p.read_text())
    variants = {
        "0007_flow_dedupe.sql": function_of(MIGRATIONS / "0007_flow_dedupe.sql", "enqueue_0007"),
        current.name: function_of(current, "enqueue_now"),
    }
    document = (
        "jsonb_build_array(jsonb_build_object('id', 'j{rep}_' || i, 'queue', 'default',"
        " 'task', 'job', 'payload', '{{\"t\":1}}', 'max_attempts', 3, 'priority', 0)), NULL"
    )
    calls = {
        "0007_flow_dedupe.sql": f"conveyor.enqueue_0007({document})",
        current.name: f"conveyor.enqueue_now({document})",
        # Migration 0017's lean statement, as flow.py calls it for such a job.
        "enqueue_one (0017)": "conveyor.enqueue_one('k{rep}_' || i, 'default', 'job',"
        " '{{\"t\":1}}', 3, 0, NULL, NULL, NULL)",
    }
    n = 4000
    with psycopg.connect(dsn, autocommit=True) as conn:
        for body in variants.values():
            conn.execute(body)
        # The queue known (committed), as for every enqueue but a queue's first.
        conn.execute(
            'SELECT conveyor.enqueue(\'[{"id": "first", "queue": "default",'
            ' "task": "job", "payload": "1", "max_attempts": 1}]\')'
        )
        row = conn.execute("SELECT pg_backend_pid()").fetchone()
        assert row is not None
        pid = int(row[0])
        per_call: dict[str, list[float]] = {k: [] for k in calls}
        for rep in range(args.rounds + 1):
            for label, call in calls.items():
                conn.execute("BEGIN")
                before = cpu_of(pid)
                conn.execute(
                    f"DO $$ BEGIN FOR i IN 1..{n} LOOP PERFORM {call.format(rep=rep)};"
                    " END LOOP; END $$;"
                )
                per_call[label].append((cpu_of(pid) - before) * 1e6 / n)
                conn.execute("ROLLBACK")
    drop_database(name)
    print(f"server CPU per one-job enqueue call (µs; {n:,} calls per round, first round warm-up)")
    for label, values in per_call.items():
        print(f"  {label:28s} " + " / ".join(f"{v:.1f}" for v in values[1:]))


def bulk_functions(args: argparse.Namespace) -> None:
    """Server CPU per job of one bulk call, `--bulk` jobs: the JSON `enqueue` function (every
    batch before migration 0015) against `enqueue_batch` with the parameters `enqueue_many`
    sends, 5 calls per round, rounds interleaved, the tables emptied before each round."""
    from conveyor.engines.postgres.flow import batch_params, jobs_document
    from conveyor.engines.postgres.queries import for_schema
    from conveyor.job import NewJob, new_id_suffixes

    name = "pg_enqueue_cost_bulk_fn"
    dsn = migrated_database(name)
    q = for_schema('"conveyor"')
    n, calls = args.bulk, 5

    def batch() -> list[NewJob]:
        ids = new_id_suffixes(n)
        return [NewJob(f"q:{ids[i]}", "q", "job", f'{{"t":{i},"s":{i}}}', 1) for i in range(n)]

    sides: dict[str, tuple[str, Callable[[list[NewJob]], tuple[Any, ...]]]] = {
        "enqueue(jsonb)": (q["enqueue"], lambda jobs: (jobs_document(jobs), None)),
        "enqueue_batch": (q["enqueue_batch"], lambda jobs: (*batch_params(jobs), None)),
    }
    per_job: dict[str, list[float]] = {label: [] for label in sides}
    wal: dict[str, list[float]] = {label: [] for label in sides}
    with psycopg.connect(dsn, autocommit=True) as conn:
        cur = conn.cursor()
        row = conn.execute("SELECT pg_backend_pid()").fetchone()
        assert row is not None
        pid = int(row[0])
        for _ in range(args.rounds + 1):
            for label, (sql, params_of) in sides.items():
                params = [params_of(batch()) for _ in range(calls)]
                conn.execute("TRUNCATE conveyor.jobs, conveyor.events")
                lsn = conn.execute("SELECT pg_current_wal_insert_lsn()").fetchone()
                assert lsn is not None
                before = cpu_of(pid)
                for p in params:
                    cur.execute(sql, p, prepare=True)
                    cur.fetchall()
                per_job[label].append((cpu_of(pid) - before) * 1e6 / (n * calls))
                diff = conn.execute(
                    "SELECT pg_wal_lsn_diff(pg_current_wal_insert_lsn(), %s)", (lsn[0],)
                ).fetchone()
                assert diff is not None
                wal[label].append(float(diff[0]) / (n * calls))
    drop_database(name)
    print(f"server CPU (µs) and WAL (bytes) per job, {calls} calls of {n:,} jobs per round,")
    print("first round a warm-up, rounds interleaved (WAL includes the 5 commits)")
    for label in sides:
        cpu = " / ".join(f"{v:.1f}" for v in per_job[label][1:])
        print(f"  {label:16s} CPU {cpu}   WAL " + " / ".join(f"{v:.0f}" for v in wal[label][1:]))


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--producer":
        kind, db, n, bulk = sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
        print(json.dumps(asyncio.run(produce(kind, db, n, bulk))))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--src", action="append", default=[], help="a source tree's src/")
    parser.add_argument("--pgqueuer-python", help="interpreter of a venv with pgqueuer")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--n", type=int, default=3000)
    parser.add_argument("--bulk", type=int, default=0, help="jobs per bulk call (0: single)")
    parser.add_argument("--functions", action="store_true")
    args = parser.parse_args()
    if args.functions and args.bulk:
        bulk_functions(args)
    elif args.functions:
        functions(args)
    else:
        producers(args)


if __name__ == "__main__":
    main()
