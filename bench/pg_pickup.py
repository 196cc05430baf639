"""Postgres cross-process pickup latency (W2's protocol, without Redis), per source tree.

    .venv/bin/python bench/pg_pickup.py --src /work/main/src --src src --reps 3
    .venv/bin/python bench/pg_pickup.py --port 55432     # a private server (see below)

Each rep runs every `--src` tree in turn (its ``conveyor`` package imported from there) on a
fresh database of the Postgres at 127.0.0.1:`--port` (user postgres, trust): one ``conveyor
worker`` process (concurrency 50, as bench/run's conveyor-postgres), warmed with 20 jobs,
then a producer process enqueues `--jobs` jobs 5 ms apart, each carrying ``time.time_ns()``
taken just before its ``enqueue`` call; the handler records start − enqueue. The producer's
commit is inside the figure, as in W2.

Beside the latency, figures that do not depend on the machine's load: WAL flushes
(``pg_stat_wal.wal_sync``) per job, counted from before the producer starts until the last
job ran (the server's own count, so it is exact only on a server nobody else uses: start a
private one with ``initdb`` + ``pg_ctl -o "-p 55432"`` and pass ``--port``); the worker's
exchange calls per job; its full (generation 2) garbage collections from the first
measured job to the last, with the longest one's pause (0 when there was none); and the
share of jobs handed to the idle worker by the enqueue itself (the one-hop pickup,
migration 0011; 0 on trees without it); and per hop, the producer's enqueue call (p50,
p99: its commit and flush included) and the share of jobs whose handler started before
their enqueue call returned (the hand-off leaves at the commit record, before the flush,
migration 0014; on trees without it the notification and the producer's reply both wait
for that flush and then race).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from sqlite_pickup import tree_env  # bench/ is the script's directory: on sys.path

APP = """
import gc, os, time
from conveyor import Conveyor, Job
app = Conveyor(os.environ["BENCH_URL"])
OUT = os.environ["BENCH_OUT"]
COUNTS = {"exchanges": 0, "gc2": 0, "gc2_ms": 0.0}
_gc_start = [0.0]

def _gc(phase, info):
    if info["generation"] != 2:
        return
    if phase == "start":
        _gc_start[0] = time.perf_counter()
    else:
        COUNTS["gc2"] += 1
        COUNTS["gc2_ms"] = max(COUNTS["gc2_ms"], (time.perf_counter() - _gc_start[0]) * 1000)

gc.callbacks.append(_gc)
_engine_exchange = None

@app.task("job", queue="bench")
async def job(job: Job) -> None:
    start = time.time_ns()
    if job.payload["i"] == 0:  # the measured run starts: its own collections only
        COUNTS["gc2"], COUNTS["gc2_ms"] = 0, 0.0
    global _engine_exchange
    if _engine_exchange is None:  # count the worker's exchange calls from the first job on
        engine = app.engine
        _engine_exchange = engine.exchange

        async def counted(*args, **kwargs):
            COUNTS["exchanges"] += 1
            return await _engine_exchange(*args, **kwargs)

        engine.exchange = counted
    with open(OUT, "a") as f:
        handed = int((job.token or "").startswith("h"))  # one-hop pickup (migration 0011)
        f.write(f"{job.payload['i']} {start - int(job.payload['t'])} {COUNTS['exchanges']} "
                f"{COUNTS['gc2']} {COUNTS['gc2_ms']:.2f} {handed} {start} {job.payload['t']}\\n")
"""

PRODUCER = """
import asyncio, os, sys, time
from bench_app import app
async def main(n, warm):
    await app.connect()
    for i in range(warm):
        await app.enqueue("job", {"t": time.time_ns(), "i": -1})
    await asyncio.sleep(1.0)
    print("go", flush=True)
    sys.stdin.readline()
    returned = []
    for i in range(n):
        await app.enqueue("job", {"t": time.time_ns(), "i": i})
        returned.append(time.time_ns())  # the enqueue call's return, per job
        await asyncio.sleep(0.005)
    await app.close()
    with open(os.environ["BENCH_OUT"] + ".returned", "w") as f:
        f.write("\\n".join(map(str, returned)))
