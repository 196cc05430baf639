"""BullMQ (Node.js) peer: metadata only; the code is in peers/bullmq_node/*.js.

The npm package is installed by the harness into bench/node_modules from bench/package.json.
"""

NAME = "bullmq-node"
RUNTIME = "node"
NPM_PACKAGES = ["bullmq"]
BULK = "Queue.addBulk(jobs)"
WORKER_ARGV = ["node", "{bench}/peers/bullmq_node/worker.js"]
ENQUEUE_ARGV = ["node", "{bench}/peers/bullmq_node/enqueue.js"]
PROCESSES = "spawn"
CONCURRENCY = {"noop": 10, "io": 100}
NOTES = {
    "noop": "new Worker({concurrency: 10}), removeOnComplete=true",
    "io": "new Worker({concurrency: 100}), setTimeout 20 ms",
}
