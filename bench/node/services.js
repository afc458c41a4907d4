'use strict';
// The service routes of the Node peers of `make bench` (bench/express, bench/fastify), beside
// mercato's real user and product services in the service scenarios (bench/services.sh): the
// same documents from the same databases, with the clients Node users run (pg, ioredis, jose).
//
//   GET /products/{id}          scripts/services/product/handlers/products.lua `show`: the Redis
//                               read cache first ("<version>\n<json>" under a key of the peer's
//                               own, EX PRODUCT_CACHE_TTL), else the same SELECT (products JOIN
//                               inventory, active only) by primary key, the document JSON-encoded,
//                               then cached. ETag "<version>", X-Cache hit/miss.
//   GET /nocache/products/{id}  the same with the cache off (mercato: PRODUCT_CACHE_TTL=0)
//   GET /users/me               scripts/services/user/handlers/users.lua `me`: the Bearer token
//                               verified with jose (RS256, exp, iss, aud: what mercato checks in
//                               C), then the same SELECT by primary key, the public document
//
// Not served (the bench never sends them): If-None-Match (304), a deleted product for its owner,
// image URLs (the bench's products have none: `images` is always []).
//
// createServices({ pg, Redis, jose, productDatabaseUrl, userDatabaseUrl, redisUrl, poolSize,
//   publicKeyPem, issuer, audience, cacheTtl }) → { product(id, cached), usersMe(authorization),
//   close() }, each resolving to { status, body, headers } where body is a string (the JSON text,
//   as the product service sends its cached text as is) or an object.

const UUID = /^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$/;
// scripts/services/product/store.lua: _M.COLUMNS, _M.FROM, _M.get
const PRODUCT_SQL = `SELECT p.id, p.seller_id, p.name, p.description, p.price_cents, p.currency, p.category_id,
  to_jsonb(p.tags) AS tags, to_jsonb(p.images) AS images, p.status, p.version, p.created_at, p.updated_at, i.stock
  FROM products p JOIN inventory i ON i.product_id = p.id WHERE p.id = $1 AND p.status = 'active'`;
// scripts/services/user/store.lua: COLUMNS, by_id
const USER_SQL = 'SELECT id, email, name, role, phone, address, disabled, created_at, updated_at FROM users WHERE id = $1';
const CACHE_PREFIX = 'bench:node:product:v2:';

// timestamptz text ("2026-12-03 15:04:05.123456+00") → RFC 3339 in UTC with PostgreSQL's own
// fraction digits, as mercato's db binding gives it (bindings/db_types.c); JavaScript's Date would
// cut it to milliseconds.
function rfc3339(text) {
  const m = /^(\d{4,6})-(\d\d)-(\d\d) (\d\d):(\d\d):(\d\d)(\.\d+)?([+-])(\d\d)(?::(\d\d))?(?::(\d\d))?$/.exec(text);
  if (!m) return text;
  const off = (m[8] === '-' ? -1 : 1) * (Number(m[9]) * 3600 + Number(m[10] || 0) * 60 + Number(m[11] || 0));
  const t = Date.UTC(Number(m[1]), Number(m[2]) - 1, Number(m[3]), Number(m[4]), Number(m[5]), Number(m[6])) - off * 1000;
  return `${new Date(t).toISOString().slice(0, 19)}${m[7] || ''}Z`;
}

