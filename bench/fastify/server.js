'use strict';
// Node/Fastify peer for `make bench`: GET /bench/json and the I/O routes /bench/redis/{id},
// /bench/pg/{id}, /bench/pg-redis/{id}, same payloads as mercato and nginx+Lua; with the service
// settings, the product and user service routes of the service scenarios.
//
// Env:
//   PORT             listen port (127.0.0.1)                                  default 58083
//   FASTIFY_WORKERS  node:cluster workers; 1 runs a single process without cluster   default 1
//   ACCESS_LOG       access log file ('' disables)                           default access.log
//   DATABASE_URL     PostgreSQL of the I/O routes (unset: the I/O routes answer 503)
//   REDIS_URL        Redis of the I/O routes (unset: likewise)
//   PG_POOL          pg Pool size per process                                  default 16
//   PRODUCT_DATABASE_URL, USER_DATABASE_URL, SVC_REDIS_URL, JWT_PUBLIC_KEY_FILE (JWT_ISSUER,
//   JWT_AUDIENCE, PRODUCT_CACHE_TTL): the service routes GET /products/{id},
//                    /nocache/products/{id} and /users/me (bench/node/services.js); unset: none
//   PID_FILE         pid file of the primary (optional)
//
// Set up as Fastify's users run it: response schemas on every route (Fastify compiles them into
// serializers with fast-json-stringify, its default for a route with a schema), params validated
// by schema, Fastify's own pino logger. Fairness (bench/README.md): one JSON access log line per
// request (Fastify's two default request lines are turned off for one onResponse line, with the
// request id pino binds), written through a 64 KiB buffer flushed every second (pino.destination
// minLength, as nginx `access_log ... buffer=64k flush=1s`); X-Request-Id echoed when sane or
// generated (crypto.randomUUID); a request counter and a duration sum per route and process.

const crypto = require('node:crypto');
const { runClustered } = require('../node/cluster');

const PORT = parseInt(process.env.PORT || '58083', 10);
const WORKERS = Math.max(1, parseInt(process.env.FASTIFY_WORKERS || '1', 10));
const ACCESS_LOG = process.env.ACCESS_LOG === undefined ? 'access.log' : process.env.ACCESS_LOG;
const PG_POOL = Math.max(1, parseInt(process.env.PG_POOL || '16', 10));

runClustered({ name: 'fastify', workers: WORKERS, pidFile: process.env.PID_FILE }, runWorker);

