#!/bin/bash
# Instructions (callgrind) of `conveyor worker` from exec to its first job, on a private
# redis-server with one job waiting: load-independent, unlike wall time on a shared box.
# usage: bench/startup/cg.sh VENV [SRC]   (SRC: a source tree's src/ to run instead of VENV's)
# Prints the count and the Redis commands of the producer and the worker (INFO commandstats).
set -euo pipefail
VENV=$1; SRC=${2:-}
HERE=$(cd "$(dirname "$0")" && pwd)
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
D=$(mktemp -d)
redis-server --port "$PORT" --save "" --appendonly no --dir "$D" >/dev/null &
RS=$!
trap 'kill $RS; wait $RS 2>/dev/null; rm -rf "$D"' EXIT
sleep 0.3
export PROBE_URL=redis://127.0.0.1:$PORT PYTHONPATH=${SRC:+$SRC:}$HERE PROBE_OUT=$D/out
"$VENV/bin/python" -c "
import asyncio, probeapp
async def m():
    await probeapp.app.enqueue('one', {})
    await probeapp.app.close()
asyncio.run(m())"
PROBE_EXIT=1 valgrind --tool=callgrind --callgrind-out-file="$D/cg.out" "$VENV/bin/python" "$VENV/bin/conveyor" \
  worker probeapp:app --url "$PROBE_URL" --queues q --concurrency 50 --health-port 0 \
  --log-level ERROR 2>&1 | grep -o "Collected : [0-9]*"
test -s "$D/out" || echo "NO JOB RUN"
redis-cli -p "$PORT" info commandstats | grep -v "^#" | tr -d '\r' | sed 's/,usec=.*//' | grep -v "^$" | tr '\n' ' '; echo
