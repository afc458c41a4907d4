'use strict';
// Process model of the Node peers of `make bench` (bench/express, bench/fastify): one process, or
// a node:cluster primary with N workers sharing the listening port (Node's default round-robin
// scheduling: the primary accepts and hands connections to the workers).
//
// runClustered({ name, workers, pidFile }, runWorker): with workers > 1 this process becomes the
// primary (forks, stops all on SIGTERM/SIGINT, stops all when one dies); otherwise, and in each
// worker, runWorker() is called. pidFile, when set, gets the pid of the process the runner
// should signal (the primary, or the lone process).

const cluster = require('node:cluster');
const fs = require('node:fs');

function runClustered({ name, workers, pidFile }, runWorker) {
  if (workers > 1 && cluster.isPrimary) {
    if (pidFile) fs.writeFileSync(pidFile, `${process.pid}\n`);
    let stopping = false;
    const stop = () => {
      if (stopping) return;
      stopping = true;
      for (const w of Object.values(cluster.workers)) w.process.kill('SIGTERM');
      if (Object.keys(cluster.workers).length === 0) process.exit(0);
      setTimeout(() => process.exit(0), 3000).unref();
    };
    for (let i = 0; i < workers; i++) cluster.fork();
    cluster.on('exit', (worker, code, signal) => {
      if (!stopping) {
        console.error(`${name}: worker ${worker.process.pid} died (${signal || code}), stopping`);
        stop();
      } else if (Object.keys(cluster.workers).length === 0) {
        process.exit(0);
      }
    });
    process.on('SIGTERM', stop);
    process.on('SIGINT', stop);
    return;
  }
  if (workers <= 1 && pidFile) fs.writeFileSync(pidFile, `${process.pid}\n`);
  runWorker();
}

module.exports = { runClustered };
