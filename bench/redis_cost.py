"""Redis hot-path cost: what Conveyor's scripts cost Redis per job, on a private redis-server.

Not the peer benchmark (`bench/run`): Conveyor alone, counted by Redis itself (INFO
commandstats and used_cpu_sys + used_cpu_user deltas), so the figures hold on a loaded machine
better than wall-clock rates do. Compare checkouts with PYTHONPATH, alternating runs:

    .venv/bin/python bench/redis_cost.py w0            # single enqueue: Redis CPU, commands
    .venv/bin/python bench/redis_cost.py bulk          # enqueue_many(10,000): calls, ms per call
    .venv/bin/python bench/redis_cost.py w1 --concurrency 50,100,200,500
    .venv/bin/python bench/redis_cost.py w2            # pickup latency, one-hop pickup on/off
    .venv/bin/python bench/redis_cost.py preludes      # shared Lua per call: whole vs assembled
    .venv/bin/python bench/redis_cost.py memory        # bytes per pending / completed job, by part
    PYTHONPATH=/path/to/other/src .venv/bin/python bench/redis_cost.py w0
    .venv/bin/python bench/redis_cost.py w0 --no-events   # the queue has events=False

`w2` runs the worker in a child process (`_w2_worker`), jobs enqueued 10 ms apart; latency is
handler start minus the time stamped just before `enqueue`. `--no-pickup` turns the one-hop
pickup off in that worker (its engine never calls `accept_handoffs`).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from importlib import resources
from pathlib import Path
from typing import Any, cast

import redis

from conveyor import Conveyor, Job, Worker

sys.path.insert(0, str(Path(__file__).resolve().parent))
from w1_quick import start_redis  # bench/ is not a package

QUEUE = "bench"


EVENTS = True  # --no-events: the queue is declared with events=False (no event log)


def app_on(url: str) -> Conveyor:
    app = Conveyor(url)
    if not EVENTS:
        app.limits(QUEUE, events=False)

    @app.task("job", queue=QUEUE, max_attempts=1)
    async def job(job: Job) -> None:
        return None

    return app


class Counter:
    """Redis's own count of commands and CPU, as deltas."""

    def __init__(self, url: str) -> None:
        self.r = redis.Redis.from_url(url.split("?")[0], decode_responses=True)

    def reset(self) -> None:
        self.r.config_resetstat()
        cpu = self.r.info("cpu")
        self.cpu0 = cpu["used_cpu_sys"] + cpu["used_cpu_user"]

    def read(self) -> tuple[float, dict[str, Any]]:
        cpu = self.r.info("cpu")
        stats = self.r.info("commandstats")
        return cpu["used_cpu_sys"] + cpu["used_cpu_user"] - self.cpu0, stats


def commands(stats: dict[str, Any]) -> tuple[int, int]:
    """(EVALSHA calls, commands run inside scripts or alone, INFO/CONFIG left out)."""
    evalsha = int(stats.get("cmdstat_evalsha", {}).get("calls", 0))
    other = sum(
        int(v["calls"])
        for k, v in stats.items()
        if k not in ("cmdstat_evalsha", "cmdstat_info", "cmdstat_config")
    )
    return evalsha, other


async def w0(url: str, n: int) -> None:
    app = app_on(url)
    await app.connect()
    counter = Counter(url)
    for _ in range(100):  # warm: scripts loaded, queue known
        await app.enqueue("job", {"t": 0, "s": 0})
    counter.reset()
    t0, p0 = time.perf_counter(), time.process_time()
    for _ in range(n):
        await app.enqueue("job", {"t": 0, "s": 0})
    wall, client = time.perf_counter() - t0, time.process_time() - p0
    cpu, stats = counter.read()
    evalsha, inside = commands(stats)
    print(
        f"W0 single x{n}: {n / wall:,.0f} jobs/s; Redis CPU {cpu / n * 1e6:.1f} us/enqueue "
        f"(EVALSHA {stats['cmdstat_evalsha']['usec_per_call']:.1f} us/call); commands "
        f"{(evalsha + inside) / n:.2f}/enqueue; client CPU {client / n * 1e6:.0f} us/enqueue"
    )
    await app.purge(QUEUE)
    await app.close()


async def bulk(url: str, n: int) -> None:
    app = app_on(url)
    await app.connect()
    await app.enqueue_many([{"task": "job", "payload": {"t": 0, "s": 0}}] * 100)
    items = [{"task": "job", "payload": {"t": 0, "s": 0}} for _ in range(n)]
    counter = Counter(url)
    counter.reset()
    t0 = time.perf_counter()
    await app.enqueue_many(items)
    wall = time.perf_counter() - t0
    cpu, stats = counter.read()
    ev = stats["cmdstat_evalsha"]
    print(
        f"enqueue_many({n:,}): {n / wall:,.0f} jobs/s; {ev['calls']} script calls, "
        f"{ev['usec_per_call'] / 1000:.1f} ms each; Redis CPU {cpu / n * 1e6:.1f} us/job"
    )
    await app.purge(QUEUE)
    await app.close()


