'use strict';
// Shared settings for the Node BullMQ peer. Completion rule: one INCR bench:done per job on a
// separate ioredis connection; latency jobs first RPUSH bench:lat (start_ns - t).
const { URL } = require('node:url');

function redisUrl() {
  return process.env.BENCH_REDIS_URL || 'redis://127.0.0.1:6390/0';
}

function connectionOpts() {
  const u = new URL(redisUrl());
  const db = u.pathname && u.pathname.length > 1 ? Number(u.pathname.slice(1)) : 0;
  return { host: u.hostname, port: Number(u.port || 6379), db, maxRetriesPerRequest: null };
}

// The completion marker's client: ioredis with auto-pipelining, so the INCRs of one event-loop
// tick go out in one write, like the Python peers' hand-pipelined RESP connection
// (peers/_common.py). Every Node handler and the marker-only control use it.
function markerClient() {
  const IORedis = require('ioredis');
  return new IORedis({ ...connectionOpts(), enableAutoPipelining: true });
}

// Wall-clock nanoseconds (BigInt) with sub-millisecond resolution.
function nowNs() {
  return BigInt(Math.round((performance.timeOrigin + performance.now()) * 1e6));
}

module.exports = {
  QUEUE: process.env.BENCH_QUEUE || 'bench',
  CONCURRENCY: Number(process.env.BENCH_CONCURRENCY || '10'),
  // BENCH_KEEP_COMPLETED=1 keeps finished jobs (BullMQ's default), for the memory figure per
  // completed job; the throughput runs remove them (removeOnComplete=true, settings table).
  JOB_OPTS: { removeOnComplete: process.env.BENCH_KEEP_COMPLETED !== '1' },
  connectionOpts,
  markerClient,
  nowNs,
};
