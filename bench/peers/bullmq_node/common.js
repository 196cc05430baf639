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

// Wall-clock nanoseconds (BigInt) with sub-millisecond resolution.
function nowNs() {
  return BigInt(Math.round((performance.timeOrigin + performance.now()) * 1e6));
}

module.exports = {
  QUEUE: process.env.BENCH_QUEUE || 'bench',
  CONCURRENCY: Number(process.env.BENCH_CONCURRENCY || '10'),
  JOB_OPTS: { removeOnComplete: true },
  connectionOpts,
  nowNs,
};