async def w1(url: str, n: int, concurrency: int) -> None:
    app = app_on(url)
    await app.purge(QUEUE)
    for start in range(0, n, 1000):
        count = min(1000, n - start)
        await app.enqueue_many([{"task": "job", "payload": {"t": 0, "s": 0}}] * count)
    worker = Worker(app, queues=(QUEUE,), concurrency=concurrency, burst=True, close_app=False)
    counter = Counter(url)
    counter.reset()
    t0 = time.perf_counter()
    await worker.run()
    wall = time.perf_counter() - t0
    cpu, stats = counter.read()
    done = (await app.counts(QUEUE)).completed
    evalsha, inside = commands(stats)
    print(
        f"W1 concurrency {concurrency}: {done / wall:,.0f} jobs/s; commands/job "
        f"{(evalsha + inside) / done:.2f} ({evalsha / done:.3f} EVALSHA); "
        f"Redis CPU {cpu / done * 1e6:.1f} us/job"
    )
    calls = {k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in stats.items()}
    print(
        "  per job: "
        + ", ".join(
            f"{name} {n / done:.2f}"
            for name, n in sorted(calls.items(), key=lambda kv: -kv[1])
            if n / done >= 0.005 and name not in ("info", "config|resetstat")
        )
    )
    await app.purge(QUEUE)
    await app.close()


def _parts(r: redis.Redis, tag: str, ids: list[str], state: str, n: int, used: float) -> str:
    """One line: bytes per job by used_memory, and `MEMORY USAGE` of a job hash (mean over
    `ids`), of the state's zset and of the events stream (each over n)."""
    keys = [f"{tag}:job:{i}" for i in ids]
    job = statistics.mean(int(r.memory_usage(k, samples=0) or 0) for k in keys)
    zset = int(r.memory_usage(f"{tag}:{state}", samples=0) or 0) / n
    fifo = int(r.memory_usage(f"{tag}:fifo", samples=0) or 0) / n  # pending at priority 0
    events = int(r.memory_usage(f"{tag}:events", samples=0) or 0) / n
    return (
        f"{state} x{n:,}: {used:.0f} B/job (used_memory); job hash {job:.0f} B "
        f"({r.object('encoding', keys[0])}, fields {sorted(r.hkeys(keys[0]))}), "
        f"{state} zset {zset:.0f} B/job, fifo list {fifo:.0f} B/job, "
        f"events stream {events:.0f} B/job; id {ids[0]!r}"
    )


async def memory(url: str, n: int) -> None:
    """Bytes per job: Δ used_memory after enqueue_many(n) (pending) and after a worker ran
    them all (completed), and `MEMORY USAGE` of each part: a job hash (mean of 200), the
    state's zset and the events stream (over n)."""
    app = app_on(url)
    await app.connect()
    await app.purge(QUEUE)
    r = redis.Redis.from_url(url.split("?")[0], decode_responses=True)
    tag = f"{{{url.split('prefix=')[1]}:{QUEUE}}}"
    await app.enqueue("job", {"t": 0, "s": 0})  # the queue's own keys exist before m0
    await app.purge(QUEUE)
    await asyncio.sleep(0.2)
    m0 = int(r.info("memory")["used_memory"])
    for start in range(0, n, 1000):
        count = min(1000, n - start)
        await app.enqueue_many([{"task": "job", "payload": {"t": 0, "s": 0}}] * count)
    used = (int(r.info("memory")["used_memory"]) - m0) / n
    # Pending jobs at priority 0 are in the fifo list (seq, then the id less "<queue>:"),
    # on main in the zset.
    ids = cast(list[str], r.zrange(f"{tag}:pending", 0, 199)) or [
        f"{QUEUE}:{e}" for e in cast(list[str], r.lrange(f"{tag}:fifo", 0, 399))[1::2]
    ]
    print(_parts(r, tag, ids, "pending", n, used))
    worker = Worker(app, queues=(QUEUE,), concurrency=50, burst=True, close_app=False)
    await worker.run()
    await asyncio.sleep(0.2)
    used = (int(r.info("memory")["used_memory"]) - m0) / n
    print(_parts(r, tag, ids, "completed", n, used))
    await app.purge(QUEUE)
    await app.close()


async def produce(url: str, n: int) -> dict[str, int]:
    """Enqueue n latency jobs 10 ms apart; how the enqueue replies found them."""
    app = Conveyor(url)

    @app.task("lat", queue=QUEUE, max_attempts=1)
    async def lat(job: Job) -> None:
        return None

    states: dict[str, int] = {}
    for _ in range(n):
        job = await app.enqueue("lat", {"t": time.time_ns()})
        states[job.state.value] = states.get(job.state.value, 0) + 1
        await asyncio.sleep(0.01)
    await app.close()
    return states


