"""Subprocess entry point run inside a peer's own virtualenv.

    python -m peers._runner <lib> enqueue --mode one|bulk --n N [--sleep-ms S]
                                          [--interval-ms I] [--stamp] [--warmup W]
    python -m peers._runner <lib> worker
    python -m peers._runner <lib> setup

``enqueue`` prints one JSON line: {"n", "t_start", "t_end", "elapsed_s"}; ``t_start``/``t_end``
are ``time.time()`` wall-clock values (the harness compares them with its own clock), and
``elapsed_s`` is the ``perf_counter`` time of the enqueue loop alone (client set-up excluded).
``worker`` calls the module's ``worker_main()`` for libraries without a worker CLI. ``setup``
calls the module's ``setup()`` once per run before any measurement (the Postgres libraries
create their schema in the run's database with it).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import inspect
import json
import time
from typing import Any


async def _call(fn: Any, *args: Any) -> Any:
    result = fn(*args)
    if inspect.isawaitable(result):
        result = await result
    return result


async def _enqueue(mod: Any, args: argparse.Namespace) -> dict[str, Any]:
    client = await _call(mod.connect)
    try:
        for _ in range(args.warmup):  # producer-side warm-up, unstamped, not timed
            await _call(mod.enqueue, client, 0, 0)
        n = args.n
        t_wall = time.time()
        t0 = time.perf_counter()
        if args.mode == "bulk":
            await _call(mod.enqueue_bulk, client, [(0, args.sleep_ms)] * n)
        elif args.interval_ms > 0:
            step = args.interval_ms / 1000
            for i in range(n):
                delay = t0 + i * step - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                stamp = time.time_ns() if args.stamp else 0
                await _call(mod.enqueue, client, stamp, args.sleep_ms)
        else:
            stamp_on = args.stamp
            for _ in range(n):
                await _call(mod.enqueue, client, time.time_ns() if stamp_on else 0, args.sleep_ms)
        elapsed = time.perf_counter() - t0
        return {"n": n, "t_start": t_wall, "t_end": time.time(), "elapsed_s": elapsed}
    finally:
        close = getattr(mod, "close", None)
        if close is not None:
            await _call(close, client)


def main() -> None:
    parser = argparse.ArgumentParser(prog="peers._runner")
    parser.add_argument("lib")
    sub = parser.add_subparsers(dest="cmd", required=True)
    enq = sub.add_parser("enqueue")
    enq.add_argument("--mode", choices=["one", "bulk"], default="one")
    enq.add_argument("--n", type=int, required=True)
    enq.add_argument("--sleep-ms", type=int, default=0)
    enq.add_argument("--interval-ms", type=float, default=0.0)
    enq.add_argument("--stamp", action="store_true")
    enq.add_argument("--warmup", type=int, default=0)
    sub.add_parser("worker")
    sub.add_parser("setup")
    args = parser.parse_args()
    mod = importlib.import_module(f"peers.{args.lib}")
    if args.cmd in ("worker", "setup"):
        result = mod.worker_main() if args.cmd == "worker" else mod.setup()
        if inspect.isawaitable(result):
            asyncio.run(result)
        return
    print(json.dumps(asyncio.run(_enqueue(mod, args))), flush=True)


if __name__ == "__main__":
    main()
