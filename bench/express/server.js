'use strict';
// Node/Express peer for `make bench`: GET /bench/json and the I/O routes /bench/redis/{id},
// /bench/pg/{id}, /bench/pg-redis/{id}, same payloads as mercato and nginx+Lua; with the service
// settings, the product and user service routes of the service scenarios.
//
// Env:
//   PORT             listen port (127.0.0.1)               default 58082
//   EXPRESS_WORKERS  node:cluster workers (2 = mercato WORKERS=2, nginx worker_processes 2)
//                    1 runs a single process without cluster              default 2
//   ACCESS_LOG       access log file ('' disables)          default access.log
//   DATABASE_URL     PostgreSQL of the I/O routes (unset: the I/O routes answer 503)
//   REDIS_URL        Redis of the I/O routes (unset: likewise)
//   PG_POOL          pg Pool size per process               default 16
//   PRODUCT_DATABASE_URL, USER_DATABASE_URL, SVC_REDIS_URL, JWT_PUBLIC_KEY_FILE (JWT_ISSUER,
//   JWT_AUDIENCE, PRODUCT_CACHE_TTL): the service routes GET /products/{id},
//                    /nocache/products/{id} and /users/me (bench/node/services.js); unset: none
//   PID_FILE         pid file of the primary (optional)
//
// Fairness (see bench/README.md): X-Request-Id echoed or generated, a request counter and a
// duration sum per route (like mercato's metrics), one JSON access log line per request written
// through a 64 KiB / 1 s buffer (like nginx `access_log ... buffer=64k flush=1s`), no ETag.
// The I/O routes use `pg` (a Pool, named prepared statement) and `ioredis`: bench/node/io.js,
// shared with the Fastify peer.

const crypto = require('node:crypto');
const fs = require('node:fs');
const { runClustered } = require('../node/cluster');

const PORT = parseInt(process.env.PORT || '58082', 10);
const WORKERS = Math.max(1, parseInt(process.env.EXPRESS_WORKERS || '2', 10));
const ACCESS_LOG = process.env.ACCESS_LOG === undefined ? 'access.log' : process.env.ACCESS_LOG;
const PG_POOL = Math.max(1, parseInt(process.env.PG_POOL || '16', 10));

runClustered({ name: 'express', workers: WORKERS, pidFile: process.env.PID_FILE }, runWorker);

function runWorker() {
  const express = require('express');

  // ---- buffered access log: flush at 64 KiB or every 1 s -------------------------------
  const LOG_BUFFER = 64 * 1024;
  let logStream = null;
  let logChunks = [];
  let logBytes = 0;
  if (ACCESS_LOG) {
    logStream = fs.createWriteStream(ACCESS_LOG, { flags: 'a' });
    setInterval(flushLog, 1000).unref();
  }
  function flushLog() {
    if (logBytes === 0) return;
    logStream.write(logChunks.join(''));
    logChunks = [];
    logBytes = 0;
  }
  function accessLog(line) {
    logChunks.push(line);
    logBytes += line.length;
    if (logBytes >= LOG_BUFFER) flushLog();
  }

  // ---- metrics (per process, like a per-worker registry) -------------------------------
  const metrics = { requests: new Map(), durationSum: new Map() };
  function observe(method, route, status, seconds) {
    const k = `${method}|${route}|${status}`;
    metrics.requests.set(k, (metrics.requests.get(k) || 0) + 1);
    const d = `${method}|${route}`;
    metrics.durationSum.set(d, (metrics.durationSum.get(d) || 0) + seconds);
  }

  const RID_OK = /^[A-Za-z0-9\-_.:]{1,128}$/;

  const app = express();
  app.disable('x-powered-by');
  app.disable('etag'); // mercato and nginx do not hash the body for an ETag

  // request id + access log + metrics, as middleware (the Express way)
  app.use((req, res, next) => {
    const start = process.hrtime.bigint();
    const incoming = req.headers['x-request-id'];
    const rid = incoming && RID_OK.test(incoming) ? incoming : crypto.randomUUID();
    res.setHeader('X-Request-Id', rid);
    res.on('finish', () => {
      const secs = Number(process.hrtime.bigint() - start) / 1e9;
      observe(req.method, req.route ? req.route.path : 'unmatched', res.statusCode, secs);
      if (logStream) {
        accessLog(JSON.stringify({
          ts: new Date().toISOString(),
          method: req.method,
          path: req.path,
          status: res.statusCode,
          bytes: Number(res.getHeader('content-length') || 0),
          duration_s: secs,
          request_id: rid,
          remote: req.socket.remoteAddress,
        }) + '\n');
      }
    });
    next();
  });

  app.get('/bench/json', (req, res) => {
    // Same payload as mercato and nginx+Lua, built per request.
    res.status(200).json({
      id: '7f1c2a9e-0d7b-4e8a-9b7c-2f1e5a6b8c9d',
      name: 'Wireless Headphones',
      price_cents: 12999,
      currency: 'usd',
      tags: ['audio', 'wireless'],
      stock: 42,
    });
  });

  // ---- I/O routes (bench/node/io.js: pg + ioredis) -----------------------------------------
  const io = process.env.DATABASE_URL && process.env.REDIS_URL
    ? require('../node/io').createIo({
      pg: require('pg'), Redis: require('ioredis'),
      databaseUrl: process.env.DATABASE_URL, redisUrl: process.env.REDIS_URL, poolSize: PG_POOL,
    })
    : null;
  const noIo = { status: 503, body: { error: 'no DATABASE_URL/REDIS_URL' } };
  const ioRoute = (path, fn) => app.get(path, (req, res, next) => {
    (io ? fn(Number(req.params.id)) : Promise.resolve(noIo))
      .then((r) => res.status(r.status).json(r.body), next);
  });
  ioRoute('/bench/redis/:id(\\d{1,9})', (id) => io.redis(id));
  ioRoute('/bench/pg/:id(\\d{1,9})', (id) => io.pg(id));
  ioRoute('/bench/pg-redis/:id(\\d{1,9})', (id) => io.pgRedis(id));

  // ---- service routes (bench/node/services.js: the product and user services' documents) ----
  const svc = require('../node/services').fromEnv(
    () => ({ pg: require('pg'), Redis: require('ioredis'), jose: require('jose') }), PG_POOL);
  if (svc) {
    const send = (res, r) => (typeof r.body === 'string'
      ? res.status(r.status).set(r.headers).send(r.body)
      : res.status(r.status).set(r.headers).json(r.body));
    const route = (path, fn) => app.get(path, (req, res, next) => { fn(req).then((r) => send(res, r), next); });
    route('/products/:id', (req) => svc.product(req.params.id, true));
    route('/nocache/products/:id', (req) => svc.product(req.params.id, false));
    route('/users/me', (req) => svc.usersMe(req.headers.authorization));
  }

  const server = app.listen(PORT, '127.0.0.1');
  server.keepAliveTimeout = 65000; // same as nginx keepalive_timeout

  const stop = () => {
    setTimeout(() => process.exit(0), 1000).unref();
    Promise.all([io && io.close(), svc && svc.close()]).catch(() => {}).finally(() => {
      if (!logStream) process.exit(0);
      flushLog();
      logStream.end(() => process.exit(0));
    });
  };
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
}
