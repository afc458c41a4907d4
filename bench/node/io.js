'use strict';
// The I/O routes of the Node peers of `make bench` (bench/express, bench/fastify): the same work as
// mercato's bench/scripts/services/product/routes.lua and nginx's bench/nginx/nginx.conf.in, with
// the clients Node users run: node-postgres (`pg`, a Pool, the statement prepared once per
// connection through a named query) and `ioredis` (one connection per process, commands sent as
// they come, replies matched in order). Each peer passes in its own copies of the two modules (so
// that each resolves them from its own node_modules, pinned by its package-lock.json).
//
//   GET /bench/redis/{id}     HGETALL bench:product:<id>, as an object (values are strings)
//   GET /bench/pg/{id}        SELECT id, name, price_cents, currency FROM bench_items WHERE id = $1
//   GET /bench/pg-redis/{id}  that row, then GET bench:stock:<id> into `stock` (in sequence)
//
// Each handler resolves to { status, body }: 200 and the document, 404 { error } when there is no
// such row or key, 503 { error } when PostgreSQL or Redis fails (never thrown).
//
// createIo({ pg, Redis, databaseUrl, redisUrl, poolSize }) → { redis(id), pg(id), pgRedis(id), close() }
//   pg          the `pg` module;  Redis  the `ioredis` class
//   poolSize    the Pool's max open connections per process (bench/run.sh: BENCH_NODE_PG_POOL)
// Idle pool connections close after 2 s: the pool stays open over the runner's 1 s pause between
// the warm-up and the measured run (mercato's stays open too; had it closed, every measured run
// would start by opening its connections again — on this loaded machine, seconds), and is closed
// by the time the next peer of the round opens its own (PostgreSQL's 200 slots).

const ITEM_SQL = 'SELECT id, name, price_cents, currency FROM bench_items WHERE id = $1';
const ITEM_QUERY = 'bench_item'; // the prepared statement's name on each connection

function createIo({ pg, Redis, databaseUrl, redisUrl, poolSize }) {
  const pool = new pg.Pool({ connectionString: databaseUrl, max: poolSize, idleTimeoutMillis: 2000 });
  // An idle client that errors (PostgreSQL restarted) is dropped by the Pool; without a
  // listener the 'error' event would kill the process.
  pool.on('error', (err) => console.error(`pg pool: ${err.message}`));
  const redis = new Redis(redisUrl);
  redis.on('error', (err) => console.error(`ioredis: ${err.message}`));

  const fail = (err) => ({ status: 503, body: { error: String(err && err.message || err) } });
  const notFound = { status: 404, body: { error: 'not found' } };

  async function item(id) {
    const r = await pool.query({ name: ITEM_QUERY, text: ITEM_SQL, values: [id] });
    return r.rows[0];
  }

  return {
    async redis(id) {
      let obj;
      try { obj = await redis.hgetall(`bench:product:${id}`); } catch (err) { return fail(err); }
      if (!obj || Object.keys(obj).length === 0) return notFound;
      return { status: 200, body: obj };
    },
    async pg(id) {
      let row;
      try { row = await item(id); } catch (err) { return fail(err); }
      return row ? { status: 200, body: row } : notFound;
    },
    async pgRedis(id) {
      let row, stock;
      try { row = await item(id); } catch (err) { return fail(err); }
      if (!row) return notFound;
      try { stock = await redis.get(`bench:stock:${id}`); } catch (err) { return fail(err); }
      row.stock = Number(stock) || 0;
      return { status: 200, body: row };
    },
    async close() {
      redis.disconnect();
      await pool.end();
    },
  };
}

module.exports = { createIo };
