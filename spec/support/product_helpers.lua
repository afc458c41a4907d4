-- spec/support/product_helpers.lua: a real product service for integration specs — a database
-- of its own (created here, dropped in stop), Redis and RabbitMQ from the private stack, an
-- RSA key pair under .run/test/product/ (the service verifies with the public half; specs mint
-- tokens with jwt.sign and the private half) — and HTTP helpers around the http binding.
--
--   local P = require "support.product_helpers"
--   local svc = P.start{ seed = true }           -- setup; P.stop(svc) in teardown
--   local res = P.post(svc, "/products", doc, { token = P.token("seller") })
local cjson = require "cjson.safe"
local crypto = require "crypto"
local http = require "http"
local jwt = require "jwt"
local server = require "support.server"

local M = {}

M.DIR = ".run/test/product"
M.KEY, M.PUB = M.DIR .. "/jwt.pem", M.DIR .. "/jwt.pub"

local function need(name)
  local v = os.getenv(name)
  assert(v and v ~= "", name .. " is not set: run under `make test` or `set -a; . <(scripts/dev/stack.sh env)`")
  return v
end

local function q(s) return "'" .. tostring(s):gsub("'", "'\\''") .. "'" end
M.q = q

function M.sh(cmd)
  local p = assert(io.popen(cmd .. " 2>&1; echo \"rc=$?\""))
  local out = p:read("*a")
  p:close()
  local rc = tonumber(out:match("rc=(%d+)%s*$"))
  return (out:gsub("rc=%d+%s*$", "")), rc
end

local function read(path)
  local f = assert(io.open(path, "rb"))
  local s = f:read("*a")
  f:close()
  return s
end

-- The RSA key pair (made once per checkout; openssl CLI).
function M.keys()
  local f = io.open(M.PUB)
  if f then f:close() return M.KEY, M.PUB end
  os.execute("mkdir -p " .. M.DIR)
  local _, rc = M.sh(("openssl genrsa -out %s.tmp 2048 && openssl rsa -in %s.tmp -pubout -out %s && mv %s.tmp %s")
    :format(M.KEY, M.KEY, M.PUB, M.KEY, M.KEY))
  assert(rc == 0, "openssl failed")
  return M.KEY, M.PUB
end

local private_pem
-- A signed access token; role "buyer" | "seller" | "admin"; sub a fresh uuid unless given.
function M.token(role, sub, extra)
  private_pem = private_pem or read((M.keys()))
  local claims = { sub = sub or crypto.uuid7(), role = role or "buyer", scope = "", iss = "mercato", aud = "mercato",
    iat = os.time(), exp = os.time() + 900, jti = crypto.uuid4() }
  for k, v in pairs(extra or {}) do claims[k] = v end
  return assert(jwt.sign(claims, { key = private_pem })), claims.sub
end

-- A party: { token, sub } of a role.
function M.party(role)
  local t, sub = M.token(role)
  return { token = t, sub = sub }
end

function M.db_url(name) return (need("DATABASE_URL_PRODUCT"):gsub("/[^/?]*(%??[^/]*)$", "/" .. name .. "%1")) end

function M.psql(url, sql)
  local out, rc = M.sh(("psql %s -v ON_ERROR_STOP=1 -AtXqc %s"):format(q(url), q(sql)))
  assert(rc == 0, "psql failed: " .. out)
  return (out:gsub("%s+$", ""))
end

-- Seed the demo catalogue into the service's database (scripts/services/product/seed.lua).
function M.seed(svc)
  local out, rc = M.sh(("SERVICE=product DATABASE_URL=%s %s lua scripts/services/product/seed.lua")
    :format(q(svc.db_url), os.getenv("MERCATO_BIN") or "build/mercato"))
  assert(rc == 0, "seed failed: " .. out)
  return out
end