function runWorker() {
  const Fastify = require('fastify');
  const pino = require('pino');

  // ---- logger: pino into a 64 KiB buffer, flushed every second ----------------------------
  let dest = null;
  if (ACCESS_LOG) {
    dest = pino.destination({ dest: ACCESS_LOG, minLength: 64 * 1024, maxWrite: 128 * 1024, sync: false });
    setInterval(() => dest.flush(), 1000).unref();
  }

  const RID_OK = /^[A-Za-z0-9\-_.:]{1,128}$/;
  const app = Fastify({
    logger: dest ? { level: 'info', stream: dest } : false,
    // one line per request, from the onResponse hook below
    logController: new Fastify.LogController({ disableRequestLogging: true }),
    requestIdHeader: false,
    genReqId(req) {
      const incoming = req.headers['x-request-id'];
      return incoming && RID_OK.test(incoming) ? incoming : crypto.randomUUID();
    },
    keepAliveTimeout: 65000, // same as nginx keepalive_timeout
  });

  // ---- metrics (per process, like a per-worker registry) -----------------------------------
  const metrics = { requests: new Map(), durationSum: new Map() };
  function observe(method, route, status, seconds) {
    const k = `${method}|${route}|${status}`;
    metrics.requests.set(k, (metrics.requests.get(k) || 0) + 1);
    const d = `${method}|${route}`;
    metrics.durationSum.set(d, (metrics.durationSum.get(d) || 0) + seconds);
  }

  app.addHook('onRequest', (request, reply, done) => {
    reply.header('X-Request-Id', request.id);
    done();
  });
  app.addHook('onResponse', (request, reply, done) => {
    const secs = reply.elapsedTime / 1000;
    observe(request.method, request.routeOptions.url || 'unmatched', reply.statusCode, secs);
    if (dest) {
      request.log.info({
        method: request.method,
        path: request.url,
        status: reply.statusCode,
        bytes: Number(reply.getHeader('content-length') || 0),
        duration_s: secs,
        remote: request.ip,
      }, 'request completed');
    }
    done();
  });

  // ---- schemas -----------------------------------------------------------------------------
  const error = { type: 'object', properties: { error: { type: 'string' } }, required: ['error'] };
  const idParams = {
    type: 'object',
    properties: { id: { type: 'integer', minimum: 0, maximum: 999999999 } },
    required: ['id'],
  };
  const str = { type: 'string' };
  const int = { type: 'integer' };
  const row = { id: int, name: str, price_cents: int, currency: str };

  app.get('/bench/json', {
    schema: {
      response: {
        200: {
          type: 'object',
          properties: {
            id: str, name: str, price_cents: int, currency: str,
            tags: { type: 'array', items: str }, stock: int,
          },
        },
      },
    },
  }, async () => ({
    // Same payload as mercato and nginx+Lua, built per request.
    id: '7f1c2a9e-0d7b-4e8a-9b7c-2f1e5a6b8c9d',
    name: 'Wireless Headphones',
    price_cents: 12999,
    currency: 'usd',
    tags: ['audio', 'wireless'],
    stock: 42,
  }));

  // ---- I/O routes (bench/node/io.js: pg + ioredis) -----------------------------------------
  const io = process.env.DATABASE_URL && process.env.REDIS_URL
    ? require('../node/io').createIo({
      pg: require('pg'), Redis: require('ioredis'),
      databaseUrl: process.env.DATABASE_URL, redisUrl: process.env.REDIS_URL, poolSize: PG_POOL,
    })
    : null;
  const noIo = { status: 503, body: { error: 'no DATABASE_URL/REDIS_URL' } };
  const ioRoute = (path, properties, fn) => app.get(path, {
    schema: {
      params: idParams,
      response: { 200: { type: 'object', properties }, '4xx': error, '5xx': error },
    },
  }, async (request, reply) => {
    const r = io ? await fn(request.params.id) : noIo;
    reply.code(r.status);
    return r.body;
  });
  ioRoute('/bench/redis/:id', { id: str, name: str, price_cents: str, currency: str, stock: str },
    (id) => io.redis(id));
  ioRoute('/bench/pg/:id', row, (id) => io.pg(id));
  ioRoute('/bench/pg-redis/:id', { ...row, stock: int }, (id) => io.pgRedis(id));

  // ---- service routes (bench/node/services.js: the product and user services' documents) ----
  const svc = require('../node/services').fromEnv(
    () => ({ pg: require('pg'), Redis: require('ioredis'), jose: require('jose') }), PG_POOL);
  if (svc) {
    const send = (reply, r) => reply.code(r.status).headers(r.headers).send(r.body);
    const uuidParams = { type: 'object', properties: { id: str }, required: ['id'] };
    app.get('/products/:id', { schema: { params: uuidParams } },
      async (request, reply) => send(reply, await svc.product(request.params.id, true)));
    app.get('/nocache/products/:id', { schema: { params: uuidParams } },
      async (request, reply) => send(reply, await svc.product(request.params.id, false)));
    const nullable = (type) => ({ type: [type, 'null'] });
    app.get('/users/me', {
      schema: {
        response: {
          200: {
            type: 'object',
            properties: {
              id: str, email: str, name: str, role: str, phone: nullable('string'), address: {},
              disabled: { type: 'boolean' }, created_at: str, updated_at: str,
            },
          },
        },
      },
    }, async (request, reply) => send(reply, await svc.usersMe(request.headers.authorization)));
  }

  app.listen({ port: PORT, host: '127.0.0.1' }).catch((err) => {
    console.error(`fastify: ${err.message}`);
    process.exit(1);
  });

  let stopping = false;
  const stop = () => {
    if (stopping) return;
    stopping = true;
    setTimeout(() => process.exit(0), 1000).unref();
    Promise.all([io && io.close(), svc && svc.close()]).catch(() => {}).finally(() => {
      if (!dest) process.exit(0);
      dest.end();
      dest.on('close', () => process.exit(0));
    });
  };
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
}