def w2(url: str, n: int, pickup: bool) -> None:
    r = redis.Redis.from_url(url.split("?")[0])
    r.delete("bench:lat")
    argv = [sys.executable, __file__, "_w2_worker", "--url", url]
    worker = subprocess.Popen([*argv, *([] if pickup else ["--no-pickup"])])
    try:
        time.sleep(3)  # started and idle
        states = asyncio.run(produce(url, n))
        deadline = time.monotonic() + 30
        while int(r.llen("bench:lat")) < n and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        worker.terminate()
        worker.wait(10)
    ms = sorted(int(x) / 1e6 for x in r.lrange("bench:lat", 0, -1))
    q = statistics.quantiles(ms, n=100)
    print(
        f"W2 pickup {'on ' if pickup else 'off'} x{len(ms)}: p50 {q[49]:.2f} ms, p95 "
        f"{q[94]:.2f}, p99 {q[98]:.2f}; enqueue replies {states}",
        flush=True,
    )


def w2_worker(url: str, pickup: bool) -> None:
    if not pickup:
        from conveyor.engines.redis import RedisEngine

        RedisEngine.accept_handoffs = lambda *args: None  # type: ignore[method-assign]
    app = Conveyor(url)
    r = redis.Redis.from_url(url.split("?")[0])

    @app.task("lat", queue=QUEUE, max_attempts=1)
    async def lat(job: Job) -> None:
        r.rpush("bench:lat", time.time_ns() - int(job.payload["t"]))

    worker = Worker(app, queues=(QUEUE,), concurrency=10, close_app=True)
    loop = asyncio.new_event_loop()
    loop.add_signal_handler(signal.SIGTERM, worker.stop)
    loop.run_until_complete(worker.run())


def preludes(url: str, n: int) -> None:
    """What the shared Lua costs per call by itself: each hot script's shared part
    followed by `return 1`, whole (every definition, as before assembly.py) and as
    assembled (only what the script uses), pipelined, by Redis's usec_per_call."""
    from conveyor.engines.redis import connection

    r = redis.Redis.from_url(url.split("?")[0])
    keys = [f"{{cost:q}}:k{i}" for i in range(24)]
    header = ["ch", "10000", "q", ""]
    for name in ("enqueue", "exchange"):
        shared = connection._shared(name)
        whole = "\n".join(d.text for d in shared) + "\nreturn 1"
        code = connection._script_source(name)
        own = (resources.files(connection.__package__) / "lua" / f"{name}.lua").read_text()
        assembled = code[: code.index(own)] + "\nreturn 1"
        for label, text in (("whole", whole), ("assembled", assembled), ("none", "return 1")):
            sha = r.script_load(text)
            r.config_resetstat()
            pipe = r.pipeline(transaction=False)
            for _ in range(n):
                pipe.evalsha(sha, len(keys), *keys, *header)
            pipe.execute()
            usec = r.info("commandstats")["cmdstat_evalsha"]["usec_per_call"]
            print(
                f"{name} shared Lua, {label:>9}: {usec:.2f} us/call "
                f"({text.count(chr(10)) + 1} lines)"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "what", choices=("w0", "bulk", "w1", "w2", "preludes", "memory", "_w2_worker")
    )
    parser.add_argument("--url", help="an existing Redis (default: a private redis-server)")
    parser.add_argument("--jobs", type=int, default=0, help="default: 5,000 / 10,000 / 400")
    parser.add_argument("--concurrency", default="50,100,200,500")
    parser.add_argument("--no-pickup", action="store_true")
    parser.add_argument("--no-events", action="store_true", help="w0/bulk/w1: events=False")
    parser.add_argument("--runs", type=int, default=2, help="w2: on/off pairs")
    args = parser.parse_args()
    global EVENTS
    EVENTS = not args.no_events
    if args.what == "_w2_worker":
        w2_worker(args.url, not args.no_pickup)
        return
    with tempfile.TemporaryDirectory(prefix="redis-cost-") as tmp:
        proc = None
        url = args.url
        if url is None:
            proc, url = start_redis(Path(tmp))
        url = f"{url}?prefix=cost{os.getpid()}"
        try:
            if args.what == "w0":
                asyncio.run(w0(url, args.jobs or 5_000))
            elif args.what == "preludes":
                preludes(url, args.jobs or 20_000)
            elif args.what == "memory":
                asyncio.run(memory(url, args.jobs or 50_000))
            elif args.what == "bulk":
                asyncio.run(bulk(url, args.jobs or 10_000))
            elif args.what == "w1":
                for c in (int(x) for x in args.concurrency.split(",")):
                    asyncio.run(w1(url, args.jobs or 10_000, c))
            else:
                for _ in range(args.runs):
                    w2(url, args.jobs or 400, True)
                    w2(url, args.jobs or 400, False)
        finally:
            if proc is not None:
                proc.kill()
                proc.wait(10)


if __name__ == "__main__":
    main()