-- Start SERVICE=product on scripts/ with a fresh database. opts.env overrides (false removes),
-- opts.seed runs the demo seed once the service has migrated.
function M.start(opts)
  opts = opts or {}
  local _, pub = M.keys()
  local name = "mercato_product_spec_" .. crypto.hex(crypto.random(4))
  local admin = M.db_url("postgres")
  M.psql(admin, "CREATE DATABASE " .. name)
  local e = {
    DATABASE_URL = M.db_url(name), REDIS_URL = need("REDIS_URL"), AMQP_URL = os.getenv("AMQP_URL") or false,
    JWT_PUBLIC_KEY_FILE = pub, ELASTICSEARCH_URL = false,
  }
  for k, v in pairs(opts.env or {}) do e[k] = v end
  local ok, srv = pcall(server.start, { service = "product", scripts = "scripts", env = e, timeout = 20 })
  if not ok then M.psql(admin, "DROP DATABASE IF EXISTS " .. name .. " WITH (FORCE)") error(srv, 2) end
  srv.url = "http://127.0.0.1:" .. srv.port
  srv.db_name, srv.db_url = name, e.DATABASE_URL
  -- Migrations run at start-up: wait until /ready says the database is usable.
  for _ = 1, 100 do
    local r = http.request { method = "GET", url = srv.url .. "/ready", timeout_ms = 2000 }
    if r and r.status == 200 then break end
    os.execute("sleep 0.1")
  end
  if opts.seed then M.seed(srv) end
  return srv
end

function M.stop(srv)
  if not srv then return end
  local st = srv:stop()
  pcall(M.psql, M.db_url("postgres"), "DROP DATABASE IF EXISTS " .. srv.db_name .. " WITH (FORCE)")
  return st
end

-- Send a request; returns { status, headers, body, json }.
function M.request(srv, method, path, opts)
  opts = opts or {}
  local headers = {}
  for k, v in pairs(opts.headers or {}) do headers[k] = v end
  if opts.token then headers.Authorization = "Bearer " .. opts.token end
  local body = opts.body
  if opts.json ~= nil then
    body = type(opts.json) == "string" and opts.json or cjson.encode(opts.json)
    headers["Content-Type"] = headers["Content-Type"] or "application/json"
  end
  local res, err = http.request { method = method, url = srv.url .. path, headers = headers, body = body, timeout_ms = 10000 }
  assert(res, "request failed: " .. tostring(err))
  if res.body and res.body ~= "" then res.json = cjson.decode(res.body) end
  return res
end

function M.get(srv, path, opts) return M.request(srv, "GET", path, opts) end
function M.post(srv, path, doc, opts) opts = opts or {}; opts.json = doc; return M.request(srv, "POST", path, opts) end
function M.patch(srv, path, doc, opts) opts = opts or {}; opts.json = doc; return M.request(srv, "PATCH", path, opts) end
function M.delete(srv, path, opts) return M.request(srv, "DELETE", path, opts) end

-- A valid product document, with overrides.
function M.product_doc(over)
  local d = { name = "Spec Lamp " .. crypto.hex(crypto.random(3)), description = "A lamp for specs.", price_cents = 1999,
    currency = "eur", tags = { "Lighting", "spec" }, stock = 5 }
  for k, v in pairs(over or {}) do d[k] = v end
  return d
end

-- Create a product as `party` (201 asserted); returns the document and its ETag.
function M.create(srv, party, over)
  local res = M.post(srv, "/products", M.product_doc(over), { token = party.token })
  assert(res.status == 201, "create: " .. res.status .. " " .. tostring(res.body))
  return res.json, res.headers.etag
end

-- Walk every page of path (a query string is kept); → the items in order and the page count.
function M.all_pages(srv, path, limit)
  local sep = path:find("?", 1, true) and "&" or "?"
  local items, pages, cursor = {}, 0, nil
  repeat
    local res = M.get(srv, path .. sep .. "limit=" .. limit .. (cursor and ("&cursor=" .. cursor) or ""))
    assert(res.status == 200, "page: " .. res.status .. " " .. tostring(res.body))
    pages = pages + 1
    for _, it in ipairs(res.json.items) do items[#items + 1] = it end
    cursor = res.json.next_cursor
    if cursor == cjson.null then cursor = nil end
    assert(pages < 1000, "pagination does not end")
  until not cursor
  return items, pages
end

return M
