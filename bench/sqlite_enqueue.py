"""SQLite single-enqueue throughput: a plain sequential loop and N concurrent tasks.

    .venv/bin/python bench/sqlite_enqueue.py                       # this checkout
    .venv/bin/python bench/sqlite_enqueue.py --src /work/main/src --src src --reps 5
    .venv/bin/python bench/sqlite_enqueue.py --query '?synchronous=normal'   # also NORMAL

Each rep runs every `--src` tree (its ``conveyor`` package is imported from there) in a
fresh child process, alternating, on a fresh ``sqlite:///`` file in a temporary directory
(``synchronous=FULL``, as shipped): `--jobs` awaited ``app.enqueue`` calls one after the
other, then the same number spread over `--concurrency` tasks (``asyncio.gather``). The
table gives the median (min–max) jobs/s per tree; compare trees only within one run.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = r"""
import asyncio, json, sys, time
from conveyor import Conveyor

async def main(url, n, conc):
    app = Conveyor(url)

    @app.task("job", queue="bench")
    async def job(j):
        pass

    await app.connect()
    await app.enqueue("job", {"i": -1})  # open, migrate, warm up
    out = {}
    t0 = time.perf_counter()
    for i in range(n):
        await app.enqueue("job", {"i": i})
    out["sequential"] = n / (time.perf_counter() - t0)

    async def worker(k):
        for i in range(n // conc):
            await app.enqueue("job", {"i": i})

    t0 = time.perf_counter()
    await asyncio.gather(*(worker(k) for k in range(conc)))
    out["concurrent"] = (n // conc) * conc / (time.perf_counter() - t0)
    await app.close()
    print(json.dumps(out))

asyncio.run(main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3])))
"""


def run_once(src: str, jobs: int, concurrency: int, query: str = "") -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="conveyor-bench-") as tmp:
        url = f"sqlite:///{Path(tmp) / 'bench.db'}{query}"
        env = {**os.environ, "PYTHONPATH": str(Path(src).resolve())}
        proc = subprocess.run(
            [sys.executable, "-c", CHILD, url, str(jobs), str(concurrency)],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
        result: dict[str, float] = json.loads(proc.stdout.strip().splitlines()[-1])
        return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--src", action="append", help="a tree holding conveyor/ (repeatable)")
    parser.add_argument("--jobs", type=int, default=5000)
    parser.add_argument("--concurrency", type=int, default=100)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument(
        "--query", action="append", default=[], help="also run each tree with this URL query"
    )
    args = parser.parse_args()
    srcs = args.src or [str(Path(__file__).resolve().parents[1] / "src")]
    cases = [(src, q) for src in srcs for q in ["", *args.query]]
    figures: dict[str, dict[str, list[float]]] = {src + q: {} for src, q in cases}
    for rep in range(args.reps):
        for src, q in cases:
            try:
                measured = run_once(src, args.jobs, args.concurrency, q)
            except subprocess.CalledProcessError as exc:  # e.g. a tree without that option
                print(f"{src}{q} failed: {exc.stderr.strip().splitlines()[-1]}", file=sys.stderr)
                continue
            for key, value in measured.items():
                figures[src + q].setdefault(key, []).append(value)
            print(f"rep {rep + 1}/{args.reps} {src}{q} done", file=sys.stderr)

    def cell(values: list[float]) -> str:
        return f"{statistics.median(values):,.0f} ({min(values):,.0f}–{max(values):,.0f})"

    print(f"| src | sequential (jobs/s, n={args.jobs:,}) "
          f"| {args.concurrency} concurrent tasks (jobs/s) |")  # fmt: skip
    print("|---|---|---|")
    for src, f in figures.items():
        if not f:
            print(f"| {src} | failed | failed |")
            continue
        print(f"| {src} | {cell(f['sequential'])} | {cell(f['concurrent'])} |")


if __name__ == "__main__":
    main()