asyncio.run(main(int(sys.argv[1]), int(sys.argv[2])))
"""

WARM = 20


def psql(port: int, sql: str) -> str:
    return subprocess.run(
        ["psql", "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "-Atqc", sql],
        check=True, capture_output=True, text=True,
    ).stdout.strip()  # fmt: skip


def run_once(src: str, jobs: int, port: int) -> dict[str, float]:
    db = "conveyor_pickup_" + uuid.uuid4().hex[:8]
    psql(port, f"CREATE DATABASE {db}")
    try:
        with tempfile.TemporaryDirectory(prefix="conveyor-pg-pickup-") as tmp:
            d = Path(tmp)
            url = f"postgresql://postgres@127.0.0.1:{port}/{db}?schema=conveyor"
            env, out = tree_env(src, d, APP, url)
            subprocess.run(  # the schema, before the worker and the producer race for it
                [sys.executable, "-c", "import asyncio, bench_app; "
                 "asyncio.run(bench_app.app.connect())"],
                env=env, cwd=d, check=True,
            )  # fmt: skip
            worker = subprocess.Popen(
                [sys.executable, "-m", "conveyor", "worker", "bench_app:app", "--queues",
                 "bench", "--concurrency", "50", "--health-port", "0", "--log-level",
                 "WARNING"],
                env=env, cwd=d, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
            )  # fmt: skip
            try:
                producer = subprocess.Popen(
                    [sys.executable, "-c", PRODUCER, str(jobs), str(WARM)],
                    env=env, cwd=d, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                )  # fmt: skip
                assert producer.stdin is not None and producer.stdout is not None
                producer.stdout.readline()  # warmed up
                wal0 = int(psql(port, "SELECT wal_sync FROM pg_stat_wal"))
                producer.stdin.write("\n")
                producer.stdin.flush()
                lines: list[list[str]] = []
                deadline = time.monotonic() + 120
                while time.monotonic() < deadline:
                    text = out.read_text() if out.exists() else ""
                    lines = [ln.split() for ln in text.splitlines() if ln]
                    if len(lines) >= WARM + jobs:
                        break
                    time.sleep(0.05)
                else:
                    raise SystemExit(f"{src}: the worker did not finish")
                wal1 = int(psql(port, "SELECT wal_sync FROM pg_stat_wal"))
                producer.wait(60)
                returned = [int(t) for t in Path(f"{out}.returned").read_text().split()]
            finally:
                worker.terminate()
                worker.wait(30)
    finally:
        psql(port, f"DROP DATABASE {db} WITH (FORCE)")
    measured = [ln for ln in lines if ln[0] != "-1"]
    lat = sorted(int(ln[1]) / 1e6 for ln in measured)
    first_warm = [ln for ln in lines if ln[0] == "-1"][-1]

    def pct(q: float, values: list[float] = lat) -> float:
        return values[int(q * (len(values) - 1))]

    # Per hop: the producer's enqueue call (stamp -> return, its commit's flush included),
    # and whether the handler started before that call returned (the worker was handed
    # the job at the commit record, before the flush: migration 0014).
    calls = sorted((returned[int(ln[0])] - int(ln[7])) / 1e6 for ln in measured)
    early = sum(int(ln[6]) < returned[int(ln[0])] for ln in measured) / jobs

    last = lines[-1]
    return {
        "p50": pct(0.50),
        "p95": pct(0.95),
        "p99": pct(0.99),
        "wal_sync/job": (wal1 - wal0) / jobs,
        "exchanges/job": (int(last[2]) - int(first_warm[2])) / jobs,
        "gc2 in run": float(last[3]),
        "gc2 max ms": float(last[4]),
        # Jobs started from the enqueue's hand-off, not a wake-up and a claim (0011).
        "handed/job": sum(int(ln[5]) for ln in measured if len(ln) > 5) / jobs,
        "enqueue call p50": pct(0.50, calls),
        "enqueue call p99": pct(0.99, calls),
        "started before return": early,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--src", action="append", help="a tree holding conveyor/ (repeatable)")
    parser.add_argument("--jobs", type=int, default=500)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--port", type=int, default=5432, help="Postgres on 127.0.0.1")
    args = parser.parse_args()
    srcs = args.src or [str(Path(__file__).resolve().parents[1] / "src")]
    figures: dict[str, dict[str, list[float]]] = {src: {} for src in srcs}
    for rep in range(args.reps):
        for src in srcs:
            result = run_once(src, args.jobs, args.port)
            for name, value in result.items():
                figures[src].setdefault(name, []).append(value)
            print(f"rep {rep + 1}/{args.reps} {src}: " + ", ".join(
                f"{k} {v:.2f}" for k, v in result.items()), file=sys.stderr)  # fmt: skip

    def cell(values: list[float]) -> str:
        return f"{statistics.median(values):.2f} ({min(values):.2f}–{max(values):.2f})"

    names = list(next(iter(figures.values())))
    print("| tree | " + " | ".join(names) + " |")
    print("|---|" + "---|" * len(names))
    for src, f in figures.items():
        print(f"| {src} | " + " | ".join(cell(f[n]) for n in names) + " |")


if __name__ == "__main__":
    main()
