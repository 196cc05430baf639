"""Client instructions per enqueued job on Postgres (callgrind), single or in bulk
(`--bulk K`: the library's bulk call with K jobs, as `pg_enqueue_cost.py --bulk`), a count
a busy machine does not blur.

For each source tree (`--src`, repeatable) and optionally pgqueuer (`--pgqueuer-python`,
the interpreter of a venv with pgqueuer and asyncpg), a producer runs under
``valgrind --tool=callgrind`` with instrumentation off until its warm-up (50 enqueues)
is done; it then switches collection on through callgrind's client requests (a tiny C
helper compiled here with the system's ``valgrind/callgrind.h``), makes `--n` single
enqueues, and dumps. The figure is that dump's instruction total over `--n`: the whole
client (facade, driver, pool, event loop), nothing of start-up. Each producer works in a
fresh database on the machine's Postgres (127.0.0.1:5432, user postgres), dropped after.

    .venv/bin/python bench/pg_client_instructions.py --src /tmp/main/src --src src \\
        --pgqueuer-python bench/.peers/venvs/pgqueuer_lib/bin/python --n 1000
    .venv/bin/python bench/pg_client_instructions.py --src /tmp/main/src --src src \\
        --pgqueuer-python bench/.peers/venvs/pgqueuer_lib/bin/python --n 10000 --bulk 1000

Needs valgrind, its headers (valgrind/callgrind.h) and a C compiler.
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import os
import subprocess
import sys
import tempfile
from pathlib import Path

# The pgqueuer venv has no psycopg: `pg_enqueue_cost` (imported for its producers) borrows it
# from the caller's site-packages, last on the path (PG_COST_EXTRA_PATH, set below).
from pg_enqueue_cost import producer, producer_sides

ADMIN = "postgresql://postgres@127.0.0.1/postgres"
HELPER_C = """#include <valgrind/callgrind.h>
void cg_start(void) { CALLGRIND_ZERO_STATS; CALLGRIND_START_INSTRUMENTATION;
                      CALLGRIND_TOGGLE_COLLECT; }
void cg_stop(void) { CALLGRIND_TOGGLE_COLLECT; CALLGRIND_DUMP_STATS; }
"""


async def produce(kind: str, dsn: str, n: int, helper: str, bulk: int) -> None:
    """Warm up, then `n` jobs (single enqueues, or bulk calls of `bulk`) with callgrind
    collecting (run under valgrind)."""
    cg = ctypes.CDLL(helper)
    one, close = await producer(kind, dsn, bulk)
    for i in range(5 if bulk else 50):
        await one(i)
    cg.cg_start()
    for i in range(n // (bulk or 1)):
        await one(i)
    cg.cg_stop()
    await close()


def admin(sql: str) -> None:
    import psycopg

    with psycopg.connect(ADMIN, autocommit=True) as conn:
        conn.execute(sql)


def measure(name: str, argv: list[str], env: dict[str, str], n: int, bulk: int, work: Path) -> int:
    db = f"pg_client_instr_{os.getpid()}"
    admin(f"DROP DATABASE IF EXISTS {db}")
    admin(f"CREATE DATABASE {db}")
    out = work / f"{name.replace('/', '_')}.out"
    try:
        subprocess.run(
            ["valgrind", "--tool=callgrind", "--instr-atstart=no", "--collect-atstart=no",
             f"--callgrind-out-file={out}", *argv,
             f"postgresql://postgres@127.0.0.1/{db}", str(n), str(work / "helper.so"),
             str(bulk)],
            env=env, check=True, capture_output=True, text=True,
        )  # fmt: skip
    finally:
        admin(f"DROP DATABASE IF EXISTS {db} WITH (FORCE)")
    total = 0
    for dump in work.glob(out.name + "*"):
        for line in dump.read_text(errors="replace").splitlines():
            if line.startswith("summary:"):
                total += int(line.split()[1])
    return total // n


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--producer":
        kind, dsn, n, helper = sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5]
        asyncio.run(produce(kind, dsn, n, helper, int(sys.argv[6])))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--src", action="append", default=[], help="a source tree's src/")
    parser.add_argument("--pgqueuer-python", help="interpreter of a venv with pgqueuer")
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--bulk", type=int, default=0, help="jobs per bulk call (0: single)")
    args = parser.parse_args()
    me = str(Path(__file__).resolve())
    with tempfile.TemporaryDirectory(prefix="pg_client_instr_") as tmp:
        work = Path(tmp)
        (work / "helper.c").write_text(HELPER_C)
        helper = ["-o", str(work / "helper.so"), str(work / "helper.c")]
        subprocess.run(["cc", "-O2", "-shared", "-fPIC", *helper], check=True)
        sides = producer_sides(me, args.src, args.pgqueuer_python)
        calls = f"bulk calls of {args.bulk:,}" if args.bulk else "single enqueues"
        print(f"client instructions per job ({args.n:,} jobs in {calls}, after a warm-up)")
        for name, argv, env in sides:
            count = measure(name, argv, env, args.n, args.bulk, work)
            print(f"  {name:40s} {count:>10,}", flush=True)


if __name__ == "__main__":
    main()
