"""Benchmark harness for Redis job queues: Conveyor's peers on one private redis-server.

Run it through ``bench/run`` (which bootstraps the harness virtualenv). See bench/README.md for
the rules; the short version:

* one private ``redis-server`` on a free 127.0.0.1 port (``--save "" --appendonly no``),
  ``FLUSHALL`` before every measurement;
* every library runs in its own virtualenv (``bench/.peers/venvs/<module>``) or, for Node, from
  ``bench/node_modules``; workers are subprocesses in their own process group;
* completion is detected the same way for every library: the job handler does one
  ``INCR bench:done`` and the harness polls that counter every ``POLL_S`` seconds.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import hashlib
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import redis
from harness_pg import BackendCpu, create_database, database_name, drop_database, pg_url

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
PEERS_DIR = BENCH / "peers"
STATE = BENCH / ".peers"
VENVS = STATE / "venvs"
LOGS = STATE / "logs"

DONE_KEY = "bench:done"
LAT_KEY = "bench:lat"
QUEUE = "bench"
POLL_S = 0.005
ALL_WORKLOADS = ["W0", "W1", "W2", "W3", "W4", "W5", "W6", "PHYS"]
# W5: the W1 burst spread over this many tenants, each limited to this many running jobs.
W5_TENANTS = 100
W5_TENANT_CONCURRENCY = 2
# Conveyor's own rows: the ratio and target tables compare "conveyor" with every other row.
CONVEYOR = "conveyor"
CONVEYOR_PG = "conveyor-postgres"
OWN_ROWS = {CONVEYOR, "conveyor-sqlite", CONVEYOR_PG}


@dataclass(frozen=True)
class Sizes:
    w0: int
    burst: int
    w2: int
    w2_interval_ms: float
    w3: int
    w3_sleep_ms: int
    w3_concurrency: int
    noop_concurrency: int
    scale: tuple[int, ...]
    rb_requests: int
    w6: int = 2_000
    w6_cpu_ms: int = 5

    @classmethod
    def for_mode(cls, quick: bool) -> Sizes:
        if quick:
            return cls(1_000, 2_000, 100, 5.0, 500, 20, 100, 10, (1, 2, 4), 50_000, w6=500)
        return cls(10_000, 20_000, 500, 5.0, 2_000, 20, 100, 10, (1, 2, 4), 200_000)


class BenchError(Exception):
    """A measurement failed; the message goes into the table cell."""


# --------------------------------------------------------------------------- machine


def _cmd_out(argv: list[str]) -> str:
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unavailable"


def machine_info() -> dict[str, str]:
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    redis_v = _cmd_out(["redis-server", "--version"])
    for part in redis_v.split():
        if part.startswith("v="):
            redis_v = part[2:]
    return {
        "cores (nproc)": _cmd_out(["nproc"]),
        "CPU": cpu,
        "OS": f"{platform.system()} {platform.release()}",
        "Redis": redis_v,
        "Python": platform.python_version(),
        "Node": _cmd_out(["node", "--version"]),
        "date (UTC)": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
    }


# --------------------------------------------------------------------------- redis server


def free_port() -> int:
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port != 6379:
            return port


class RedisServer:
    """A private, non-persistent redis-server on 127.0.0.1 and a free port."""

    def __init__(self) -> None:
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="conveyor-bench-redis-"))
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        argv = [
            "redis-server",
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(self.dir),
            "--logfile",
            str(self.dir / "redis.log"),
            "--daemonize",
            "no",
        ]
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = self.client()
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                return
            except redis.ConnectionError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise BenchError("redis-server did not start") from None
                time.sleep(0.05)

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, db=0)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        shutil.rmtree(self.dir, ignore_errors=True)


def redis_counters(r: redis.Redis) -> tuple[int, float]:
    """(total commands processed, Redis CPU seconds user+sys)."""
    stats = r.info("stats")
    cpu = r.info("cpu")
    return int(stats["total_commands_processed"]), float(cpu["used_cpu_sys"]) + float(
        cpu["used_cpu_user"]
    )


# --------------------------------------------------------------------------- peers


@dataclass
class Peer:
    module: str
    meta: dict[str, Any]
    python: Path | None = None
    versions: str = ""
    install_error: str | None = None

    @property
    def name(self) -> str:
        return str(self.meta.get("NAME", self.module))

    @property
    def runtime(self) -> str:
        return str(self.meta.get("RUNTIME", "python"))

    @property
    def bulk(self) -> str | None:
        value = self.meta.get("BULK")
        return str(value) if value else None

    def concurrency(self, kind: str, default: int) -> int:
        return int(self.meta.get("CONCURRENCY", {}).get(kind, default))

    def burst_n(self, default: int) -> int:
        """W1/W4 job count: capped for libraries too slow for the full count in the timeout."""
        return min(default, int(self.meta.get("MAX_BURST", default)))

    def note(self, kind: str) -> str:
        return str(self.meta.get("NOTES", {}).get(kind, ""))

    def takes_part(self, workload: str) -> bool:
        """The workloads a peer lists in WORKLOADS (default: all); W5 only for a peer with
        a fairness mechanism to measure (FAIRNESS)."""
        listed = self.meta.get("WORKLOADS")
        if listed is not None and workload not in listed:
            return False
        if workload == "W6":  # only libraries with a process pool to compare (CPU)
            return bool(self.meta.get("CPU"))
        return workload != "W5" or bool(self.meta.get("FAIRNESS"))

    @property
    def on_redis(self) -> bool:
        """Whether the library keeps its jobs in the benchmark's Redis (ENGINE_URL says)."""
        return str(self.meta.get("ENGINE_URL", "{url}")).startswith(("{url}", "redis"))

    @property
    def on_postgres(self) -> bool:
        """Whether the library keeps its jobs in the run's Postgres database."""
        return "{pg_url}" in str(self.meta.get("ENGINE_URL", ""))

    def fmt_vars(self, url: str) -> dict[str, str]:
        py = str(self.python) if self.python else sys.executable
        base = {
            "python": py,
            "bin": str(Path(py).parent),
            "bench": str(BENCH),
            "repo": str(REPO),
            "url": url,
            "port": str(urlsplit(url).port),
            "queue": QUEUE,
            "pg_url": pg_url(url),
        }
        # ENGINE_URL is a template over the other variables: a peer whose jobs are not in
        # the benchmark's Redis names its store there (e.g. a file named after the port).
        base["engine_url"] = str(self.meta.get("ENGINE_URL", "{url}")).format(**base)
        return base

    def worker_argvs(
        self, url: str, kind: str, concurrency: int, processes: int
    ) -> list[list[str]]:
        template = self.meta.get({"io": "WORKER_ARGV_IO", "cpu": "WORKER_ARGV_CPU"}.get(kind, ""))
        template = template or self.meta["WORKER_ARGV"]
        base = self.fmt_vars(url) | {"concurrency": str(concurrency)}
        if self.meta.get("PROCESSES", "spawn") == "native":
            groups = [base | {"processes": str(processes), "index": "0"}]
        else:
            groups = [base | {"processes": "1", "index": str(i)} for i in range(processes)]
        return [[arg.format(**v) for arg in template] for v in groups]

    def enqueue_argv(self, url: str) -> list[str]:
        default = ["{python}", "-m", "peers._runner", self.module]
        template = self.meta.get("ENQUEUE_ARGV", default)
        return [arg.format(**self.fmt_vars(url)) for arg in template]


