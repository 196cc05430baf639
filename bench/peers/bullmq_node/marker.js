'use strict';
// Marker-only control for the Node runtime: the completion marker with no queue library.
// BENCH_CONCURRENCY async loops each do `await done.incr('bench:done')` on the worker's own
// marker client (ioredis with enableAutoPipelining, see common.js) until BENCH_MARKER_N
// markers are done, then the process waits to be killed like a worker. Its rate is the most a
// Node worker could reach at that concurrency if its queue work were free
// (bench/protocol.py, "marker-only control"); peers/_marker_control.py is the same for Python.
const { CONCURRENCY, markerClient } = require('./common');

const done = markerClient();
let left = Number(process.env.BENCH_MARKER_N);

async function loop() {
  while (left > 0) {
    left -= 1; // claimed before the await: the loops share one counter
    await done.incr('bench:done');
  }
}

Promise.all(Array.from({ length: CONCURRENCY }, loop)).then(() => {
  setInterval(() => {}, 1 << 30); // stay up like a worker; the harness kills the group
});
