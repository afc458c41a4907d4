#!/usr/bin/env node
// Local S3-compatible store for development and tests (@20minutes/s3rver,
// which verifies SigV4 signatures; credentials S3RVER / S3RVER).
//
// Environment:
//   S3_PORT      listen port on 127.0.0.1        (default 54569)
//   S3_HOST      listen address                  (default 127.0.0.1)
//   S3_BUCKET    bucket created at start-up      (default product-images)
//   S3_DIR       storage directory               (default <repo>/.run/s3)
//   S3_PID_FILE  pid file written once listening (default <repo>/.run/s3rver.pid)
//
// Started by scripts/dev/stack.sh; `node scripts/dev/s3rver.js` also works alone.
'use strict';

const fs = require('fs');
const path = require('path');

const repo = path.resolve(__dirname, '..', '..');
const runDir = process.env.RUN_DIR || path.join(repo, '.run');
const port = Number(process.env.S3_PORT || 54569);
const address = process.env.S3_HOST || '127.0.0.1';
const bucket = process.env.S3_BUCKET || 'product-images';
const directory = process.env.S3_DIR || path.join(runDir, 's3');
const pidFile = process.env.S3_PID_FILE || path.join(runDir, 's3rver.pid');

let S3rver;
try {
  S3rver = require(path.join(repo, 'node_modules', '@20minutes', 's3rver'));
} catch (err) {
  console.error('s3rver: @20minutes/s3rver is not installed; run scripts/dev/install-deps.sh');
  process.exit(1);
}

fs.mkdirSync(directory, { recursive: true });

const server = new S3rver({
  address,
  port,
  directory,
  silent: process.env.S3_VERBOSE !== '1',
  configureBuckets: [{ name: bucket }],
});

function removePidFile() {
  try {
    if (fs.readFileSync(pidFile, 'utf8').trim() === String(process.pid)) fs.unlinkSync(pidFile);
  } catch (_) {
    /* already gone */
  }
}

function shutdown(signal) {
  removePidFile();
  server.close(() => process.exit(0));
  // Do not wait for idle keep-alive connections.
  setTimeout(() => process.exit(0), 500).unref();
  console.log(`s3rver: ${signal}, stopping`);
}

server.run().then(
  (addr) => {
    fs.writeFileSync(pidFile, `${process.pid}\n`);
    console.log(`s3rver: listening on http://${addr.address}:${addr.port} bucket=${bucket} dir=${directory}`);
  },
  (err) => {
    console.error(`s3rver: cannot start on ${address}:${port}: ${err.message}`);
    process.exit(1);
  },
);

process.on('SIGTERM', () => shutdown('SIGTERM'));
process.on('SIGINT', () => shutdown('SIGINT'));
