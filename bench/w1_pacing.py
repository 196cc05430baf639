"""W1 pacing probe (issue 15, point 5): one worker in burst mode over N pre-enqueued jobs,
with counts that do not depend on the machine's load.

    python bench/w1_pacing.py fill URL N                          enqueue N jobs (not measured)
    python bench/w1_pacing.py run URL C [--count] [--marker] [--eager]   run; print JSON

Enqueueing is a separate process so that `valgrind --tool=callgrind` (bench/w1_pacing.sh)
counts the worker only; N jobs minus N/2 jobs removes start-up. `--count` wraps the event
loop's `_run_once`, the engine's exchange and heartbeat and the lane's writes and reads to
count them (leave it off under callgrind). `reads_2plus`: reads of the lane that brought two
or more replies (two exchanges answered together). `--marker`: the handler does the fair
protocol's `INCR` marker (peers/_common.py). `--eager`: an experiment, every lane call is
written at once. Compare checkouts with PYTHONPATH=/path/to/src.
"""

# ruff: noqa
import asyncio, json, os, sys, time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/ is not a package
from conveyor import Conveyor, Job, Worker

QUEUE = "bench"
mode, url = sys.argv[1], sys.argv[2]
MARKER = "--marker" in sys.argv
COUNT = "--count" in sys.argv
os.environ["BENCH_REDIS_URL"] = url


def app_on() -> Conveyor:
    app = Conveyor(url)
    if MARKER:
        from peers._common import mark_done_async

        @app.task("job", queue=QUEUE, max_attempts=1)
        async def job(job: Job) -> None:
            await mark_done_async(0, 0)
    else:

        @app.task("job", queue=QUEUE, max_attempts=1)
        async def job(job: Job) -> None:
            return None

    return app


async def fill(n: int) -> None:
    app = app_on()
    await app.purge(QUEUE)
    for start in range(0, n, 1000):
        count = min(1000, n - start)
        await app.enqueue_many([{"task": "job", "payload": {"t": 0, "s": 0}}] * count)
    await app.close()


c = {
    "run_once": 0,
    "exchanges": 0,
    "outcomes": 0,
    "limit": 0,
    "claimed": 0,
    "flushes": 0,
    "heartbeats": 0,
    "max_running": 0,
    "wake_sets": 0,
    "lane_cmds": 0,
    "reads": 0,
    "reads_2plus": 0,
    "jobs": 0,
    "serial_jobs": 0,
}


def instrument() -> None:
    import asyncio.base_events as be
    from conveyor.engines.redis.flow import RedisFlow
    from conveyor.engines.redis import lane
    from conveyor.worker import runtime  # Worker lives here (mixins)

    orig_run_once = be.BaseEventLoop._run_once

    def run_once(self):
        c["run_once"] += 1
        return orig_run_once(self)

    be.BaseEventLoop._run_once = run_once

    orig_ex = RedisFlow.exchange

    async def exchange(self, outcomes, **kw):
        c["exchanges"] += 1
        c["outcomes"] += len(outcomes)
        c["limit"] += kw["limit"]
        r = await orig_ex(self, outcomes, **kw)
        c["claimed"] += len(r.jobs)
        return r

    RedisFlow.exchange = exchange

    orig_hb = RedisFlow.heartbeat

    async def heartbeat(self, *a, **kw):
        c["heartbeats"] += 1
        return await orig_hb(self, *a, **kw)

    RedisFlow.heartbeat = heartbeat

    # Jobs finished while Redis had no call of this lane to work on: from the moment the
    # lane's last outstanding reply arrived to the next write (work not overlapped).
    idle = {"mark": None}
    orig_flush = lane._Protocol._flush

    def flush(self):
        c["flushes"] += 1
        if self.out and idle["mark"] is not None:
            c["serial_jobs"] += c["jobs"] - idle["mark"]
            idle["mark"] = None
        return orig_flush(self)

    orig_count = runtime.Worker._count

    def count(self, kind, job):
        c["jobs"] += 1
        return orig_count(self, kind, job)

    runtime.Worker._count = count
    lane._Protocol._flush = flush

    orig_send = lane._Protocol.send

    def send(self, packed, **kw):
        c["lane_cmds"] += len(packed)
        return orig_send(self, packed, **kw)

    lane._Protocol.send = send

    orig_recv = lane._Protocol.data_received

    def data_received(self, data):
        before = len(self.waiters)
        orig_recv(self, data)
        got = before - len(self.waiters)
        if not self.waiters and got:
            idle["mark"] = c["jobs"]
        c["reads"] += 1
        if got >= 2:
            c["reads_2plus"] += 1

    lane._Protocol.data_received = data_received

    orig_start = runtime.Worker._start

    def start(self, job):
        orig_start(self, job)
        if len(self._running) > c["max_running"]:
            c["max_running"] = len(self._running)

    runtime.Worker._start = start


def eager() -> None:
    """Experiment: the lane writes each call at once instead of at the next loop turn."""
    from conveyor.engines.redis import lane

    orig_send = lane._Protocol.send

    def send(self, packed, **kw):
        futs = orig_send(self, packed, **kw)
        self._flush()
        return futs

    lane._Protocol.send = send


async def run(concurrency: int) -> None:
    if "--eager" in sys.argv:
        eager()
    import redis

    app = app_on()
    r = redis.Redis.from_url(url)
    n = (await app.counts(QUEUE)).pending
    if COUNT:
        instrument()
    worker = Worker(app, queues=(QUEUE,), concurrency=concurrency, burst=True, close_app=False)
    r.config_resetstat()
    cpu0 = time.process_time()
    t0 = time.perf_counter()
    await worker.run()
    wall = time.perf_counter() - t0
    cpu = time.process_time() - cpu0
    stats = r.info("commandstats")
    net = r.info("stats")["total_net_input_bytes"]
    done = (await app.counts(QUEUE)).completed
    await app.close()
    calls = {
        k[8:]: v["calls"]
        for k, v in stats.items()
        if k not in ("cmdstat_info", "cmdstat_config|resetstat", "cmdstat_config")
    }
    out = {
        "c": concurrency,
        "n": n,
        "done": done,
        "wall": wall,
        "cpu": cpu,
        "rate": done / wall,
        "cpu_us_job": cpu / done * 1e6,
        "net_in": net,
        "calls": calls,
        **c,
    }
    print(json.dumps(out))


if mode == "fill":
    asyncio.run(fill(int(sys.argv[3])))
else:
    asyncio.run(run(int(sys.argv[3])))
