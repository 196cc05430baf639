'use strict';
// Same CLI and JSON output as peers/_runner.py "enqueue".
const { Queue } = require('bullmq');
const { QUEUE, JOB_OPTS, connectionOpts, nowNs } = require('./common');

function parseArgs(argv) {
  const a = { mode: 'one', n: 0, sleepMs: 0, intervalMs: 0, stamp: false, warmup: 0 };
  for (let i = 0; i < argv.length; i++) {
    const k = argv[i];
    if (k === 'enqueue') continue;
    if (k === '--stamp') a.stamp = true;
    else if (k === '--mode') a.mode = argv[++i];
    else if (k === '--n') a.n = Number(argv[++i]);
    else if (k === '--sleep-ms') a.sleepMs = Number(argv[++i]);
    else if (k === '--interval-ms') a.intervalMs = Number(argv[++i]);
    else if (k === '--warmup') a.warmup = Number(argv[++i]);
    else throw new Error(`unknown argument ${k}`);
  }
  return a;
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

async function main() {
  const a = parseArgs(process.argv.slice(2));
  const queue = new Queue(QUEUE, { connection: connectionOpts() });
  await queue.waitUntilReady();
  for (let i = 0; i < a.warmup; i++) await queue.add('job', { t: 0, s: 0 }, JOB_OPTS);
  const tWall = (performance.timeOrigin + performance.now()) / 1000;
  const t0 = performance.now();
  if (a.mode === 'bulk') {
    const jobs = [];
    for (let i = 0; i < a.n; i++) jobs.push({ name: 'job', data: { t: 0, s: a.sleepMs }, opts: JOB_OPTS });
    await queue.addBulk(jobs);
  } else {
    for (let i = 0; i < a.n; i++) {
      if (a.intervalMs > 0) {
        const delay = t0 + i * a.intervalMs - performance.now();
        if (delay > 0) await sleep(delay);
      }
      const t = a.stamp ? nowNs().toString() : 0;
      await queue.add('job', { t, s: a.sleepMs }, JOB_OPTS);
    }
  }
  const elapsed = (performance.now() - t0) / 1000;
  const tEnd = (performance.timeOrigin + performance.now()) / 1000;
  console.log(JSON.stringify({ n: a.n, t_start: tWall, t_end: tEnd, elapsed_s: elapsed }));
  await queue.close();
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
