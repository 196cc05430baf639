'use strict';
const { Worker } = require('bullmq');
const { QUEUE, CONCURRENCY, connectionOpts, markerClient, nowNs } = require('./common');

const done = markerClient();
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
