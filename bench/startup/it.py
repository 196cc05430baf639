"""`python -X importtime` totals (sum of self times) of import statements, alternating.
usage: python bench/startup/it.py PYTHON REPS 'label=SRC_DIR=import a, b' ..."""

import statistics
import subprocess
import sys

py, reps = sys.argv[1], int(sys.argv[2])
variants = {}
for arg in sys.argv[3:]:
    label, src, code = arg.split("=", 2)
    variants[label] = (src, code)
totals: dict[str, list[float]] = {k: [] for k in variants}
modules = {}
for _ in range(reps):
    for label, (src, code) in variants.items():
        env = {"PYTHONPATH": src, "PATH": "/usr/bin:/bin"}
        proc = subprocess.run(
            [py, "-X", "importtime", "-c", code], env=env, capture_output=True, text=True
        )
        lines = [
            ln
            for ln in proc.stderr.splitlines()
            if ln.startswith("import time:") and "cumulative" not in ln
        ]
        totals[label].append(sum(int(ln.split("|")[0].split(":")[1]) for ln in lines) / 1000)
        modules[label] = len(lines)
for label, (_, code) in variants.items():
    t = totals[label]
    print(
        f"{label} ({code}): {modules[label]} modules, importtime self total median "
        f"{statistics.median(t):.0f} ms (min {min(t):.0f}, max {max(t):.0f})"
    )
