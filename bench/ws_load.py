"""WebSocket fan-out under load: N subscribers on one API process, each watching its own job.

    python bench/ws_load.py [--url sqlite:///... | redis://...] [--subscribers 1000]

What it does, all through real processes and sockets:

1. starts `conveyor api tests.apps.probe:app` (one process) on a free port;
2. enqueues N probe jobs (`action=progress`: started, 3 progress updates, completed);
3. opens N WebSockets, `job=<id>` each, and waits until every one is subscribed;
4. starts a worker process, and records every frame each subscriber receives.

It checks each subscriber got exactly its own job's 5 events, in order, and prints
delivery latency (arrival time minus the event's engine timestamp) p50/p99/max, the
API process's CPU time, and what the API's /metrics says about subscribers and events.
The client runs all N sockets in one asyncio process, so its own CPU is part of the
measured latency: figures are an upper bound for the API.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import orjson
import websockets

# The probe app is a test helper (tests/apps/probe.py), not part of the package.
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from tests.apps.probe import PROBE_QUEUE, probe_app  # noqa: E402

EXPECTED = ["started", "progress", "progress", "progress", "completed"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def spawn(command: str, *args: str, env: dict[str, str]) -> subprocess.Popen[bytes]:
    """Start `conveyor COMMAND tests.apps.probe:app ARGS` from the repository root (so
    the probe app imports); starting it does not block."""
    argv = [sys.executable, "-m", "conveyor", command, "tests.apps.probe:app", *args]
    return subprocess.Popen([*argv, "--log-level", "WARNING"], env=env, cwd=ROOT)


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, from /proc (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class Watch:
    """One subscriber: the job it watches and what it received."""

    job_id: str
    kinds: list[str] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)
    foreign: int = 0  # frames about other jobs (must stay 0)


async def watch(ws_url: str, w: Watch, ready: asyncio.Event, subscribed: list[int]) -> None:
    async with websockets.connect(
        f"{ws_url}/ws/jobs?job={w.job_id}", open_timeout=60, max_queue=None
    ) as ws:
        first = orjson.loads(await ws.recv())
        assert first["type"] == "subscribed", first
        subscribed[0] += 1
        await ready.wait()
        while True:
            frame = orjson.loads(await ws.recv())
            now = time.time()
            if frame.get("job_id") != w.job_id:
                w.foreign += 1
                continue
            w.kinds.append(frame["kind"])
            w.latencies.append(now - frame["at"])
            if frame["kind"] in ("completed", "failed"):
                return


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def run(url: str, n: int, concurrency: int) -> int:
    port = free_port()
    base, ws_url = f"http://127.0.0.1:{port}", f"ws://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONVEYOR_")}
    api = spawn("api", "--url", url, "--port", str(port), env=env)
    worker: subprocess.Popen[bytes] | None = None
    try:
        async with httpx.AsyncClient(timeout=30) as http:
            for _ in range(200):
                try:
                    if (await http.get(f"{base}/health")).status_code == 200:
                        break
                except httpx.TransportError:
                    await asyncio.sleep(0.05)
            app = probe_app(url)
            jobs = await app.enqueue_many(
                {"task": "probe", "payload": {"action": "progress"}} for _ in range(n)
            )
            await app.close()

            watches = [Watch(job.id) for job in jobs]
            ready = asyncio.Event()
            subscribed = [0]
            t0 = time.perf_counter()
            tasks = [asyncio.create_task(watch(ws_url, w, ready, subscribed)) for w in watches]
            while subscribed[0] < n:
                if any(t.done() for t in tasks):
                    for t in tasks:
                        if t.done():
                            t.result()
                await asyncio.sleep(0.01)
            connect_s = time.perf_counter() - t0
            metrics = (await http.get(f"{base}/metrics")).text
            cpu0 = cpu_seconds(api.pid)

            ready.set()
            t1 = time.perf_counter()
            worker = spawn(
                "worker",
                *("--url", url, "--queues", PROBE_QUEUE, "--health-port", "0"),
                *("--concurrency", str(concurrency)),
                env=env,
            )
            await asyncio.wait_for(asyncio.gather(*tasks), 300)
            run_s = time.perf_counter() - t1
            api_cpu = cpu_seconds(api.pid) - cpu0
            after = (await http.get(f"{base}/metrics")).text
    finally:
        for proc in (worker, api):
            if proc is not None:
                proc.terminate()
                proc.wait(30)

    lat = [x for w in watches for x in w.latencies]
    wrong = [w for w in watches if w.kinds != EXPECTED]
    foreign = sum(w.foreign for w in watches)
    delivered = len(lat)

    def metric(text: str, name: str) -> str:
        line = next((ln for ln in text.splitlines() if ln.startswith(name + " ")), "")
        return line.split()[-1] if line else "?"

    print(f"engine                 {url.split('?')[0]}")
    print(f"subscribers            {n} on one API process (one job each)")
    print(f"subscribe all          {connect_s:.2f} s")
    print(
        f"subscribers (metrics)  {metric(metrics, 'conveyor_websocket_subscribers')}"
        f" while connected"
    )
    print(f"run (worker start..all completed)  {run_s:.2f} s, worker concurrency {concurrency}")
    print(f"events delivered       {delivered} (expected {n * len(EXPECTED)})")
    print(f"subscribers wrong seq  {len(wrong)}; frames about other jobs: {foreign}")
    print(
        f"latency event->client  p50 {pct(lat, 0.5) * 1000:.1f} ms  "
        f"p99 {pct(lat, 0.99) * 1000:.1f} ms  max {max(lat) * 1000:.1f} ms  "
        f"mean {statistics.fmean(lat) * 1000:.1f} ms"
    )
    print(
        f"API CPU during run     {api_cpu:.2f} s "
        f"({api_cpu / max(delivered, 1) * 1e6:.0f} us per delivered event)"
    )
    print(f"events sent (metrics)  {metric(after, 'conveyor_websocket_events_sent_total')}")
    return 0 if not wrong and not foreign and delivered == n * len(EXPECTED) else 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--url", help="engine URL (default: a temporary SQLite file)")
    parser.add_argument("--subscribers", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=50, help="worker concurrency")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        url = args.url or f"sqlite:///{tmp}/ws_load.db"
        sys.exit(asyncio.run(run(url, args.subscribers, args.concurrency)))


if __name__ == "__main__":
    main()