META_KEYS = {
    "NAME",
    "RUNTIME",
    "REQUIREMENTS",
    "VERSION_PACKAGES",
    "NPM_PACKAGES",
    "BULK",
    "WORKER_ARGV",
    "WORKER_ARGV_IO",
    "WORKER_ARGV_CPU",
    "CPU",
    "CPU_PROCESSES",
    "ENQUEUE_ARGV",
    "PROCESSES",
    "CONCURRENCY",
    "SETTLE_S",
    "NOTES",
    "MAX_BURST",
    "ENGINE_URL",
    "WORKLOADS",
    "FAIRNESS",
}


def read_meta(path: Path) -> dict[str, Any]:
    """Read the literal metadata constants of a peer module without importing it."""
    meta: dict[str, Any] = {}
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            target = node.targets[0]
        elif isinstance(node, ast.AnnAssign) and node.value is not None:
            target = node.target
        else:
            continue
        if isinstance(target, ast.Name) and target.id in META_KEYS:
            meta[target.id] = ast.literal_eval(node.value)  # type: ignore[arg-type]
    return meta


def discover_peers() -> dict[str, Peer]:
    peers: dict[str, Peer] = {}
    for path in sorted(PEERS_DIR.glob("*.py")):
        if path.stem.startswith("_"):
            continue
        meta = read_meta(path)
        if "WORKER_ARGV" in meta:
            peers[path.stem] = Peer(path.stem, meta)
    return peers


def select_peers(all_peers: dict[str, Peer], spec: str | None) -> list[Peer]:
    if not spec:
        return list(all_peers.values())
    by_name = {p.name: p for p in all_peers.values()} | all_peers
    by_name |= {p.module.removesuffix("_lib"): p for p in all_peers.values()}
    chosen = []
    for item in (s.strip() for s in spec.split(",")):
        if item not in by_name:
            raise SystemExit(f"unknown library {item!r}; known: {', '.join(sorted(by_name))}")
        chosen.append(by_name[item])
    return chosen


def compile_editable(python: Path) -> None:
    """Write the repository's bytecode, as pip does for an installed wheel.

    An editable install runs from `src/`, whose `__pycache__` is only as fresh as the last
    import that was allowed to write it; under `PYTHONDONTWRITEBYTECODE=1` (set on the
    shared bench machine) a stale or missing one makes every spawned worker compile its
    ~70 conveyor modules again, ~0.1 s of start-up that no installed worker pays and the
    peers, installed from wheels, never pay. `compileall` skips what is up to date, and
    writes even when the variable is set."""
    subprocess.run(
        [str(python), "-m", "compileall", "-q", str(REPO / "src")],
        check=True,
        capture_output=True,
        timeout=300,
    )


def install_python_peer(peer: Peer, log: Callable[[str], None]) -> None:
    venv = VENVS / peer.module
    reqs = [r.format(repo=REPO) for r in peer.meta.get("REQUIREMENTS", [])]
    stamp = venv / ".bench-stamp"
    want = json.dumps({"requirements": reqs, "python": platform.python_version()})
    python = venv / "bin" / "python"
    if not (stamp.exists() and stamp.read_text() == want and python.exists()):
        log(f"installing {peer.name} into {venv.relative_to(BENCH)}: {' '.join(reqs)}")
        shutil.rmtree(venv, ignore_errors=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
        proc = subprocess.run(
            [str(python), "-m", "pip", "install", "--disable-pip-version-check", "-q", *reqs],
            capture_output=True,
            text=True,
            timeout=900,
        )
        if proc.returncode != 0:
            lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("ERROR")]
            reason = lines[-1].removeprefix("ERROR: ") if lines else proc.stderr[-160:]
            raise BenchError(f"pip: {reason}")
        stamp.write_text(want)
    if "-e" in reqs:
        compile_editable(python)
    peer.python = python
    pkgs = peer.meta.get("VERSION_PACKAGES", [])
    code = (
        "import importlib.metadata as m, sys\n"
        "print(' '.join(f'{p} {m.version(p)}' for p in sys.argv[1:]))"
    )
    peer.versions = _cmd_out([str(python), "-c", code, *pkgs])


def install_node_peers(log: Callable[[str], None]) -> str:
    lock = BENCH / "package-lock.json"
    pkg = BENCH / "package.json"
    digest = hashlib.sha256(pkg.read_bytes() + (lock.read_bytes() if lock.exists() else b""))
    stamp = BENCH / "node_modules" / ".bench-stamp"
    if not (stamp.exists() and stamp.read_text() == digest.hexdigest()):
        log("installing npm packages into bench/node_modules")
        argv = ["npm", "install", "--no-audit", "--no-fund"]
        proc = subprocess.run(argv, cwd=BENCH, capture_output=True, text=True, timeout=900)
        if proc.returncode != 0:
            raise BenchError("npm install failed: " + proc.stderr.strip()[-200:])
        stamp.write_text(
            hashlib.sha256(
                pkg.read_bytes() + (lock.read_bytes() if lock.exists() else b"")
            ).hexdigest()
        )
    return "ok"


def install_peer(peer: Peer, log: Callable[[str], None]) -> None:
    try:
        if peer.runtime == "node":
            install_node_peers(log)
            versions = []
            for name in peer.meta.get("NPM_PACKAGES", []):
                pj = BENCH / "node_modules" / name / "package.json"
                versions.append(f"{name} {json.loads(pj.read_text())['version']}")
            peer.versions = " ".join(versions) + f" (node {_cmd_out(['node', '--version'])})"
        else:
            install_python_peer(peer, log)
    except (BenchError, OSError, subprocess.SubprocessError, KeyError) as exc:
        peer.install_error = f"install: {str(exc).strip()[:160]}"


# --------------------------------------------------------------------------- processes


class Workers:
    """Worker subprocesses, each in its own process group (killed as a group)."""

    def __init__(self, procs: list[subprocess.Popen[bytes]], logs: list[Path]) -> None:
        self.procs = procs
        self.logs = logs

    def check_alive(self) -> None:
        for proc, log in zip(self.procs, self.logs, strict=True):
            rc = proc.poll()
            if rc is not None:
                raise BenchError(f"worker exited rc={rc}: {last_line(log)}")

    def stop(self) -> None:
        for proc in self.procs:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
        for proc in self.procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(10)
        _LIVE.difference_update(self.procs)


_LIVE: set[subprocess.Popen[bytes]] = set()


def kill_all_live() -> None:
    for proc in list(_LIVE):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
    _LIVE.clear()


