'use strict';
const { Worker } = require('bullmq');
const IORedis = require('ioredis');
const { QUEUE, CONCURRENCY, connectionOpts, nowNs } = require('./common');

const done = new IORedis(connectionOpts());
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

async function processor(job) {
  const start = nowNs();
  const { t, s } = job.data;
  if (s) await sleep(s);
  if (t) await done.rpush('bench:lat', (start - BigInt(t)).toString());
  await done.incr('bench:done');
}

const worker = new Worker(QUEUE, processor, {
  connection: connectionOpts(),
  concurrency: CONCURRENCY,
});
worker.on('error', (err) => console.error(err));

async function shutdown() {
  await worker.close();
  done.disconnect();
  process.exit(0);
}
process.on('SIGTERM', shutdown);
process.on('SIGINT', shutdown);
