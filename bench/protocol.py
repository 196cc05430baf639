"""Fair benchmark protocol (issue 15, points 1, 7 and 8): `bench/run protocol [options]`.

`bench/run` (harness.py) measures every library once at its configured concurrency. This
script asks the questions that setting hides, on the same private redis-server, with the same
peers, completion marker and process handling (it imports harness.py):

* **sweep**: W1 (20,000 noop jobs pre-enqueued, one worker process) at concurrency 10, 50,
  100 and 200 for each library, reported both from spawn (interpreter start and imports
  count) and from the first completed job (start-up excluded), with the start-up (spawn to
  first completion) on its own; each library's best point is the concurrency with the highest
  from-first median. A **marker-only control** per runtime runs at the same concurrencies:
  the completion marker with no queue library (peers/_marker_control.py for Python's
  hand-pipelined RESP connection, peers/bullmq_node/marker.js for ioredis with
  enableAutoPipelining), the ceiling the marker puts on that runtime's rows.
* **headline**: Conveyor and BullMQ-node, each at its best concurrency, W1 in >= 5
  alternating reps (A B, B A, A B, ...: neither library always runs first); ratios per rep.
* **startup**: one job enqueued, then a worker spawned; spawn to that job's marker, 1 ms polls
  (the worker's whole start-up: interpreter, imports, connect, first claim), reps
  alternating between the libraries. Plus `python -X importtime` of the worker's entry
  path (`conveyor.cli.worker_start` and the Redis engine).
* **scale** (W4): W1 with 1, 2 and 4 worker processes at the best concurrency.
* **idle**: a Conveyor worker watching 50 empty queues; Redis commands/s from
  `INFO commandstats` over 10 s (after `CONFIG RESETSTAT`), by command; then again with its
  health server on, over 30 s (it samples 50 queues' depths every 25 s).
* **backlog**: Conveyor single enqueue (2,000 jobs) and claim (the first 20,000 jobs a worker
  runs, from its first completion) with an empty queue and with 1,000,000 pending jobs:
  jobs/s and Redis CPU µs per job.
* **memory**: Redis `used_memory` per pending job (after a bulk enqueue of 50,000) and per
  completed job (after a worker ran them all and stopped), Conveyor against BullMQ (with
  `removeOnComplete` as in the throughput runs, and keeping completed jobs like Conveyor).

The machine is shared: every part records the load average around it, and every ratio is
between figures of this run. The markdown replaces the section between the
`<!-- protocol:begin -->` and `<!-- protocol:end -->` lines of bench/RESULTS.md (appended if
absent), so the harness's and other sections stay as they are; raw figures go to
`bench/.peers/protocol-<time>.json`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import harness as h

SWEEP = (10, 50, 100, 200)
BURST_N = 20_000
IDLE_QUEUES = 50
IDLE_WINDOW_S = 10.0
# With the health server on: long enough to hold one depth sampling (worker/sampling.py,
# sample_interval: every 25 s on 50 queues), which a 10 s window may miss or catch.
IDLE_HEALTH_WINDOW_S = 30.0
IDLE_SETTLE_S = 3.0
BACKLOG_N = 1_000_000
BACKLOG_ENQUEUE_N = 2_000
BACKLOG_CLAIM_N = 20_000
MEMORY_N = 50_000
IDLE_GOAL = 100.0  # Redis commands/s of one idle worker on 50 queues (issue 15, point 8)
STARTUP_GOAL_S = 0.25  # issue 15, point 7
GROWTH_LIMIT = 1.25  # "does not grow": the 1M figure within 25% of the empty one (noise)
BEGIN, END = "<!-- protocol:begin -->", "<!-- protocol:end -->"
PARTS = ("sweep", "headline", "startup", "scale", "idle", "backlog", "memory")
HEADLINE = ("conveyor", "bullmq-node")

# The marker-only controls: "peers" whose worker is the completion marker alone.
MARKERS = {
    "python": h.Peer(
        "_marker_control",
        {
            "NAME": "marker-only (python)",
            "WORKER_ARGV": ["{python}", "-m", "peers._marker_control"],
            "PROCESSES": "spawn",
        },
    ),
    "node": h.Peer(
        "marker_node",
        {
            "NAME": "marker-only (node)",
            "RUNTIME": "node",
            "WORKER_ARGV": ["node", "{bench}/peers/bullmq_node/marker.js"],
            "PROCESSES": "spawn",
        },
    ),
}

Log = Callable[[str], None]


def load() -> str:
    one, five, _ = os.getloadavg()
    return f"{one:.2f}/{five:.2f}"


def med(values: list[float]) -> float:
    return statistics.median(values)


def cell(values: list[float] | None, digits: int = 0) -> str:
    if not values:
        return "–"
    return h.fmt_cell(values, digits)


# --------------------------------------------------------------------------- measurements


def burst(
    ctx: h.Ctx,
    peer: h.Peer,
    conc: int,
    processes: int = 1,
    n: int | None = None,
    *,
    marker: bool = False,
) -> dict[str, float]:
    """W1: n jobs pre-enqueued (none for a marker control), then `processes` workers.

    Returns jobs/s from spawn and from the first completion, the start-up (spawn to first
    completion), and Redis CPU µs and commands per job over the from-first window."""
    n = peer.burst_n(BURST_N) if n is None else n  # MAX_BURST caps the slow libraries
    ctx.flush()
    if not marker:
        ctx.fill(peer, n)
        if ctx.done() != 0:
            raise h.BenchError("jobs ran before any worker was started")
    with ctx.workload_env(BENCH_MARKER_N=str(n)) if marker else contextlib.nullcontext():
        t0 = time.time()
        workers = ctx.spawn(peer, "noop", conc, processes)
    try:
        t_first = ctx.wait_done(1, workers, t0)
        c_first = ctx.done()
        cmds0, cpu0 = h.redis_counters(ctx.r)
        polls0 = ctx.polls
        t_last = ctx.wait_done(n, workers, t0)
        cmds1, cpu1 = h.redis_counters(ctx.r)
    finally:
        workers.stop()
    window = n - c_first
    if window <= 0 or t_last <= t_first:
        raise h.BenchError("finished before a rate could be measured")
    own = ctx.polls - polls0 + 2  # the harness's GETs and one INFO pair
    return {
        "spawn": n / (t_last - t0),
        "first": window / (t_last - t_first),
        "startup": t_first - t0,
        "cpu": (cpu1 - cpu0) * 1e6 / window,
        "cmds": (cmds1 - cmds0 - own) / window,
    }


def startup_once(ctx: h.Ctx, peer: h.Peer, conc: int) -> float:
    """Spawn to the marker of the one job waiting, polled every millisecond."""
    ctx.flush()
    ctx.enqueue(peer, "one", 1)
    t0 = time.time()
    workers = ctx.spawn(peer, "noop", conc, 1)
    try:
        while ctx.done() < 1:
            if time.time() - t0 > ctx.timeout:
                raise h.BenchError("timeout")
            workers.check_alive()
            time.sleep(0.001)
        return time.time() - t0
    finally:
        workers.stop()


# What `conveyor worker` imports before its first claim: the command's module (typer-free
# for plain arguments since branch `startup`; `conveyor.cli.run` before).
WORKER_MODULE = "conveyor.cli.worker_start"


def importtime(python: Path) -> dict[str, Any]:
    """`python -X importtime` of what `conveyor worker` imports before its first claim on
    Redis (the command's module and the Redis engine): the total, the self time by
    top-level package, and which web modules it loads."""
    code = (
        f"import sys, {WORKER_MODULE}, conveyor.engines.redis\n"
        "print(sorted(m for m in ('fastapi', 'uvicorn', 'starlette', 'conveyor.api', "
        "'conveyor.dashboard', 'jinja2') if m in sys.modules))"
    )
    proc = subprocess.run(
        [str(python), "-X", "importtime", "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=h.BENCH,
    )
    by_package: dict[str, int] = {}
    total = 0
    for line in proc.stderr.splitlines():
        if not line.startswith("import time:") or "cumulative" in line:
            continue
        self_us, cum_us, name = line.removeprefix("import time:").split("|")
        module = name.strip()
        if len(name) - len(name.lstrip()) == 1:  # a top-level import: its subtree counts
            total += int(cum_us)
        # conveyor by subpackage (cli, worker, facade, ...), the rest by distribution
        parts = module.split(".")
        key = ".".join(parts[:2]) if parts[0] == "conveyor" else parts[0]
        by_package[key] = by_package.get(key, 0) + int(self_us)
    top = sorted(((us, name) for name, us in by_package.items()), reverse=True)[:10]
    return {"total_ms": total / 1000, "top": top, "web": proc.stdout.strip()}


def idle_commands(ctx: h.Ctx, peer: h.Peer, *, health: bool = False) -> dict[str, Any]:
    """A worker on IDLE_QUEUES empty queues: Redis commands/s over IDLE_WINDOW_S, or with
    its health server on (`health`) over IDLE_HEALTH_WINDOW_S."""
    ctx.flush()
    queues = ",".join(f"idle{i:02d}" for i in range(IDLE_QUEUES))
    [argv] = peer.worker_argvs(ctx.server.url, "noop", 50, 1)
    argv[argv.index("--queues") + 1] = queues
    window = IDLE_WINDOW_S
    if health:
        argv[argv.index("--health-port") + 1] = str(h.free_port())
        window = IDLE_HEALTH_WINDOW_S
    log = h.LOGS / "protocol-idle.log"
    h.LOGS.mkdir(parents=True, exist_ok=True)
    with log.open("wb") as fh:
        proc = subprocess.Popen(
            argv,
            cwd=h.BENCH,
            env=ctx.env(peer, 50, 1, 0),
            stdout=fh,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    h._LIVE.add(proc)
    workers = h.Workers([proc], [log])
    try:
        time.sleep(IDLE_SETTLE_S)
        workers.check_alive()
        ctx.r.config_resetstat()
        t0 = time.monotonic()
        time.sleep(window)
        stats = ctx.r.info("commandstats")
        elapsed = time.monotonic() - t0
        workers.check_alive()
    finally:
        workers.stop()
    calls = {
        key.removeprefix("cmdstat_"): int(value["calls"])
        for key, value in stats.items()
        if key.removeprefix("cmdstat_") not in ("info", "config|resetstat", "config")
    }
    return {"per_s": sum(calls.values()) / elapsed, "calls": calls, "window_s": elapsed}


def enqueue_cost(ctx: h.Ctx, peer: h.Peer, n: int) -> dict[str, float]:
    """n single enqueues: jobs/s of the producer's loop and Redis CPU µs per enqueue (the
    producer's connect and warm-up are outside the loop but inside the CPU window: a few
    commands over n)."""
    _, cpu0 = h.redis_counters(ctx.r)
    out = ctx.enqueue(peer, "one", n)
    _, cpu1 = h.redis_counters(ctx.r)
    return {"rate": n / out["elapsed_s"], "cpu": (cpu1 - cpu0) * 1e6 / n}


def claim_cost(ctx: h.Ctx, peer: h.Peer, conc: int, n: int) -> dict[str, float]:
    """A worker on whatever is pending: jobs/s and Redis CPU µs/job from its first completion
    to its n-th (the backlog may hold many more)."""
    t0 = time.time()
    workers = ctx.spawn(peer, "noop", conc, 1)
    try:
        t_first = ctx.wait_done(1, workers, t0)
        c_first = ctx.done()
        _, cpu0 = h.redis_counters(ctx.r)
        t_last = ctx.wait_done(n, workers, t0)
        _, cpu1 = h.redis_counters(ctx.r)
    finally:
        workers.stop()
    window = n - c_first
    return {"rate": window / (t_last - t_first), "cpu": (cpu1 - cpu0) * 1e6 / window}


def used_memory(ctx: h.Ctx) -> int:
    return int(ctx.r.info("memory")["used_memory"])


def memory_per_job(ctx: h.Ctx, peer: h.Peer, conc: int, n: int) -> dict[str, float]:
    ctx.flush()
    time.sleep(0.5)
    m0 = used_memory(ctx)
    ctx.fill(peer, n)
    m1 = used_memory(ctx)
    t0 = time.time()
    workers = ctx.spawn(peer, "noop", conc, 1)
    try:
        ctx.wait_done(n, workers, t0)
        time.sleep(1.0)  # the last acks land
    finally:
        workers.stop()
    time.sleep(0.5)  # the workers' client buffers are freed
    m2 = used_memory(ctx)
    return {"pending": (m1 - m0) / n, "completed": (m2 - m0) / n}


# --------------------------------------------------------------------------- orchestration


class Run:
    def __init__(self, ctx: h.Ctx, peers: dict[str, h.Peer], args: argparse.Namespace, log: Log):
        self.ctx, self.peers, self.args, self.log = ctx, peers, args, log
        self.raw: dict[str, Any] = {"loads": {}}

    @contextlib.contextmanager
    def part(self, name: str) -> Iterator[None]:
        before = load()
        self.log(f"== {name} (load {before})")
        try:
            yield
        finally:
            self.raw["loads"][name] = f"{before} → {load()}"

    def attempt(self, what: str, fn: Callable[[], Any]) -> Any:
        try:
            return fn()
        except h.BenchError as exc:
            self.log(f"   {what}: {exc}")
            return None

    def sweep(self) -> None:
        out: dict[str, dict[str, dict[str, list[float]]]] = {}
        subjects = [(p, False) for p in self.peers.values()]
        runtimes = {p.runtime for p in self.peers.values()}
        subjects += [(MARKERS[rt], True) for rt in ("python", "node") if rt in runtimes]
        for peer, marker in subjects:
            row = out.setdefault(peer.name, {})
            for conc in SWEEP:
                point = row.setdefault(str(conc), {})
                for rep in range(self.args.reps):
                    self.ctx.tag = f"sweep-c{conc}-r{rep}"
                    self.log(f"[{peer.name}] sweep c={conc} rep {rep + 1}/{self.args.reps}")
                    m = self.attempt(
                        peer.name, lambda p=peer, c=conc, k=marker: burst(self.ctx, p, c, marker=k)
                    )
                    for key, value in (m or {}).items():
                        point.setdefault(key, []).append(value)
        self.raw["sweep"] = out

    def best(self, name: str) -> int:
        """The library's best concurrency in the sweep (highest from-first median); its
        configured one when the sweep did not run."""
        row = self.raw.get("sweep", {}).get(name, {})
        scored = [(med(p["first"]), int(c)) for c, p in row.items() if p.get("first")]
        if scored:
            return max(scored)[1]
        peer = self.peers[name]
        return peer.concurrency("noop", 10)

    def headline(self) -> None:
        pair = [self.peers[n] for n in HEADLINE if n in self.peers]
        reps: list[dict[str, dict[str, float]]] = []
        for rep in range(self.args.headline_reps):
            order = pair if rep % 2 == 0 else pair[::-1]
            figures: dict[str, dict[str, float]] = {}
            for peer in order:
                conc = self.best(peer.name)
                self.ctx.tag = f"headline-r{rep}"
                self.log(f"[{peer.name}] headline rep {rep + 1} c={conc}")
                m = self.attempt(peer.name, lambda p=peer, c=conc: burst(self.ctx, p, c))
                if m:
                    figures[peer.name] = m | {"concurrency": conc}
            reps.append(figures)
        self.raw["headline"] = reps

    def startup(self) -> None:
        # Reps alternate between the libraries, so a burst of load on the shared machine
        # falls on all of them, not on one library's block of reps.
        out: dict[str, Any] = {name: [] for name in self.peers}
        for rep in range(self.args.headline_reps):
            for peer in self.peers.values():
                conc = self.best(peer.name)
                self.ctx.tag = f"startup-r{rep}"
                self.log(f"[{peer.name}] start-up rep {rep + 1}")
                t = self.attempt(peer.name, lambda p=peer, c=conc: startup_once(self.ctx, p, c))
                if t is not None:
                    out[peer.name].append(t)
        conveyor = self.peers.get("conveyor")
        if conveyor is not None and conveyor.python is not None:
            out["importtime"] = importtime(conveyor.python)
        self.raw["startup"] = out

    def scale(self) -> None:
        out: dict[str, dict[str, dict[str, list[float]]]] = {}
        for name in HEADLINE:
            peer = self.peers.get(name)
            if peer is None:
                continue
            conc = self.best(name)
            for procs in (1, 2, 4):
                point = out.setdefault(name, {}).setdefault(str(procs), {})
                for rep in range(self.args.reps):
                    self.ctx.tag = f"scale-p{procs}-r{rep}"
                    self.log(f"[{name}] W4 {procs} process(es) c={conc} rep {rep + 1}")
                    m = self.attempt(name, lambda p=peer, c=conc, k=procs: burst(self.ctx, p, c, k))
                    for key, value in (m or {}).items():
                        point.setdefault(key, []).append(value)
                point["concurrency"] = [conc]
        self.raw["scale"] = out

    def idle(self) -> None:
        peer = self.peers.get("conveyor")
        if peer is not None:
            self.raw["idle"] = self.attempt("idle", lambda: idle_commands(self.ctx, peer))
            self.raw["idle_health"] = self.attempt(
                "idle", lambda: idle_commands(self.ctx, peer, health=True)
            )

    def backlog(self) -> None:
        peer = self.peers.get("conveyor")
        if peer is None:
            return
        ctx, conc = self.ctx, self.best("conveyor")
        out: dict[str, Any] = {"concurrency": conc}
        timeout, ctx.timeout = ctx.timeout, max(ctx.timeout, 900.0)  # 1M jobs to enqueue
        for label in ("empty", "1M"):
            ctx.flush()
            if label == "1M":
                self.log(f"[conveyor] backlog: bulk-enqueueing {BACKLOG_N:,} jobs")
                ctx.enqueue(peer, "bulk", BACKLOG_N)
                out["pending_before"] = BACKLOG_N
            ctx.tag = f"backlog-{label}"
            self.log(f"[conveyor] backlog {label}: {BACKLOG_ENQUEUE_N:,} single enqueues")
            out[f"enqueue_{label}"] = self.attempt(
                "enqueue", lambda: enqueue_cost(ctx, peer, BACKLOG_ENQUEUE_N)
            )
            if label == "empty":  # the claim run needs its jobs; the 1M backlog has them
                ctx.fill(peer, BACKLOG_CLAIM_N)
            self.log(f"[conveyor] backlog {label}: claim {BACKLOG_CLAIM_N:,} c={conc}")
            out[f"claim_{label}"] = self.attempt(
                "claim", lambda: claim_cost(ctx, peer, conc, BACKLOG_CLAIM_N)
            )
        ctx.flush()
        ctx.timeout = timeout
        self.raw["backlog"] = out

    def memory(self) -> None:
        out: dict[str, Any] = {}
        for name in HEADLINE:
            peer = self.peers.get(name)
            if peer is None:
                continue
            variants = [("", {})]
            if peer.runtime == "node":
                variants.append((" (keeps completed)", {"BENCH_KEEP_COMPLETED": "1"}))
            for suffix, env in variants:
                self.log(f"[{name}{suffix}] memory, {MEMORY_N:,} jobs")
                with self.ctx.workload_env(**env):
                    out[name + suffix] = self.attempt(
                        name, lambda p=peer: memory_per_job(self.ctx, p, 50, MEMORY_N)
                    )
        self.raw["memory"] = out


# --------------------------------------------------------------------------- rendering


def verdict(ok: bool | None, reason: str) -> str:
    if ok is None:
        return "– (not measured)"
    return ("met" if ok else "not met") + (f": {reason}" if reason else "")


def render(raw: dict[str, Any], argv: list[str]) -> str:
    out = [
        BEGIN,
        "## Fair protocol: concurrency sweep, start-up, scale and size (issue 15, points 1, 7, 8)",
        "",
        f"Command: `bench/run protocol {' '.join(argv)}`, written by `bench/protocol.py` "
        f"(raw figures: `bench/.peers/{raw['raw_file']}`). One private redis-server "
        f"{raw['machine']['Redis']}, {raw['machine']['cores (nproc)']} cores, "
        f"{raw['machine']['date (UTC)']} UTC. The load average (1/5 min) before and after "
        "each part is below: on a shared machine absolute figures are low and noisy, so read "
        "the ratios between libraries measured in this run, never against another run. "
        "Figures are medians (min–max) of the reps.",
        "",
        "| part | load before → after |",
        "|---|---|",
        *(f"| {k} | {v} |" for k, v in raw["loads"].items()),
        "",
    ]
    goals: list[tuple[str, str]] = []
    sweep = raw.get("sweep")
    if sweep:
        rows = []
        best_rows = []
        for name, row in sweep.items():
            scored = [(med(p["first"]), c) for c, p in row.items() if p.get("first")]
            best_c = max(scored)[1] if scored else None
            for conc, p in row.items():
                mark = " **best**" if conc == best_c else ""
                rows.append(
                    [
                        name,
                        f"{conc}{mark}",
                        cell(p.get("spawn")),
                        cell(p.get("first")),
                        cell(p.get("startup"), 3),
                        cell(p.get("cpu"), 1),
                        cell(p.get("cmds"), 2),
                    ]
                )
            if best_c is not None:
                bp = row[best_c]
                best_rows.append([name, best_c, cell(bp.get("first")), cell(bp.get("spawn"))])
        out += [
            f"### W1 concurrency sweep ({BURST_N:,} noop jobs, one worker process)",
            "",
            "From spawn: n / (last marker − spawn). From first job: (n − markers seen at the "
            "first one) / (last − first): start-up excluded. Start-up: spawn to the first "
            "marker seen (5 ms polls). Redis CPU and commands per job over the from-first "
            "window, the marker's `INCR` included. The marker-only rows run no queue library: "
            "the marker alone, at that concurrency, on that runtime.",
            "",
            h.md_table(
                [
                    "library",
                    "concurrency",
                    "W1 from spawn (jobs/s)",
                    "W1 from first job (jobs/s)",
                    "start-up in the burst (s)",
                    "Redis CPU µs/job",
                    "Redis cmds/job",
                ],
                rows,
            ),
            "",
            "Best point of each (highest from-first median):",
            "",
            h.md_table(
                ["library", "best concurrency", "from first job", "from spawn"],
                [[n, str(c), f, s] for n, c, f, s in best_rows],
            ),
            "",
        ]
    headline = raw.get("headline")
    if headline:
        rows = []
        ratios_first, ratios_spawn = [], []
        for i, rep in enumerate(headline, 1):
            a, b = rep.get(HEADLINE[0]), rep.get(HEADLINE[1])
            rf = a["first"] / b["first"] if a and b else None
            rs = a["spawn"] / b["spawn"] if a and b else None
            if rf is not None and rs is not None:
                ratios_first.append(rf)
                ratios_spawn.append(rs)
            order = " → ".join(rep)
            rows.append(
                [
                    str(i),
                    order,
                    *(h.fmt_num(x[k], 0) if x else "–" for x in (a, b) for k in ("first", "spawn")),
                    f"{rf:.2f}×" if rf else "–",
                    f"{rs:.2f}×" if rs else "–",
                ]
            )
        concs = {n: next((r[n]["concurrency"] for r in headline if n in r), "?") for n in HEADLINE}
        out += [
            f"### Headline pair: {HEADLINE[0]} (c={concs[HEADLINE[0]]}) against "
            f"{HEADLINE[1]} (c={concs[HEADLINE[1]]}), W1, {len(headline)} alternating reps",
            "",
            "Each at its best concurrency from the sweep; the order flips every rep.",
            "",
            h.md_table(
                [
                    "rep",
                    "order",
                    f"{HEADLINE[0]} from first",
                    f"{HEADLINE[0]} from spawn",
                    f"{HEADLINE[1]} from first",
                    f"{HEADLINE[1]} from spawn",
                    "ratio from first",
                    "ratio from spawn",
                ],
                rows,
            ),
            "",
        ]
        if ratios_first:
            out += [
                f"Median ratio {HEADLINE[0]} / {HEADLINE[1]}: from the first job "
                f"**{med(ratios_first):.2f}×** ({min(ratios_first):.2f}–"
                f"{max(ratios_first):.2f}), from spawn **{med(ratios_spawn):.2f}×** "
                f"({min(ratios_spawn):.2f}–{max(ratios_spawn):.2f}).",
                "",
            ]
            goals.append(
                (
                    "W1 ≥ bullmq-node (headline pair, from the first job / from spawn)",
                    verdict(
                        med(ratios_first) >= 1 and med(ratios_spawn) >= 1,
                        f"{med(ratios_first):.2f}× / {med(ratios_spawn):.2f}×",
                    ),
                )
            )
    startup = raw.get("startup")
    if startup:
        rows = [
            [name, str(len(times)), cell(times, 3)]
            for name, times in startup.items()
            if name != "importtime"
        ]
        out += [
            "### Start-up on its own",
            "",
            "One job waiting; spawn to its marker, polled every 1 ms: the interpreter, the "
            "imports, the connection and the first claim.",
            "",
            h.md_table(["library", "reps", "spawn → first job done (s)"], rows),
            "",
        ]
        it = startup.get("importtime")
        if it:
            top = ", ".join(f"{name} {us / 1000:.0f} ms" for us, name in it["top"])
            out += [
                f"`python -X importtime -c 'import {WORKER_MODULE}, conveyor.engines.redis'` "
                f"(what `conveyor worker` imports before its first claim on Redis): "
                f"{it['total_ms']:.0f} ms in all (importtime's own overhead included); self "
                f"time by package: {top}. Web modules loaded: {it['web']}.",
                "",
            ]
        ours = startup.get("conveyor")
        if ours:
            goals.append(
                (
                    f"worker start-up ≤ {STARTUP_GOAL_S} s",
                    verdict(med(ours) <= STARTUP_GOAL_S, f"median {med(ours):.3f} s"),
                )
            )
    scale = raw.get("scale")
    if scale:
        rows = []
        for name, by_procs in scale.items():
            for procs, p in by_procs.items():
                rows.append(
                    [
                        name,
                        procs,
                        str(p["concurrency"][0]),
                        cell(p.get("spawn")),
                        cell(p.get("first")),
                        cell(p.get("cpu"), 1),
                        cell(p.get("cmds"), 2),
                    ]
                )
        out += [
            f"### W4: W1 ({BURST_N:,} jobs) with 1, 2 and 4 worker processes",
            "",
            h.md_table(
                [
                    "library",
                    "processes",
                    "concurrency each",
                    "from spawn (jobs/s)",
                    "from first job (jobs/s)",
                    "Redis CPU µs/job",
                    "Redis cmds/job",
                ],
                rows,
            ),
            "",
        ]
    idle = raw.get("idle")
    if idle:
        top = sorted(idle["calls"].items(), key=lambda kv: -kv[1])
        by_cmd = ", ".join(f"`{c}` {n / idle['window_s']:.1f}/s" for c, n in top[:8]) or "none"
        out += [
            f"### Idle worker on {IDLE_QUEUES} empty queues",
            "",
            f"`conveyor worker --queues idle00,…,idle{IDLE_QUEUES - 1:02d}` on the private "
            f"server; `CONFIG RESETSTAT` {IDLE_SETTLE_S:g} s after spawn, then "
            f"`INFO commandstats` {idle['window_s']:.1f} s later: **{idle['per_s']:.1f} "
            f"commands/s** ({by_cmd}).",
            "",
        ]
        goals.append(
            (
                f"idle worker on {IDLE_QUEUES} queues ≤ {IDLE_GOAL:g} Redis commands/s",
                verdict(idle["per_s"] <= IDLE_GOAL, f"{idle['per_s']:.1f}/s"),
            )
        )
    idle_health = raw.get("idle_health")
    if idle_health:
        top = sorted(idle_health["calls"].items(), key=lambda kv: -kv[1])
        by_cmd = ", ".join(f"`{c}` {n / idle_health['window_s']:.1f}/s" for c, n in top[:8])
        out += [
            "With its health server on (`--health-port` set; it samples queue depths), "
            f"over {idle_health['window_s']:.1f} s: **{idle_health['per_s']:.1f} "
            f"commands/s** ({by_cmd or 'none'}).",
            "",
        ]
        goals.append(
            (
                f"idle worker on {IDLE_QUEUES} queues, health server on, ≤ {IDLE_GOAL:g} "
                "Redis commands/s",
                verdict(idle_health["per_s"] <= IDLE_GOAL, f"{idle_health['per_s']:.1f}/s"),
            )
        )
    backlog = raw.get("backlog")
    if backlog:
        rows = []
        for kind, n in (("enqueue", BACKLOG_ENQUEUE_N), ("claim", BACKLOG_CLAIM_N)):
            e, m = backlog.get(f"{kind}_empty"), backlog.get(f"{kind}_1M")
            ratio = m["cpu"] / e["cpu"] if e and m else None
            rows.append(
                [
                    f"{kind} ({n:,} jobs)",
                    h.fmt_num(e["rate"], 0) if e else "–",
                    h.fmt_num(m["rate"], 0) if m else "–",
                    h.fmt_num(e["cpu"], 1) if e else "–",
                    h.fmt_num(m["cpu"], 1) if m else "–",
                    f"{ratio:.2f}×" if ratio else "–",
                ]
            )
            if ratio is not None and e and m:
                goals.append(
                    (
                        f"{kind} cost does not grow with {BACKLOG_N:,} pending (Redis "
                        f"CPU/job within {GROWTH_LIMIT:g}× of empty)",
                        verdict(
                            ratio <= GROWTH_LIMIT,
                            f"{ratio:.2f}× CPU/job, {m['rate'] / e['rate']:.2f}× jobs/s",
                        ),
                    )
                )
        out += [
            f"### Backlog: empty queue against {BACKLOG_N:,} pending jobs (conveyor)",
            "",
            f"Single enqueues: the producer's loop of {BACKLOG_ENQUEUE_N:,} `enqueue` calls. "
            f"Claims: a worker (c={backlog['concurrency']}) from its first completion to its "
            f"{BACKLOG_CLAIM_N:,}th.",
            "",
            h.md_table(
                [
                    "operation",
                    "empty: jobs/s",
                    f"{BACKLOG_N:,} pending: jobs/s",
                    "empty: Redis CPU µs/job",
                    f"{BACKLOG_N:,} pending: Redis CPU µs/job",
                    "CPU/job backlog / empty",
                ],
                rows,
            ),
            "",
        ]
    memory = raw.get("memory")
    if memory:
        rows = [
            [
                name,
                h.fmt_num(m["pending"], 0) if m else "–",
                h.fmt_num(m["completed"], 0) if m else "–",
            ]
            for name, m in memory.items()
        ]
        out += [
            f"### Redis memory per job ({MEMORY_N:,} noop jobs)",
            "",
            "Δ `used_memory` after a bulk enqueue (pending) and after one worker (c=50) ran "
            "them all and stopped (completed: what stays behind, including events/indexes), "
            "over n.",
            "",
            h.md_table(["library", "bytes per pending job", "bytes per completed job"], rows),
            "",
        ]
        ours = memory.get("conveyor")
        for ref_name in (n for n in memory if n.startswith("bullmq-node")):
            ref = memory.get(ref_name)
            if ours and ref:
                for kind in ("pending", "completed"):
                    goals.append(
                        (
                            f"Redis memory per {kind} job ≤ {ref_name}",
                            verdict(
                                ours[kind] <= ref[kind],
                                f"{ours[kind]:,.0f} B against {ref[kind]:,.0f} B",
                            ),
                        )
                    )
    if goals:
        out += [
            "### Goals (this run)",
            "",
            h.md_table(["goal", "verdict"], [[g, v] for g, v in goals]),
            "",
        ]
    out.append(END)
    return "\n".join(out)


def write_section(path: Path, section: str) -> None:
    text = path.read_text() if path.exists() else ""
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        _, tail = rest.split(END, 1)
        text = head + section + tail
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    path.write_text(text)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    ap = argparse.ArgumentParser(prog="bench/run protocol", description=__doc__.splitlines()[0])
    ap.add_argument("--libs", default=",".join(HEADLINE), help="libraries of the sweep")
    ap.add_argument("--parts", default=",".join(PARTS), help=f"subset of {','.join(PARTS)}")
    ap.add_argument("--reps", type=int, default=3, help="reps per sweep / scale point")
    ap.add_argument("--headline-reps", type=int, default=5, help="headline and start-up reps")
    ap.add_argument("--timeout", type=float, default=300.0)
    ap.add_argument("--output", default=str(h.BENCH / "RESULTS.md"))
    ap.add_argument("--quick", action="store_true", help="small sizes, for a smoke test")
    args = ap.parse_args(argv)
    if args.quick:  # a smoke test of every part; its figures mean nothing
        global BURST_N, BACKLOG_N, BACKLOG_CLAIM_N, MEMORY_N, IDLE_WINDOW_S
        BURST_N, BACKLOG_N, BACKLOG_CLAIM_N, MEMORY_N, IDLE_WINDOW_S = 2000, 20_000, 2000, 2000, 2

    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    if unknown := set(parts) - set(PARTS):
        raise SystemExit(f"unknown parts: {', '.join(sorted(unknown))}; known: {PARTS}")

    def log(msg: str) -> None:
        print(f"{time.strftime('%H:%M:%S')} {msg}", file=sys.stderr, flush=True)

    chosen = h.select_peers(h.discover_peers(), ",".join([args.libs, *HEADLINE]))
    peers = {p.name: p for p in chosen}
    for peer in peers.values():
        h.install_peer(peer, log)
        if peer.install_error:
            raise SystemExit(f"{peer.name}: {peer.install_error}")
    MARKERS["python"].python = peers["conveyor"].python
    server = h.RedisServer()
    raw: dict[str, Any] = {"machine": h.machine_info(), "argv": argv}

    def on_signal(signum: int, _frame: Any) -> None:  # SIGTERM cleans up like Ctrl-C
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_signal)
    try:
        server.start()
        log(f"private redis-server on 127.0.0.1:{server.port}")
        ctx = h.Ctx(server, server.client(), h.Sizes.for_mode(False), args.timeout)
        run = Run(ctx, peers, args, log)
        for part in PARTS:
            if part in parts:
                with run.part(part):
                    getattr(run, part)()
        raw |= run.raw
    finally:
        h.kill_all_live()
        server.stop()
    raw_file = f"protocol-{time.strftime('%Y%m%d-%H%M%S')}.json"
    raw["raw_file"] = raw_file
    (h.STATE / raw_file).write_text(json.dumps(raw, indent=1))
    section = render(raw, argv)
    print(section)
    write_section(Path(args.output), section)
    log(f"wrote the protocol section of {args.output} (raw: bench/.peers/{raw_file})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