def last_line(path: Path) -> str:
    try:
        lines = [ln.strip() for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return "no output"
    return lines[-1][:160] if lines else "no output"


def child_env(
    url: str, engine_url: str, concurrency: int, processes: int, index: int
) -> dict[str, str]:
    env = dict(os.environ)
    for var in ("VIRTUAL_ENV", "PYTHONHOME"):
        env.pop(var, None)
    env.update(
        BENCH_REDIS_URL=url,
        BENCH_ENGINE_URL=engine_url,
        BENCH_QUEUE=QUEUE,
        BENCH_CONCURRENCY=str(concurrency),
        BENCH_PROCESSES=str(processes),
        BENCH_INDEX=str(index),
        PYTHONPATH=str(BENCH),
        PYTHONUNBUFFERED="1",
        NODE_PATH=str(BENCH / "node_modules"),
    )
    return env


# --------------------------------------------------------------------------- measurements


@dataclass
class Ctx:
    server: RedisServer
    r: redis.Redis
    sizes: Sizes
    timeout: float
    tag: str = ""
    polls: int = field(default=0)
    # Set for one workload (W5's tenants) and passed to the producer and the workers alike.
    extra_env: dict[str, str] = field(default_factory=dict)
    # The Postgres backends' CPU during the current measurement (Postgres libraries only).
    backends: BackendCpu | None = None

    def pg_monitor(self, peer: Peer) -> None:
        """Start counting the run database's backend CPU (a no-op for non-Postgres peers)."""
        self.backends = BackendCpu(database_name(self.server.url)) if peer.on_postgres else None

    def pg_cpu(self) -> float | None:
        """Backend CPU seconds since `pg_monitor`, sampled once more now; None if not on
        Postgres."""
        if self.backends is None:
            return None
        self.backends.sample(force=True)
        total, self.backends = self.backends.total(), None
        return total

    def flush(self) -> None:
        self.r.flushall()

    def env(self, peer: Peer, concurrency: int, processes: int, index: int) -> dict[str, str]:
        """The environment of one of the peer's producer or worker processes."""
        url = self.server.url
        engine_url = peer.fmt_vars(url)["engine_url"]
        return child_env(url, engine_url, concurrency, processes, index) | self.extra_env

    @contextlib.contextmanager
    def workload_env(self, **env: str) -> Iterator[None]:
        self.extra_env = env
        try:
            yield
        finally:
            self.extra_env = {}

    def done(self) -> int:
        self.polls += 1
        return int(self.r.get(DONE_KEY) or 0)

    def enqueue(
        self,
        peer: Peer,
        mode: str,
        n: int,
        *,
        sleep_ms: int = 0,
        interval_ms: float = 0.0,
        stamp: bool = False,
        warmup: int = 0,
    ) -> dict[str, float]:
        argv = [
            *peer.enqueue_argv(self.server.url),
            "enqueue",
            "--mode",
            mode,
            "--n",
            str(n),
            "--sleep-ms",
            str(sleep_ms),
            "--interval-ms",
            str(interval_ms),
            "--warmup",
            str(warmup),
        ]
        if stamp:
            argv.append("--stamp")
        try:
            proc = subprocess.run(
                argv,
                cwd=BENCH,
                env=self.env(peer, 1, 1, 0),
                capture_output=True,
                text=True,
                timeout=self.timeout,
            )
        except subprocess.TimeoutExpired:
            raise BenchError("timeout") from None
        if proc.returncode != 0:
            errs = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
            raise BenchError(f"enqueue: {errs[-1][:120] if errs else proc.returncode}")
        try:
            result: dict[str, float] = json.loads(proc.stdout.strip().splitlines()[-1])
        except (ValueError, IndexError):
            raise BenchError(f"enqueue printed no result: {proc.stdout[-120:]!r}") from None
        return result

    def fill(self, peer: Peer, n: int, sleep_ms: int = 0) -> None:
        """Pre-enqueue n jobs with no worker running (bulk path when the library has one)."""
        self.enqueue(peer, "bulk" if peer.bulk else "one", n, sleep_ms=sleep_ms)

    def spawn(self, peer: Peer, kind: str, concurrency: int, processes: int) -> Workers:
        procs: list[subprocess.Popen[bytes]] = []
        logs: list[Path] = []
        LOGS.mkdir(parents=True, exist_ok=True)
        for i, argv in enumerate(peer.worker_argvs(self.server.url, kind, concurrency, processes)):
            log = LOGS / f"{peer.module}-{self.tag}-{i}.log"
            with log.open("wb") as fh:
                proc = subprocess.Popen(
                    argv,
                    cwd=BENCH,
                    env=self.env(peer, concurrency, processes, i),
                    stdout=fh,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    start_new_session=True,
                )
            procs.append(proc)
            logs.append(log)
            _LIVE.add(proc)
        return Workers(procs, logs)

    def wait_done(self, target: int, workers: Workers, started: float) -> float:
        """Poll bench:done until it reaches target; returns the wall time it was seen."""
        deadline = started + self.timeout
        while True:
            if self.done() >= target:
                return time.time()
            if self.backends is not None:
                self.backends.sample()
            now = time.time()
            if now > deadline:
                raise BenchError(f"timeout ({self.done()}/{target} done)")
            workers.check_alive()
            time.sleep(POLL_S)


def measure_w0(ctx: Ctx, peer: Peer) -> dict[str, float | str]:
    n = ctx.sizes.w0
    ctx.flush()
    one = ctx.enqueue(peer, "one", n)
    out: dict[str, float | str] = {"w0_one": n / one["elapsed_s"]}
    if peer.bulk:
        ctx.flush()
        bulk = ctx.enqueue(peer, "bulk", n)
        out["w0_bulk"] = n / bulk["elapsed_s"]
    else:
        out["w0_bulk"] = "n/a"
    return out


def measure_burst(ctx: Ctx, peer: Peer, processes: int) -> dict[str, float]:
    """Jobs pre-enqueued with no worker; clock starts when the first worker is spawned."""
    n = peer.burst_n(ctx.sizes.burst)
    ctx.flush()
    ctx.fill(peer, n)
    if ctx.done() != 0:
        raise BenchError("jobs ran before any worker was started")
    conc = peer.concurrency("noop", ctx.sizes.noop_concurrency)
    cmds0, cpu0 = redis_counters(ctx.r)
    polls0 = ctx.polls
    ctx.pg_monitor(peer)
    t0 = time.time()
    workers = ctx.spawn(peer, "noop", conc, processes)
    try:
        t1 = ctx.wait_done(n, workers, t0)
    finally:
        cmds1, cpu1 = redis_counters(ctx.r)
        pg_cpu = ctx.pg_cpu()
        workers.stop()
    own = ctx.polls - polls0 + 2  # the harness's own GETs and one INFO pair
    out = {
        "rate": n / (t1 - t0),
        "cpu_us": (cpu1 - cpu0) * 1e6 / n,
        "cmds": (cmds1 - cmds0 - own) / n,
    }
    if pg_cpu is not None:
        out["pg_cpu_us"] = pg_cpu * 1e6 / n
    return out


def measure_w5(ctx: Ctx, peer: Peer) -> dict[str, float]:
    """W1 (one worker process) with the jobs spread over W5_TENANTS tenants and a
    per-tenant concurrency limit on the queue; the peer reads both from its environment.
    The FLUSHALL before the next measurement drops the limit again."""
    with ctx.workload_env(
        BENCH_TENANTS=str(W5_TENANTS), BENCH_TENANT_CONCURRENCY=str(W5_TENANT_CONCURRENCY)
    ):
        m = measure_burst(ctx, peer, 1)
    return {"w5": m["rate"], "w5_cmds": m["cmds"]}


def warm_worker(ctx: Ctx, peer: Peer, kind: str, conc: int) -> tuple[Workers, int]:
    """Start one worker process and wait until it has completed 20 warm-up noop jobs."""
    workers = ctx.spawn(peer, kind, conc, 1)
    try:
        ctx.enqueue(peer, "one", 20)
        ctx.wait_done(20, workers, time.time())
        time.sleep(float(peer.meta.get("SETTLE_S", 1.0)))
    except BaseException:
        workers.stop()
        raise
    return workers, 20


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        raise BenchError("no latency samples")
    pos = (len(ordered) - 1) * q
    lo = int(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def measure_w2(ctx: Ctx, peer: Peer) -> dict[str, float]:
    n = ctx.sizes.w2
    ctx.flush()
    conc = peer.concurrency("noop", ctx.sizes.noop_concurrency)
    workers, base = warm_worker(ctx, peer, "noop", conc)
    try:
        warm = 5
        t0 = time.time()
        ctx.enqueue(peer, "one", n, interval_ms=ctx.sizes.w2_interval_ms, stamp=True, warmup=warm)
        ctx.wait_done(base + warm + n, workers, t0)
        raw = ctx.r.lrange(LAT_KEY, 0, -1)
    finally:
        workers.stop()
    lat_ms = [int(v) / 1e6 for v in raw]
    if len(lat_ms) != n:
        raise BenchError(f"{len(lat_ms)} latency samples for {n} jobs")
    return {
        "p50": percentile(lat_ms, 0.50),
        "p95": percentile(lat_ms, 0.95),
        "p99": percentile(lat_ms, 0.99),
    }


def measure_w3(ctx: Ctx, peer: Peer) -> dict[str, float]:
    """IO-bound: pre-enqueued sleep jobs; rate from first observed completion to the last."""
    n = ctx.sizes.w3
    ctx.flush()
    ctx.fill(peer, n, sleep_ms=ctx.sizes.w3_sleep_ms)
    conc = peer.concurrency("io", ctx.sizes.w3_concurrency)
    ctx.pg_monitor(peer)
    t0 = time.time()
    workers = ctx.spawn(peer, "io", conc, 1)
    try:
        ctx.wait_done(1, workers, t0)
        t_first = time.time()
        c_first = ctx.done()
        t_last = ctx.wait_done(n, workers, t0)
    finally:
        pg_cpu = ctx.pg_cpu()
        workers.stop()
    if c_first >= n or t_last <= t_first:
        raise BenchError("finished before a rate could be measured")
    out = {"rate": (n - c_first) / (t_last - t_first)}
    if pg_cpu is not None:  # all n jobs, start-up included: the server did all that work
        out["pg_cpu_us"] = pg_cpu * 1e6 / n
    return out


def measure_w6(ctx: Ctx, peer: Peer) -> dict[str, float]:
    """CPU-bound: pre-enqueued jobs of `w6_cpu_ms` of pure-Python work each, run by the
    peer's process pool sized for 2 cores; rate from the first completion to the last."""
    n = ctx.sizes.w6
    ctx.flush()
    ctx.fill(peer, n, sleep_ms=-ctx.sizes.w6_cpu_ms)
    conc = peer.concurrency("cpu", 2)
    t0 = time.time()
    workers = ctx.spawn(peer, "cpu", conc, int(peer.meta.get("CPU_PROCESSES", 1)))
    try:
        ctx.wait_done(1, workers, t0)
        t_first = time.time()
        c_first = ctx.done()
        t_last = ctx.wait_done(n, workers, t0)
    finally:
        workers.stop()
    if c_first >= n or t_last <= t_first:
        raise BenchError("finished before a rate could be measured")
    return {"rate": (n - c_first) / (t_last - t_first)}


def redis_benchmark(server: RedisServer, requests: int) -> dict[str, float]:
    script = "return redis.call('INCR', KEYS[1])"
    sha = hashlib.sha1(script.encode()).hexdigest()
    r = server.client()
    r.flushall()
    r.script_load(script)
    base = [
        "redis-benchmark",
        "-h",
        "127.0.0.1",
        "-p",
        str(server.port),
        "-c",
        "50",
        "-n",
        str(requests),
        "--csv",
    ]
    cases = {
        "INCR": ["-t", "incr"],
        "INCR -P 16": ["-P", "16", "-t", "incr"],
        "EVALSHA (1 INCR)": ["evalsha", sha, "1", "bench:rb"],
        "EVALSHA (1 INCR) -P 16": ["-P", "16", "evalsha", sha, "1", "bench:rb"],
    }
    out: dict[str, float] = {}
    for label, extra in cases.items():
        proc = subprocess.run(base + extra, capture_output=True, text=True, timeout=300)
        rows = [ln for ln in proc.stdout.splitlines() if ln.startswith('"') and "rps" not in ln]
        if proc.returncode != 0 or not rows:
            raise BenchError(f"redis-benchmark failed: {proc.stderr.strip()[-120:]}")
        out[label] = float(rows[-1].split(",")[1].strip('"'))
    return out


# --------------------------------------------------------------------------- results


Cell = list[float] | str


class Results:
    def __init__(self) -> None:
        self.cells: dict[str, dict[str, Cell]] = {}

    def add(self, lib: str, metric: str, value: float | str) -> None:
        row = self.cells.setdefault(lib, {})
        current = row.get(metric)
        if isinstance(value, str):
            if not isinstance(current, str):  # keep the first error/n-a text
                row[metric] = value
        elif current is None:
            row[metric] = [value]
        elif isinstance(current, list):
            current.append(value)

    def get(self, lib: str, metric: str) -> Cell | None:
        return self.cells.get(lib, {}).get(metric)


def fmt_num(value: float, digits: int) -> str:
    if digits == 0:
        return f"{value:,.0f}"
    return f"{value:,.{digits}f}"


def fmt_cell(cell: Cell | None, digits: int = 0) -> str:
    if cell is None:
        return "–"
    if isinstance(cell, str):
        return cell.replace("|", "/")
    med = statistics.median(cell)
    if len(cell) == 1:
        return fmt_num(med, digits)
    return f"{fmt_num(med, digits)} ({fmt_num(min(cell), digits)}–{fmt_num(max(cell), digits)})"


def md_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


# --------------------------------------------------------------------------- orchestration


def guarded(res: Results, lib: str, metrics: list[str], fn: Callable[[], dict[str, Any]]) -> None:
    """Run one measurement; on failure every metric of it gets the error text."""
    try:
        values = fn()
    except BenchError as exc:
        text = str(exc)
        text = text if text.startswith("timeout") else f"error: {text}"
        for m in metrics:
            res.add(lib, m, text)
        return
    except Exception as exc:  # a peer bug must not stop the whole benchmark
        for m in metrics:
            res.add(lib, m, f"error: {type(exc).__name__}: {str(exc)[:120]}")
        return
    for m in metrics:
        res.add(lib, m, values[m])


def run_peer(
    ctx: Ctx,
    peer: Peer,
    workloads: list[str],
    runs: int,
    res: Results,
    log: Callable[[str], None],
    only_run: int | None = None,
) -> None:
    """Measure `peer` `runs` times (or only run number `only_run` of `runs`)."""
    lib = peer.name
    sizes = ctx.sizes
    workloads = [w for w in workloads if peer.takes_part(w)]
    for run in range(1, runs + 1) if only_run is None else [only_run]:
        ctx.tag = f"r{run}"
        if "W0" in workloads:
            log(f"[{lib}] run {run}/{runs} W0 enqueue x{sizes.w0}")
            guarded(res, lib, ["w0_one", "w0_bulk"], lambda: measure_w0(ctx, peer))
        for procs in sizes.scale:
            # W5 is compared with the plain W1 of the same run, so it needs that one too.
            if procs == 1 and not ({"W1", "W4", "W5"} & set(workloads)):
                continue
            if procs > 1 and "W4" not in workloads:
                continue
            ctx.tag = f"r{run}-burst{procs}"
            log(f"[{lib}] run {run}/{runs} burst x{peer.burst_n(sizes.burst)}, {procs} worker(s)")

            def burst(p: int = procs) -> dict[str, float]:
                m = measure_burst(ctx, peer, p)
                out = {f"burst{p}": m["rate"], f"cpu{p}": m["cpu_us"], f"cmds{p}": m["cmds"]}
                if "pg_cpu_us" in m:
                    out[f"pgcpu{p}"] = m["pg_cpu_us"]
                return out

            metrics = [f"burst{procs}", f"cpu{procs}", f"cmds{procs}"]
            if peer.on_postgres:
                metrics.append(f"pgcpu{procs}")
            guarded(res, lib, metrics, burst)
            if procs == 1 and "W5" in workloads:  # right after its plain W1: same conditions
                ctx.tag = f"r{run}-w5"
                log(f"[{lib}] run {run}/{runs} W5 burst over {W5_TENANTS} tenants")
                guarded(res, lib, ["w5", "w5_cmds"], lambda: measure_w5(ctx, peer))
        if "W2" in workloads:
            ctx.tag = f"r{run}-w2"
            log(f"[{lib}] run {run}/{runs} W2 latency x{sizes.w2}")
            guarded(res, lib, ["p50", "p95", "p99"], lambda: measure_w2(ctx, peer))
        if "W3" in workloads:
            ctx.tag = f"r{run}-w3"
            log(f"[{lib}] run {run}/{runs} W3 io x{sizes.w3}")
            if peer.on_postgres:

                def w3() -> dict[str, float]:
                    m = measure_w3(ctx, peer)
                    return {"w3": m["rate"], "w3_pgcpu": m["pg_cpu_us"]}

                guarded(res, lib, ["w3", "w3_pgcpu"], w3)
            else:
                guarded(res, lib, ["w3"], lambda: {"w3": measure_w3(ctx, peer)["rate"]})
        if "W6" in workloads:
            ctx.tag = f"r{run}-w6"
            log(f"[{lib}] run {run}/{runs} W6 cpu {sizes.w6_cpu_ms} ms x{sizes.w6}")
            guarded(res, lib, ["w6"], lambda: {"w6": measure_w6(ctx, peer)["rate"]})


def setup_peer(ctx: Ctx, peer: Peer) -> None:
    """Run the peer's `setup()` (its schema in the run's Postgres database) once per run."""
    try:
        proc = subprocess.run(
            [*peer.enqueue_argv(ctx.server.url), "setup"],
            cwd=BENCH,
            env=ctx.env(peer, 1, 1, 0),
            capture_output=True,
            text=True,
            timeout=ctx.timeout,
        )
    except subprocess.TimeoutExpired:
        raise BenchError("setup: timeout") from None
    if proc.returncode != 0:
        errs = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
        raise BenchError(f"setup: {errs[-1][:120] if errs else proc.returncode}")


def remove_engine_file(peer: Peer, url: str) -> None:
    """Delete a peer's SQLite file once its runs are over: like the private Redis it is
    scratch for this run (its name carries this run's Redis port, so another run's is safe)."""
    engine_url = peer.fmt_vars(url)["engine_url"]
    if not engine_url.startswith("sqlite:///"):
        return
    path = BENCH / engine_url.removeprefix("sqlite:///")  # relative: to the peers' cwd
    for suffix in ("", "-wal", "-shm"):
        path.with_name(path.name + suffix).unlink(missing_ok=True)


def render(
    machine: dict[str, str],
    peers: list[Peer],
    res: Results,
    phys: Results | None,
    args: argparse.Namespace,
    sizes: Sizes,
    workloads: list[str],
) -> str:
    libs = [p.name for p in peers]
    out: list[str] = ["# Conveyor peer benchmark", ""]
    out.append(md_table(["machine", ""], [[k, v] for k, v in machine.items()]))
    command = " ".join(["bench/run", *args.argv])
    out += [
        "",
        f"Command: `{command}` — {args.runs} run(s) per figure; "
        "each figure is the median (min–max) of the runs.",
        "",
    ]

    head = [
        "library",
        f"W0 enqueue one (jobs/s, n={sizes.w0:,})",
        f"W0 enqueue bulk (jobs/s, n={sizes.w0:,})",
        f"W1 burst 1 proc (jobs/s, n={sizes.burst:,}¹)",
        "W2 p50 (ms)",
        "W2 p95 (ms)",
        "W2 p99 (ms)",
        f"W3 io 20 ms x{sizes.w3_concurrency} (jobs/s, n={sizes.w3:,})",
    ]
    rows = []
    for lib in libs:
        rows.append(
            [
                lib,
                fmt_cell(res.get(lib, "w0_one")),
                fmt_cell(res.get(lib, "w0_bulk")),
                fmt_cell(res.get(lib, "burst1")),
                fmt_cell(res.get(lib, "p50"), 2),
                fmt_cell(res.get(lib, "p95"), 2),
                fmt_cell(res.get(lib, "p99"), 2),
                fmt_cell(res.get(lib, "w3")),
            ]
        )
    out += [
        "## Throughput and latency (W0–W3)",
        "",
        md_table(head, rows),
        "",
        "¹ fewer for a library with a cap (see the W4 table's jobs column).",
    ]
    for peer in peers:
        if "WORKLOADS" in peer.meta:
            listed = ", ".join(peer.meta["WORKLOADS"])
            out += ["", f"– in {peer.name}'s row: not run, it takes part in {listed} only."]
    out.append("")

    if CONVEYOR in libs:
        out += render_ratios(peers, res)
        out += render_targets(peers, res, sizes)

    if any(p.on_postgres for p in peers):
        out += render_postgres(peers, res, sizes)

    if "W4" in workloads or "W1" in workloads:
        rows = []
        off_redis: dict[str, Peer] = {}  # rows whose Redis figures are the marker alone
        for peer in peers:
            lib = peer.name
            for p in sizes.scale:
                if res.get(lib, f"burst{p}") is None:
                    continue
                if not peer.on_redis:
                    off_redis[lib] = peer
                rows.append(
                    [
                        lib if peer.on_redis else f"{lib}²",
                        str(p),
                        f"{peer.burst_n(sizes.burst):,}",
                        fmt_cell(res.get(lib, f"burst{p}")),
                        fmt_cell(res.get(lib, f"cpu{p}"), 1),
                        fmt_cell(res.get(lib, f"cmds{p}"), 2),
                    ]
                )
        head = [
            "library",
            "worker processes",
            "jobs",
            "jobs/s",
            "Redis CPU µs/job",
            "Redis commands/job",
        ]
        out += [
            "## W4 scaling (W1 burst with 1, 2, 4 worker processes)",
            "",
            md_table(head, rows),
            "",
        ]
        for peer in off_redis.values():
            engine = (
                "postgresql" if peer.on_postgres else str(peer.meta["ENGINE_URL"]).split(":")[0]
            )
            out += [
                f"² {peer.name} keeps its jobs outside Redis (`{engine}://` engine): its Redis "
                "CPU and commands per job are only the completion marker's `INCR`.",
                "",
            ]

    if "W5" in workloads:
        out += render_w5(peers, res, sizes)

    if "W6" in workloads:
        out += render_w6(peers, res, sizes)

    if phys is not None:
        labels = list(phys.cells.get("redis-benchmark", {}).keys())
        rows = [[label, fmt_cell(phys.get("redis-benchmark", label))] for label in labels]
        out += [
            "## Physical limit: redis-benchmark on the same private server",
            "",
            f"`redis-benchmark -c 50 -n {sizes.rb_requests:,}`; EVALSHA runs a script "
            "doing one INCR.",
            "",
            md_table(["command", "requests/s"], rows),
            "",
        ]

    rows = []
    for p in peers:
        rows.append(
            [
                p.name,
                p.versions or (p.install_error or "?"),
                p.bulk or "n/a (none)",
                p.note("noop"),
                p.note("io"),
            ]
        )
    out += [
        "## Libraries and settings",
        "",
        md_table(
            [
                "library",
                "versions",
                "bulk path (W0)",
                "noop workers (W1, W2, W4)",
                "io workers (W3)",
            ],
            rows,
        ),
        "",
    ]
    out += [RULES.format(poll_ms=POLL_S * 1000, timeout=args.timeout)]
    return "\n".join(out)


def median_of(cell: Cell | None) -> float | None:
    """The median of a measured cell; None when it is missing or an error text."""
    return statistics.median(cell) if isinstance(cell, list) and cell else None


def fmt_median(cell: Cell | None, digits: int = 0) -> str:
    value = median_of(cell)
    return "–" if value is None else fmt_num(value, digits)


def fmt_ratio(num: float | None, den: float | None) -> str:
    if num is None or den is None or num <= 0 or den <= 0:
        return "–"
    return f"{num / den:.2f}×"


def fmt_pct(value: float, signed: bool = False) -> str:
    """A percentage with a real minus sign; one decimal below 1% so a small gap is not 0%."""
    sign = "+" if signed else ""
    text = f"{value:{sign}.1f}" if abs(value) < 1 else f"{value:{sign}.0f}"
    return text.replace("-", "−") + "%"


# Decimals per metric in the derived tables, as in the tables the figures come from.
DIGITS = {"p99": 2, "cpu1": 1, "cmds1": 2, "pgcpu1": 1, "w3_pgcpu": 1}

# (metric, column, higher is better). Every ratio reads the same way, >1× = Conveyor is
# better: Conveyor/peer for throughput, peer/Conveyor for latency, Redis CPU and commands.
RATIO_COLUMNS = [
    ("w0_one", "W0 one", True),
    ("w0_bulk", "W0 bulk", True),
    ("burst1", "W1", True),
    ("p99", "W2 p99", False),
    ("w3", "W3", True),
    ("cpu1", "W4 Redis CPU/job (1 proc)", False),
    ("cmds1", "W4 commands/job (1 proc)", False),
]


def render_ratios(peers: list[Peer], res: Results) -> list[str]:
    rows = []
    # Redis peers only: the Postgres ones are compared with conveyor-postgres (render_postgres).
    for lib in (p.name for p in peers if p.name not in OWN_ROWS and not p.on_postgres):
        row = [lib]
        for metric, _, higher_better in RATIO_COLUMNS:
            ours, theirs = median_of(res.get(CONVEYOR, metric)), median_of(res.get(lib, metric))
            row.append(fmt_ratio(ours, theirs) if higher_better else fmt_ratio(theirs, ours))
        rows.append(row)
    head = ["peer", *(column for _, column, _ in RATIO_COLUMNS)]
    table = md_table(head, rows) if rows else "No peer in this run."
    return [
        "## Conveyor against each peer (same run)",
        "",
        "Medians of this run; >1× means Conveyor is better (throughput: Conveyor / peer; "
        "W2 p99, Redis CPU and commands per job: peer / Conveyor); – when either side has no "
        "figure.",
        "",
        table,
        "",
    ]


@dataclass(frozen=True)
class Reference:
    text: str  # what the target is measured against, e.g. "2.5 × taskiq 1,774 = 4,435"
    value: float  # the threshold Conveyor's figure is held to


Best = Callable[[list[tuple[float, str]]], tuple[float, str]]


def peer_reference(
    res: Results, peers: list[Peer], metric: str, best: Best, factor: float = 1.0
) -> Reference | None:
    """The best (`max` or `min`) median of `metric` among `peers`, times `factor`."""
    figures = [(median_of(res.get(p.name, metric)), p.name) for p in peers]
    found = [(value, name) for value, name in figures if value is not None]
    if not found:
        return None
    value, name = best(found)
    digits = DIGITS.get(metric, 0)
    text = f"{name} {fmt_num(value, digits)}"
    if factor != 1.0:
        text = f"{factor:g} × {text} = {fmt_num(value * factor, digits)}"
    return Reference(text, value * factor)


def target_row(
    label: str, metric: str, op: str, ref: Reference | None, res: Results, ours_lib: str = CONVEYOR
) -> list[str]:
    ours = median_of(res.get(ours_lib, metric))
    ours_text = "–" if ours is None else fmt_num(ours, DIGITS.get(metric, 0))
    if ref is None:
        return [label, ours_text, "– (not in this run)", "–"]
    if ours is None:
        return [label, ours_text, ref.text, "–"]
    met = {"≥": ours >= ref.value, "≤": ours <= ref.value, "<": ours < ref.value}[op]
    gap = abs(ours - ref.value) / ref.value * 100 if ref.value else 0.0
    return [label, ours_text, ref.text, "yes" if met else f"no (by {fmt_pct(gap)})"]


def render_targets(peers: list[Peer], res: Results, sizes: Sizes) -> list[str]:
    others = [p for p in peers if p.name not in OWN_ROWS and not p.on_postgres]
    bullmq = [p for p in others if p.name == "bullmq-node"]
    python = [p for p in others if p.runtime == "python"]
    conveyor = next(p for p in peers if p.name == CONVEYOR)
    # W3's ceiling is the io concurrency over the sleep: 100 slots / 20 ms = 5,000 jobs/s.
    ceiling = conveyor.concurrency("io", sizes.w3_concurrency) * 1000 / sizes.w3_sleep_ms
    w3 = Reference(f"90% of the {fmt_num(ceiling, 0)} ceiling", 0.9 * ceiling)
    targets: list[tuple[str, str, str, Reference | None]] = [
        ("W1 ≥ bullmq-node", "burst1", "≥", peer_reference(res, bullmq, "burst1", max)),
        (
            "W1 ≥ 2.5× the fastest Python peer",
            "burst1",
            "≥",
            peer_reference(res, python, "burst1", max, 2.5),
        ),
        (
            "W0 bulk ≥ 2× bullmq-node bulk",
            "w0_bulk",
            "≥",
            peer_reference(res, bullmq, "w0_bulk", max, 2.0),
        ),
        ("W0 one ≥ bullmq-node one", "w0_one", "≥", peer_reference(res, bullmq, "w0_one", max)),
        ("W2 p99 (ms) ≤ the best peer's", "p99", "≤", peer_reference(res, others, "p99", min)),
        (f"W3 ≥ {fmt_num(w3.value, 0)} jobs/s", "w3", "≥", w3),
        (
            "W4 commands/job below every peer (1 proc)",
            "cmds1",
            "<",
            peer_reference(res, others, "cmds1", min),
        ),
        (
            "W4 Redis CPU µs/job below every peer (1 proc)",
            "cpu1",
            "<",
            peer_reference(res, others, "cpu1", min),
        ),
    ]
    rows = [target_row(label, metric, op, ref, res) for label, metric, op, ref in targets]
    return [
        "## Targets",
        "",
        "From the medians of this run. Python peers: every peer with RUNTIME python "
        "(not conveyor-sqlite).",
        "",
        md_table(["target", "Conveyor", "reference", "met?"], rows),
        "",
    ]


PG_RATIO_COLUMNS = [
    ("w0_one", "W0 one", True),
    ("w0_bulk", "W0 bulk", True),
    ("burst1", "W1", True),
    ("pgcpu1", "W1 PG CPU/job", False),
    ("p99", "W2 p99", False),
    ("w3", "W3", True),
    ("w3_pgcpu", "W3 PG CPU/job", False),
]


def render_postgres(peers: list[Peer], res: Results, sizes: Sizes) -> list[str]:
    """The Postgres libraries: jobs/s next to the server's CPU per job, conveyor-postgres
    against each Postgres peer, and the Postgres targets (issue 16)."""
    on_pg = [p for p in peers if p.on_postgres]
    rows = [
        [
            p.name,
            fmt_cell(res.get(p.name, "w0_one")),
            fmt_cell(res.get(p.name, "w0_bulk")),
            fmt_cell(res.get(p.name, "burst1")),
            fmt_cell(res.get(p.name, "pgcpu1"), 1),
            fmt_cell(res.get(p.name, "p50"), 2),
            fmt_cell(res.get(p.name, "p99"), 2),
            fmt_cell(res.get(p.name, "w3")),
            fmt_cell(res.get(p.name, "w3_pgcpu"), 1),
        ]
        for p in on_pg
    ]
    head = [
        "library",
        "W0 one (jobs/s)",
        "W0 bulk (jobs/s)",
        "W1 (jobs/s)",
        "W1 PG CPU µs/job",
        "W2 p50 (ms)",
        "W2 p99 (ms)",
        "W3 (jobs/s)",
        "W3 PG CPU µs/job",
    ]
    out = [
        "## Postgres (conveyor-postgres, pgqueuer, procrastinate)",
        "",
        "Jobs in one database on the machine's Postgres, created for the run and dropped at "
        "the end. PG CPU µs/job = the utime + stime (from /proc) of the Postgres backends "
        "serving that database during the measurement, over n; the server's shared processes "
        "(WAL writer, checkpointer, autovacuum) are not counted. W1 and W3 as in the main table.",
        "",
        md_table(head, rows),
        "",
    ]
    if CONVEYOR_PG not in {p.name for p in on_pg}:
        return out
    others = [p for p in on_pg if p.name != CONVEYOR_PG]
    ratio_rows = []
    for lib in (p.name for p in others):
        row = [lib]
        for metric, _, higher_better in PG_RATIO_COLUMNS:
            ours = median_of(res.get(CONVEYOR_PG, metric))
            theirs = median_of(res.get(lib, metric))
            row.append(fmt_ratio(ours, theirs) if higher_better else fmt_ratio(theirs, ours))
        ratio_rows.append(row)
    out += [
        "### conveyor-postgres against each Postgres peer (same run)",
        "",
        ">1× means conveyor-postgres is better (throughput: Conveyor / peer; W2 p99 and PG CPU "
        "per job: peer / Conveyor); – when either side has no figure.",
        "",
        md_table(["peer", *(c for _, c, _ in PG_RATIO_COLUMNS)], ratio_rows)
        if ratio_rows
        else "No Postgres peer in this run.",
        "",
    ]
    bulk_goal = Reference("20,000 jobs/s", 20_000.0)
    targets: list[tuple[str, str, str, Reference | None]] = [
        ("W1 ≥ 2× the faster peer", "burst1", "≥", peer_reference(res, others, "burst1", max, 2)),
        ("W2 p99 (ms) ≤ the better peer's", "p99", "≤", peer_reference(res, others, "p99", min)),
        ("W0 one ≥ the faster peer's", "w0_one", "≥", peer_reference(res, others, "w0_one", max)),
        ("W0 bulk ≥ 20,000 jobs/s", "w0_bulk", "≥", bulk_goal),
        (
            "W1 PG CPU µs/job below every peer",
            "pgcpu1",
            "<",
            peer_reference(res, others, "pgcpu1", min),
        ),
    ]
    rows = [target_row(label, m, op, ref, res, CONVEYOR_PG) for label, m, op, ref in targets]
    out += [
        "### Postgres targets",
        "",
        md_table(["target", "conveyor-postgres", "reference", "met?"], rows),
        "",
    ]
    return out


def render_w5(peers: list[Peer], res: Results, sizes: Sizes) -> list[str]:
    rows, hows = [], []
    for peer in (p for p in peers if p.takes_part("W5")):
        lib = peer.name
        plain, fair = median_of(res.get(lib, "burst1")), median_of(res.get(lib, "w5"))
        cost = "–" if plain is None or fair is None else fmt_pct((fair / plain - 1) * 100, True)
        cmds_plain, cmds_fair = res.get(lib, "cmds1"), res.get(lib, "w5_cmds")
        cmds = f"{fmt_median(cmds_plain, 2)} vs {fmt_median(cmds_fair, 2)}"
        rows.append(
            [lib, fmt_cell(res.get(lib, "burst1")), fmt_cell(res.get(lib, "w5")), cost, cmds]
        )
        hows.append(f"* {lib}: {peer.meta['FAIRNESS']}")
    head = [
        "library",
        "W1 plain (jobs/s)",
        f"W1 with {W5_TENANTS} tenants, tenant concurrency {W5_TENANT_CONCURRENCY} (jobs/s)",
        "cost (fair / plain − 1)",
        "Redis commands/job plain vs fair",
    ]
    table = md_table(head, rows) if rows else "No library in this run declares `FAIRNESS`."
    if hows:
        hows.append("")
    return [
        "## W5 fairness cost",
        "",
        f"The W1 burst (n={sizes.burst:,}, one worker process) with job i given tenant "
        f"`t{{i mod {W5_TENANTS}}}` and a limit of {W5_TENANT_CONCURRENCY} running jobs per "
        "tenant stored on the queue before the jobs are enqueued, against the plain W1 of the "
        "same run, measured just before it. Only libraries that declare a fairness "
        "mechanism (`FAIRNESS`) take part.",
        "",
        table,
        "",
        *hows,
    ]


def render_w6(peers: list[Peer], res: Results, sizes: Sizes) -> list[str]:
    taking_part = [p for p in peers if p.takes_part("W6")]
    rows = [[p.name, fmt_cell(res.get(p.name, "w6")), str(p.meta["CPU"])] for p in taking_part]
    ceiling = 2 * 1000 / sizes.w6_cpu_ms  # 2 cores, each job w6_cpu_ms of CPU
    out = [
        "## W6 CPU-bound",
        "",
        f"n={sizes.w6:,} jobs pre-enqueued, each {sizes.w6_cpu_ms} ms of pure-Python work "
        "(`peers/_common.py::burn_cpu`: a fixed loop, the same work for every library), run "
        "by one worker with a process pool of 2 (the machine's cores); jobs/s from the first "
        f"completion to the last. The ceiling is 2 cores × {1000 / sizes.w6_cpu_ms:g} jobs/s "
        f"= {ceiling:g} jobs/s. Only libraries that declare a process pool (`CPU`) take part.",
        "",
        md_table(["library", "W6 (jobs/s)", "how"], rows)
        if rows
        else "No library in this run declares `CPU`.",
        "",
    ]
    ours = median_of(res.get("conveyor", "w6"))
    peer_best = [
        (median_of(res.get(p.name, "w6")), p.name) for p in taking_part if p.name != "conveyor"
    ]
    known = [(v, name) for v, name in peer_best if v is not None]
    if ours is not None and known:
        best, best_name = max(known)
        goal = max(best, 0.9 * ceiling)
        met = "yes" if ours >= goal else f"no (by {fmt_pct((1 - ours / goal) * 100, False)})"
        out += [
            f"Goal: conveyor ≥ the better peer ({best_name} {fmt_num(best, 0)}) and within 10% "
            f"of the ceiling ({fmt_num(0.9 * ceiling, 0)}): conveyor {fmt_num(ours, 0)} — {met}.",
            "",
        ]
    return out


RULES = """## Rules

* **Completion rule (every library):** the job handler does exactly one `INCR bench:done` on
  its own Redis connection when the job's work is done — for the Python libraries the same
  minimal hand-written RESP client (`peers/_common.py`: a socket per thread, or one pipelined
  connection per event loop; rq, which forks per job, uses its job's redis-py connection),
  ioredis with `enableAutoPipelining` for Node — and the harness polls `GET bench:done`
  every {poll_ms:g} ms. The marker goes to Redis even for conveyor-sqlite, whose jobs are in
  a SQLite file. W2 jobs first `RPUSH bench:lat <start_ns - enqueue_ns>`; W3 jobs first
  sleep 20 ms (`asyncio.sleep` / `time.sleep` / `setTimeout`).
* **Server:** one private `redis-server` on 127.0.0.1 and a free port, `--save ""
  --appendonly no`, `FLUSHALL` before every measurement.
* **W0 enqueue:** no worker running; jobs/s of the enqueue loop (client connected first),
  one `enqueue` call per job, then the library's bulk path with all jobs in one call
  (n/a when the library documents none).
* **W1 burst / W4 scaling:** the jobs are enqueued first with no worker running; the clock
  starts when the first worker process is spawned (interpreter start and imports count) and
  stops when `bench:done` reaches n. W4 with 1 process is the W1 measurement. Redis CPU/job =
  Δ(`used_cpu_user`+`used_cpu_sys`)/n and commands/job = Δ`total_commands_processed`/n minus the
  harness's own polling commands; both include the one `INCR` completion marker per job and any
  idle polling the workers did during the run.
* **W2 pickup latency:** one warmed worker (20 warm-up jobs done, then a pause); the producer
  enqueues n jobs 5 ms apart, each carrying its enqueue wall clock in ns (`time.time_ns()` /
  `performance.timeOrigin + performance.now()`), and the handler records start − enqueue.
  The arrival rate is 200 jobs/s, so a library whose single worker does fewer than that shows
  queueing delay, and one that polls an idle queue shows its polling interval.
* **W3 io-bound:** n jobs that sleep 20 ms are enqueued first, then one worker process with
  concurrency 100 starts; jobs/s from the first observed completion to the last (start-up is
  excluded; the ceiling is 100 / 20 ms = 5,000 jobs/s).
* **W5 fairness cost:** W1 with one worker process again, right after the plain W1 of the
  same run, with job i given tenant `t{{i mod 100}}` and a limit of 2 running jobs per tenant
  stored on the queue by the producer before it enqueues (the producer and the workers get
  `BENCH_TENANTS=100`, `BENCH_TENANT_CONCURRENCY=2`); only for libraries with a fairness
  mechanism (`FAIRNESS`). Cost = fair jobs/s / plain jobs/s − 1.
* **W6 CPU-bound:** n jobs of a fixed pure-Python loop worth 5 ms on the reference machine
  (`burn_cpu`, the job's `s` is negative) are enqueued first, then one worker with a process
  pool of 2 (`CPU`, `WORKER_ARGV_CPU`, `CPU_PROCESSES`); only for libraries that declare one.
* **conveyor-sqlite:** Conveyor's own default engine (a SQLite file per run, emptied with
  `purge` before every measurement since `FLUSHALL` does not reach it), W0–W2 only; it is not a
  peer, so it is left out of the ratio and target tables.
* **Postgres rows (conveyor-postgres, pgqueuer, procrastinate):** jobs in one database
  (`conveyor_bench_<redis port>`) the harness creates on the machine's Postgres and drops at
  the end; each library's schema is made once (`setup()`) and its tables emptied by its
  producer before every measurement. W0–W3 only; PG CPU µs/job = utime + stime of the
  backends serving that database (from /proc) over n. They are compared with
  conveyor-postgres in their own tables, not in the Redis ratio and target tables.
* **Ratios and targets** are computed from the medians of this run only, never against
  figures of another run.
* **Timeout:** every measurement has a hard timeout of {timeout:g} s; a library that times out,
  fails to install or crashes is reported in its cells and the benchmark goes on.
"""


def parse_args(argv: list[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="bench/run", description=__doc__.splitlines()[0])
    ap.add_argument("--libs", help="comma-separated libraries (module or display name)")
    ap.add_argument(
        "--workloads",
        default=",".join(ALL_WORKLOADS),
        help=f"comma-separated subset of {','.join(ALL_WORKLOADS)}",
    )
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="small job counts for smoke tests")
    ap.add_argument("--timeout", type=float, default=300.0, help="per-measurement timeout (s)")
    ap.add_argument(
        "--output",
        help="markdown file to write (default RESULTS.md, or .peers/RESULTS-quick.md with --quick)",
    )
    ap.add_argument(
        "--interleave",
        action="store_true",
        help="run 1 of every library, then run 2, ... (fairer under a varying machine load)",
    )
    ap.add_argument("--install-only", action="store_true")
    ap.add_argument("--list", action="store_true", help="list the known libraries and exit")
    args = ap.parse_args(argv)
    args.argv = argv
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    all_peers = discover_peers()
    if args.list:
        for peer in all_peers.values():
            print(f"{peer.module:14} {peer.name}")
        return 0
    workloads = [w.strip().upper() for w in args.workloads.split(",") if w.strip()]
    unknown = set(workloads) - set(ALL_WORKLOADS)
    if unknown:
        raise SystemExit(f"unknown workloads: {', '.join(sorted(unknown))}")
    peers = select_peers(all_peers, args.libs)
    sizes = Sizes.for_mode(args.quick)

    def log(msg: str) -> None:
        print(f"{time.strftime('%H:%M:%S')} {msg}", file=sys.stderr, flush=True)

    for peer in peers:
        install_peer(peer, log)
        if peer.install_error:
            log(f"[{peer.name}] {peer.install_error}")
    if args.install_only:
        return 0

    machine = machine_info()
    res = Results()
    phys: Results | None = None
    server = RedisServer()

    def on_signal(signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_signal)
    try:
        server.start()
        log(f"private redis-server on 127.0.0.1:{server.port}")
        ctx = Ctx(server, server.client(), sizes, args.timeout)
        if any(p.on_postgres for p in peers):
            create_database(server.url)
            log(f"postgres database {database_name(server.url)} (dropped at the end)")
        ready = []
        for peer in peers:
            if peer.install_error:  # reported once, in the first cell of the row
                res.add(peer.name, "w0_one", f"error: {peer.install_error}")
                continue
            if peer.on_postgres:
                try:
                    setup_peer(ctx, peer)
                except BenchError as exc:
                    res.add(peer.name, "w0_one", f"error: {exc}")
                    continue
            if not args.interleave:
                run_peer(ctx, peer, workloads, args.runs, res, log)
                remove_engine_file(peer, server.url)
            ready.append(peer)
        if args.interleave:
            # Run 1 of every library, then run 2 of every library, ...: on a shared
            # machine a load swing then hits every library instead of the one measured.
            for run in range(1, args.runs + 1):
                for peer in ready:
                    run_peer(ctx, peer, workloads, args.runs, res, log, only_run=run)
            for peer in ready:
                remove_engine_file(peer, server.url)
        if "PHYS" in workloads:
            phys = Results()
            for run in range(1, args.runs + 1):
                log(f"redis-benchmark run {run}/{args.runs}")
                try:
                    for label, rps in redis_benchmark(server, sizes.rb_requests).items():
                        phys.add("redis-benchmark", label, rps)
                except (BenchError, subprocess.SubprocessError) as exc:
                    phys.add("redis-benchmark", "redis-benchmark", f"error: {exc}")
    finally:
        kill_all_live()
        if any(p.on_postgres for p in peers) and server.port:
            with contextlib.suppress(RuntimeError, OSError, subprocess.SubprocessError):
                drop_database(server.url)
        server.stop()

    text = render(machine, peers, res, phys, args, sizes, workloads)
    print(text)
    default_out = STATE / "RESULTS-quick.md" if args.quick else BENCH / "RESULTS.md"
    out_path = Path(args.output) if args.output else default_out
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(text)
    raw = {
        "machine": machine,
        "argv": args.argv,
        "results": res.cells,
        "phys": phys.cells if phys else None,
    }
    raw_path = STATE / f"results-{time.strftime('%Y%m%d-%H%M%S')}.json"
    raw_path.write_text(json.dumps(raw, indent=1))
    log(f"wrote {out_path} (raw figures: {raw_path.relative_to(BENCH)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
