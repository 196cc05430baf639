"""Interleaved A/B of `conveyor worker` start-up: variants are source trees (name=SRC_DIR,
put first on PYTHONPATH), one job waiting on one private redis-server, reps alternating.
Per variant: wall (spawn -> handler) and the worker's CPU (process_time at the handler).
usage: python bench/startup/ab.py VENV REPS name=SRC name=SRC ..."""

import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = os.path.dirname(os.path.abspath(__file__))
venv, reps = sys.argv[1], int(sys.argv[2])
variants = dict(v.split("=", 1) for v in sys.argv[3:])  # name=src_dir
s = socket.socket()
s.bind(("127.0.0.1", 0))
port = s.getsockname()[1]
s.close()
d = tempfile.mkdtemp()
rs = subprocess.Popen(
    ["redis-server", "--port", str(port), "--save", "", "--appendonly", "no", "--dir", d],
    stdout=subprocess.DEVNULL,
)
time.sleep(0.3)
url = f"redis://127.0.0.1:{port}"
out = f"{d}/out"
enq = (
    "import asyncio, probeapp\n"
    "async def m():\n"
    "    await probeapp.app.enqueue('one', {})\n"
    "    await probeapp.app.close()\n"
    "asyncio.run(m())"
)
res = {k: ([], []) for k in variants}
try:
    for _ in range(reps):
        for name, src in variants.items():
            env = dict(
                os.environ, PROBE_URL=url, PROBE_OUT=out, PROBE_EXIT="1", PYTHONPATH=f"{src}:{HERE}"
            )
            subprocess.run([f"{venv}/bin/python", "-c", enq], env=env, check=True)
            if os.path.exists(out):
                os.unlink(out)
            argv = [
                f"{venv}/bin/python",
                f"{venv}/bin/conveyor",
                "worker",
                "probeapp:app",
                "--url",
                url,
                "--queues",
                "q",
                "--concurrency",
                "50",
                "--health-port",
                "0",
                "--log-level",
                "ERROR",
            ]
            t0 = time.perf_counter()
            p = subprocess.Popen(argv, env=env)
            while not (os.path.exists(out) and os.path.getsize(out)):
                time.sleep(0.001)
                if p.poll() is not None and not (os.path.exists(out) and os.path.getsize(out)):
                    raise SystemExit(f"{name}: worker exited {p.returncode}")
            t1, cpu = map(float, Path(out).read_text().split())
            p.wait()
            res[name][0].append(t1 - t0)
            res[name][1].append(cpu)
finally:
    rs.terminate()
    rs.wait()
for name, (w, c) in res.items():
    print(
        f"{name}: wall median {statistics.median(w) * 1000:.0f} ms "
        f"(min {min(w) * 1000:.0f}, max {max(w) * 1000:.0f}); "
        f"cpu median {statistics.median(c) * 1000:.0f} ms (min {min(c) * 1000:.0f})"
    )
