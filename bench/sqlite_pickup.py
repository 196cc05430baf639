"""SQLite cross-process pickup latency (W2's protocol, without Redis), per source tree.

    .venv/bin/python bench/sqlite_pickup.py --src /work/main/src --src src --reps 3
    .venv/bin/python bench/sqlite_pickup.py --query '?synchronous=normal'   # also NORMAL

Each rep runs every `--src` tree in turn (its ``conveyor`` package imported from there) on a
fresh ``sqlite:///`` file: one ``conveyor worker`` process (concurrency 50), warmed with 20
jobs, then a producer process enqueues `--jobs` jobs 5 ms apart, each carrying
``time.time_ns()`` taken just before its ``enqueue`` call; the handler appends
start − enqueue to a file. The producer's commit (an fsync) is inside the figure, as in W2.
Alongside, the raw cost (p50, p99) of one ``synchronous=FULL`` commit of one row on the same
disk, so a run on a loaded machine can be read against its own fsync time.
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

APP = """
import os, time
from conveyor import Conveyor, Job
app = Conveyor(os.environ["BENCH_URL"])
OUT = os.environ["BENCH_OUT"]

@app.task("job", queue="bench")
async def job(job: Job) -> None:
    start = time.time_ns()
    with open(OUT, "a") as f:
        f.write(f"{start - int(job.payload['t'])}\\n")
"""

PRODUCER = """
import asyncio, os, sys, time
from bench_app import app
async def main(n, warm):
    await app.connect()
    for i in range(warm):
        await app.enqueue("job", {"t": time.time_ns()})
    await asyncio.sleep(float(sys.argv[3]))
    for i in range(n):
        await app.enqueue("job", {"t": time.time_ns()})
        await asyncio.sleep(0.005)
    await app.close()
asyncio.run(main(int(sys.argv[1]), int(sys.argv[2])))
"""

WARM = 20


def raw_commit_ms(directory: Path, n: int = 300) -> tuple[float, float]:
    """p50 and p99 time of one synchronous=FULL WAL commit of one row, in ms."""
    conn = sqlite3.connect(directory / "raw.db", isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = FULL")
    conn.execute("CREATE TABLE t (a)")
    times = []
    for i in range(n):
        t0 = time.perf_counter()
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("INSERT INTO t VALUES (?)", (i,))
        conn.execute("COMMIT")
        times.append(time.perf_counter() - t0)
    conn.close()
    times.sort()
    return times[n // 2] * 1000, times[int(0.99 * (n - 1))] * 1000


def tree_env(src: str, d: Path, app: str, url: str) -> tuple[dict[str, str], Path]:
    """Write `app` to `d`/bench_app.py; returns the environment that imports `src`'s
    ``conveyor`` and that app on `url`, and the file its handler writes to."""
    (d / "bench_app.py").write_text(textwrap.dedent(app))
    out = d / "latency.txt"
    env = {
        **os.environ,
        "PYTHONPATH": f"{Path(src).resolve()}{os.pathsep}{d}",
        "BENCH_URL": url,
        "BENCH_OUT": str(out),
    }
    return env, out


def run_once(src: str, jobs: int, query: str = "") -> list[float]:
    with tempfile.TemporaryDirectory(prefix="conveyor-pickup-") as tmp:
        d = Path(tmp)
        env, out = tree_env(src, d, APP, f"sqlite:///{d / 'bench.db'}{query}")
        worker = subprocess.Popen(
            [sys.executable, "-m", "conveyor", "worker", "bench_app:app", "--queues", "bench",
             "--concurrency", "50", "--health-port", "0", "--log-level", "WARNING"],
            env=env, cwd=d, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        try:
            subprocess.run(
                [sys.executable, "-c", PRODUCER, str(jobs), str(WARM), "1.0"],
                env=env, cwd=d, check=True, timeout=300, capture_output=True,
            )  # fmt: skip
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                lines = out.read_text().split() if out.exists() else []
                if len(lines) >= WARM + jobs:
                    return [int(x) / 1e6 for x in lines[WARM:]]
                time.sleep(0.05)
            raise SystemExit(f"{src}: the worker did not finish; stderr:\n{worker.stderr}")
        finally:
            worker.terminate()
            worker.wait(30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--src", action="append", help="a tree holding conveyor/ (repeatable)")
    parser.add_argument("--jobs", type=int, default=500)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument(
        "--query", action="append", default=[], help="also run each tree with this URL query"
    )
    args = parser.parse_args()
    srcs = args.src or [str(Path(__file__).resolve().parents[1] / "src")]
    cases = [(src, q) for src in srcs for q in ["", *args.query]]
    figures: dict[str, dict[str, list[float]]] = {src + q: {} for src, q in cases}
    raw: list[tuple[float, float]] = []
    for rep in range(args.reps):
        with tempfile.TemporaryDirectory(prefix="conveyor-raw-") as tmp:
            raw.append(raw_commit_ms(Path(tmp)))
        for src, query in cases:
            try:
                lat = sorted(run_once(src, args.jobs, query))
            except subprocess.CalledProcessError:  # e.g. a tree without that option
                print(f"{src}{query} failed", file=sys.stderr)
                continue
            f = figures[src + query]
            for name, q in (("p50", 0.50), ("p95", 0.95), ("p99", 0.99)):
                f.setdefault(name, []).append(lat[int(q * (len(lat) - 1))])
            print(f"rep {rep + 1}/{args.reps} {src}{query}: p50 {f['p50'][-1]:.2f} "
                  f"p99 {f['p99'][-1]:.2f} ms", file=sys.stderr)  # fmt: skip

    def cell(values: list[float]) -> str:
        return f"{statistics.median(values):.2f} ({min(values):.2f}–{max(values):.2f})"

    print(f"raw synchronous=FULL commit of one row, ms: p50 {cell([r[0] for r in raw])}, "
          f"p99 {cell([r[1] for r in raw])}\n")  # fmt: skip
    print(f"| src | W2 p50 (ms) | W2 p95 (ms) | W2 p99 (ms) | n={args.jobs} × {args.reps} reps |")
    print("|---|---|---|---|---|")
    for src, f in figures.items():
        if not f:
            print(f"| {src} | failed | failed | failed | |")
            continue
        print(f"| {src} | {cell(f['p50'])} | {cell(f['p95'])} | {cell(f['p99'])} | |")


if __name__ == "__main__":
    main()