function createServices(o) {
  // bigint (price_cents, version) as numbers, as mercato's binding gives them; timestamptz as above.
  const types = {
    getTypeParser(oid, format) {
      if (oid === 20) return Number;
      if (oid === 1184) return rfc3339;
      return o.pg.types.getTypeParser(oid, format);
    },
  };
  const pool = (url) => {
    // Idle connections close after 2 s: the pool stays open over the runner's 1 s pause between the
    // warm-up and the measured run, as mercato's does (and the runner samples the CPU of the
    // backends it finds open), but not while the next peer runs (PostgreSQL's 200 slots).
    const p = new o.pg.Pool({ connectionString: url, max: o.poolSize, idleTimeoutMillis: 2000, types });
    p.on('error', (err) => console.error(`pg pool: ${err.message}`));
    return p;
  };
  const products = pool(o.productDatabaseUrl);
  const users = pool(o.userDatabaseUrl);
  const redis = new o.Redis(o.redisUrl);
  redis.on('error', (err) => console.error(`ioredis: ${err.message}`));
  const publicKey = o.jose.importSPKI(o.publicKeyPem, 'RS256');

  const problem = (status, title, detail, extra) => ({
    status,
    body: { type: 'about:blank', title, status, detail },
    headers: { 'Content-Type': 'application/problem+json', ...extra },
  });
  const unavailable = (err) => problem(503, 'Service Unavailable', String(err && err.message || err));
  const unauthorized = (detail) =>
    problem(401, 'Unauthorized', detail, { 'WWW-Authenticate': 'Bearer error="invalid_token"' });

  // scripts/services/product/store.lua: _M.public
  const productDoc = (r) => {
    const doc = {
      id: r.id, seller_id: r.seller_id, name: r.name, description: r.description,
      price_cents: r.price_cents, currency: r.currency, tags: Array.isArray(r.tags) ? r.tags : [],
      images: [], stock: r.stock, version: r.version, created_at: r.created_at, updated_at: r.updated_at,
    };
    if (r.category_id !== null) doc.category_id = r.category_id; // a Lua nil: absent
    return doc;
  };

  return {
    async product(rawId, cached) {
      if (!UUID.test(rawId)) return problem(404, 'Not Found', `No product ${rawId}.`);
      const id = rawId.toLowerCase();
      const ttl = cached ? o.cacheTtl : 0;
      if (ttl > 0) {
        let v = null;
        try { v = await redis.get(CACHE_PREFIX + id); } catch (_) { v = null; } // Redis down: a miss
        const nl = v === null ? -1 : v.indexOf('\n');
        if (nl > 0) {
          return {
            status: 200, body: v.slice(nl + 1),
            headers: { ETag: `"${v.slice(0, nl)}"`, 'Content-Type': 'application/json', 'X-Cache': 'hit' },
          };
        }
      }
      let row;
      try {
        row = (await products.query({ name: 'bench_product', text: PRODUCT_SQL, values: [id] })).rows[0];
      } catch (err) { return unavailable(err); }
      if (!row) return problem(404, 'Not Found', `No product ${id}.`);
      const text = JSON.stringify(productDoc(row));
      if (ttl > 0) {
        try { await redis.set(CACHE_PREFIX + id, `${row.version}\n${text}`, 'EX', ttl); } catch (_) { /* the TTL cleans up */ }
      }
      return {
        status: 200, body: text,
        headers: { ETag: `"${row.version}"`, 'Content-Type': 'application/json', 'X-Cache': 'miss' },
      };
    },

    async usersMe(authorization) {
      const m = /^Bearer +([A-Za-z0-9\-_.]+)$/.exec(authorization || '');
      if (!m) return unauthorized('A Bearer token is required.');
      let claims;
      try {
        ({ payload: claims } = await o.jose.jwtVerify(m[1], await publicKey,
          { algorithms: ['RS256'], issuer: o.issuer, audience: o.audience }));
      } catch (err) { return unauthorized(`The token is not valid: ${err.code || err.message}.`); }
      if (!UUID.test(claims.sub || '')) return problem(404, 'Not Found', 'No user profile.');
      let row;
      try {
        row = (await users.query({ name: 'bench_user', text: USER_SQL, values: [claims.sub] })).rows[0];
      } catch (err) { return unavailable(err); }
      if (!row || row.disabled) return unauthorized('This account no longer exists or is disabled.');
      // scripts/services/user/store.lua: _M.public
      return {
        status: 200,
        body: {
          id: row.id, email: row.email, name: row.name, role: row.role, phone: row.phone,
          address: row.address, disabled: row.disabled, created_at: row.created_at, updated_at: row.updated_at,
        },
        headers: {},
      };
    },

    async close() {
      redis.disconnect();
      await Promise.all([products.end(), users.end()]);
    },
  };
}

// fromEnv(load, poolSize): the services of the process environment, or null when it names no
// databases (PRODUCT_DATABASE_URL, USER_DATABASE_URL, SVC_REDIS_URL, JWT_PUBLIC_KEY_FILE; JWT_ISSUER
// and JWT_AUDIENCE default to mercato's "mercato", PRODUCT_CACHE_TTL to its 60 s). load() gives
// { pg, Redis, jose }, the peer's own modules, loaded only when the routes are on.
function fromEnv(load, poolSize) {
  const e = process.env;
  if (!e.PRODUCT_DATABASE_URL || !e.USER_DATABASE_URL || !e.SVC_REDIS_URL || !e.JWT_PUBLIC_KEY_FILE) return null;
  const { pg, Redis, jose } = load();
  const ttl = Number(e.PRODUCT_CACHE_TTL);
  return createServices({
    pg, Redis, jose, poolSize,
    productDatabaseUrl: e.PRODUCT_DATABASE_URL, userDatabaseUrl: e.USER_DATABASE_URL, redisUrl: e.SVC_REDIS_URL,
    publicKeyPem: require('node:fs').readFileSync(e.JWT_PUBLIC_KEY_FILE, 'utf8'),
    issuer: e.JWT_ISSUER || 'mercato', audience: e.JWT_AUDIENCE || 'mercato',
    cacheTtl: e.PRODUCT_CACHE_TTL === undefined || Number.isNaN(ttl) ? 60 : ttl,
  });
}

module.exports = { createServices, fromEnv, rfc3339 };
