-- mercato side of `make bench` (started with SCRIPTS_DIR=bench/scripts SERVICE=product).
-- /bench/json: same payload as bench/nginx/nginx.conf.in and bench/express/server.js, built from a
-- table per request; the host JSON-encodes it and adds X-Request-Id and metrics.
-- I/O scenarios (bench/run.sh gives mercato the stack's DATABASE_URL and REDIS_URL and seeds
-- bench:product:<id> hashes and bench:stock:<id>; bench/nginx/nginx.conf.in does the same work
-- over cosockets with bench/nginx/redis_mini.lua and bench/nginx/pgmini.lua):
-- /bench/redis/{id}: one Redis HGETALL, the flat reply turned into an object.
-- /bench/pg/{id}: one indexed PostgreSQL SELECT by primary key, the row JSON-encoded.
-- /bench/pg-redis/{id}: one indexed PostgreSQL read, then one Redis GET.
local cjson = require "cjson" -- luacheck: ignore 211
local db = require "db"
local cache = require "cache"
local M = {}

function M.json(req) -- luacheck: ignore 212
  return 200, {
    id = "7f1c2a9e-0d7b-4e8a-9b7c-2f1e5a6b8c9d",
    name = "Wireless Headphones",
    price_cents = 12999,
    currency = "usd",
    tags = { "audio", "wireless" },
    stock = 42,
  }
end

local ITEM_SQL = "SELECT id, name, price_cents, currency FROM bench_items WHERE id = $1"

function M.redis(req)
  local id = tonumber(req.params.id)
  if not id then return 404, { error = "not found" } end
  local flat, err, code = cache.call("HGETALL", "bench:product:" .. id)
  if err then return code == "timeout" and 504 or 503, { error = err } end
  if not flat or #flat == 0 then return 404, { error = "not found" } end
  -- HGETALL is a flat array k1, v1, k2, v2, ...: same conversion as the nginx peer.
  local obj = {}
  for i = 1, #flat, 2 do obj[flat[i]] = flat[i + 1] end
  return 200, obj
end

function M.pg(req)
  local id = tonumber(req.params.id)
  if not id then return 404, { error = "not found" } end
  local row, err, code = db.query_one(ITEM_SQL, id)
  if err then return code == "timeout" and 504 or 503, { error = err } end
  if not row then return 404, { error = "not found" } end
  return 200, row
end

function M.pg_redis(req)
  local id = tonumber(req.params.id)
  if not id then return 404, { error = "not found" } end
  local row, err, code = db.query_one(ITEM_SQL, id)
  if err then return code == "timeout" and 504 or 503, { error = err } end
  if not row then return 404, { error = "not found" } end
  local stock
  stock, err, code = cache.call("GET", "bench:stock:" .. id)
  if err then return code == "timeout" and 504 or 503, { error = err } end
  row.stock = tonumber(stock) or 0
  return 200, row
end

return {
  { "GET", "/bench/json", M.json },
  { "GET", "/bench/redis/{id}", M.redis },
  { "GET", "/bench/pg/{id}", M.pg },
  { "GET", "/bench/pg-redis/{id}", M.pg_redis },
}
