-- scripts/lib/idempotency.lua: Idempotency-Key for routes that declare `idempotency = true`
-- luacheck: max line length 170
-- (CONTRACT §3, Stripe's semantics; ARCHITECTURE.md "Reliability rules"). The host wraps such a
-- route's handler with wrap() when it loads the routes (host/worker.c), so a handler never
-- sees a replay:
--
--   { "POST", "/orders", orders.create, auth = "required", idempotency = true },
--
-- A request without the header runs as usual. With it, the key is scoped to the caller (the
-- token's sub) and the route, and claimed atomically in the service's own PostgreSQL
-- (INSERT … ON CONFLICT, table from scripts/lib/sql/idempotency.sql):
--   new key                        → the handler runs; its answer (status, headers, body) is
--                                    stored for 24 h, unless it is a 5xx (the work did not
--                                    happen: the key is freed so that a retry runs again)
--   same key, same request, answered → the stored answer, byte for byte, with
--                                    `Idempotent-Replayed: true`
--   same key, other request        → 422 (method, path, query and body are compared by hash)
--   same key, still in flight      → 409 with Retry-After
--   in flight past the lock timeout (a process killed mid-request) → taken over: the handler
--                                    runs again with req.idempotency.recovered = true, and must
--                                    resume from its own recovery point (the order service
--                                    finds the order it created under this key)
--   key empty, over 255 bytes or not printable ASCII → 400
-- The handler sees req.idempotency = { key = ..., recovered = bool } when a key was given.
-- Database down while claiming → 503; nothing ran.
--
-- A handler whose work is one transaction can store its answer in that transaction instead of
-- the separate UPDATE after it: the answer then commits with the work, or neither does (no
-- window in which the work is done but the key is still "in flight", one commit less):
--
--   local answer
--   local row, err, code = db.tx(function()
--     local row = ...the work...
--     answer = { idempotency.store_in_tx(req, 201, view(row), { Location = ... }) }
--     if not answer[1] then return nil, answer[2], answer[3] end
--     return row
--   end)
--   if not row then return problem.from(code, err) end
--   return unpack(answer, 1, 3)   -- the bytes that were stored
--
-- wrap() then sees that the answer it is handed is the one stored and writes nothing more. If
-- the transaction rolled back, or the handler answers something else, wrap() stores (or, for a
-- 5xx, frees the key) as usual; a stored answer is never freed.
local crypto = require "crypto"
local db = require "db"
local host = require "host"
local json = require "json"
local log = require "log"
local metrics = require "metrics"
local problem = require "lib.problem"

local _M = {}

_M.TTL_S = 24 * 3600
_M.LOCK_S = tonumber(host.env("IDEMPOTENCY_LOCK_S") or "") or 30
_M.MAX_KEY = 255

local outcomes = metrics.counter("idempotency_requests_total",
  "Requests that carried an Idempotency-Key, by outcome (stored, replayed, conflict, in_flight, recovered, released)",
  { "route", "outcome" })

local SQL_CLAIM = "INSERT INTO idempotency_keys (caller, route, key, request_hash, locked_until, expires_at) " ..
  "VALUES ($1, $2, $3, $4, now() + make_interval(secs => $5::float8), now() + make_interval(secs => $6::float8)) " ..
  "ON CONFLICT (caller, route, key) DO NOTHING RETURNING 1 AS claimed"

local SQL_READ = "SELECT request_hash, status, headers::text AS headers, body, " ..
  "(locked_until IS NOT NULL AND locked_until > now()) AS in_flight, expires_at <= now() AS expired, " ..
  "GREATEST(1, CEIL(EXTRACT(EPOCH FROM (locked_until - now()))))::int AS retry_after " ..
  "FROM idempotency_keys WHERE caller = $1 AND route = $2 AND key = $3"

-- Take over an expired key, or an unanswered one whose lock passed (its process died).
local SQL_TAKE_OVER = "UPDATE idempotency_keys SET request_hash = $4, locked_until = now() + make_interval(secs => $5::float8), " ..
  "status = NULL, headers = NULL, body = NULL, " ..
  "expires_at = CASE WHEN expires_at <= now() THEN now() + make_interval(secs => $6::float8) ELSE expires_at END " ..
  "WHERE caller = $1 AND route = $2 AND key = $3 " ..
  "AND (expires_at <= now() OR (status IS NULL AND (locked_until IS NULL OR locked_until <= now()))) RETURNING 1 AS taken"

local SQL_STORE = "UPDATE idempotency_keys SET status = $4, headers = $5::jsonb, body = $6, locked_until = NULL " ..
  "WHERE caller = $1 AND route = $2 AND key = $3"

local SQL_RELEASE = "DELETE FROM idempotency_keys WHERE caller = $1 AND route = $2 AND key = $3 AND status IS NULL"

local function valid_key(k)
  return #k >= 1 and #k <= _M.MAX_KEY and not k:find("[^\32-\126]")
end

local function request_hash(req)
  local q = {}
  for k, v in pairs(req.query or {}) do q[#q + 1] = k .. "=" .. v end
  table.sort(q)
  return crypto.hex(crypto.sha256(req.method .. "\n" .. req.path .. "\n" .. table.concat(q, "&") .. "\n" .. (req.body or "")))
end

local function replay(row)
  local headers = row.headers and json.decode(row.headers) or {}
  headers["Idempotent-Replayed"] = "true"
  local body = row.body
  if body == db.null then body = nil end
  return row.status, body, headers
end

-- The handler's answer as it will be sent: a table body encoded once, here, so that the stored
-- bytes and the sent bytes are the same.
local function settle(status, body, headers)
  headers = headers or {}
  if type(body) == "table" then
    local text, err = json.encode(body)
    if not text then error("the handler returned a body that cannot be encoded as JSON: " .. tostring(err), 0) end
    body = text
    local typed = false
    for k in pairs(headers) do if k:lower() == "content-type" then typed = true end end
    if not typed then headers["Content-Type"] = "application/json" end
  end
  return status, body, headers
end

-- Claim (caller, route, key) for this request. → "run", recovered | "answer", status, body, headers
local function claim(caller, route, key, hash)
  local row, err, code = db.query_one(SQL_CLAIM, caller, route, key, hash, _M.LOCK_S, _M.TTL_S)
  if err then return "answer", problem.from(code, err) end
  if row then return "run", false end
  row, err, code = db.query_one(SQL_READ, caller, route, key)
  if err then return "answer", problem.from(code, err) end
  if row and not row.expired then
    if row.request_hash ~= hash then
      outcomes:inc(1, route, "conflict")
      return "answer", problem.new(422, "This Idempotency-Key was already used with a different request; " ..
        "use a new key for a new request.")
    end
    if row.status ~= db.null and row.status ~= nil then
      outcomes:inc(1, route, "replayed")
      return "answer", replay(row)
    end
    if row.in_flight then
      outcomes:inc(1, route, "in_flight")
      return "answer", problem.new(409, "A request with this Idempotency-Key is still being processed; retry later.",
        nil, { ["Retry-After"] = tostring(row.retry_after) })
    end
  end
  -- Expired, unanswered past its lock, or deleted between the two statements.
  local taken
  taken, err, code = db.query_one(SQL_TAKE_OVER, caller, route, key, hash, _M.LOCK_S, _M.TTL_S)
  if err then return "answer", problem.from(code, err) end
  if taken then return "run", row ~= nil and not row.expired end
  row, err, code = db.query_one(SQL_CLAIM, caller, route, key, hash, _M.LOCK_S, _M.TTL_S)
  if err then return "answer", problem.from(code, err) end
  if row then return "run", false end
  outcomes:inc(1, route, "in_flight")
  return "answer", problem.new(409, "A request with this Idempotency-Key is still being processed; retry later.",
    nil, { ["Retry-After"] = "1" })
end

-- store_in_tx(req, status, body, headers) inside the caller's db.tx: the answer (encoded here,
-- as wrap() would) recorded for req's key in that transaction. → status, body (the stored
-- bytes), headers | nil, err, code (the statement failed: the caller's transaction must roll
-- back). Without a key (req.idempotency unset) nothing is written and the answer comes back
-- encoded. A 5xx is never stored (misuse raises, as does a call outside db.tx).
function _M.store_in_tx(req, status, body, headers)
  if type(status) ~= "number" or status >= 500 then
    error("idempotency.store_in_tx: a 5xx is never stored (got " .. tostring(status) .. ")", 2)
  end
  if not db.in_tx() then
    error("idempotency.store_in_tx must run inside db.tx (the answer commits with the work)", 2)
  end
  status, body, headers = settle(status, body, headers)
  local idem = rawget(req, "idempotency")
  if not idem or not idem.scope then return status, body, headers end
  local _, err, code = db.exec(SQL_STORE, idem.scope.caller, idem.scope.route, idem.key, status, json.encode(headers),
    body or db.null)
  if err then return nil, err, code end
  idem.scope.stored = { status = status, body = body }
  return status, body, headers
end

-- The answer store_in_tx recorded, if it is the one being sent (its transaction committed:
-- the handler answers with it only then).
local function stored_in_tx(idem, status, body)
  local s = idem.scope.stored
  return s ~= nil and s.status == status and s.body == body
end

-- wrap(handler, route) → a handler honouring Idempotency-Key (route: "METHOD /pattern").
function _M.wrap(handler, route)
  assert(type(handler) == "function", "lib.idempotency.wrap: handler must be a function")
  route = tostring(route)
  return function(req)
    local key = req:header("Idempotency-Key")
    if key == nil then return handler(req) end
    if not valid_key(key) then
      return problem.bad_request("Idempotency-Key must be 1 to " .. _M.MAX_KEY .. " printable ASCII characters.")
    end
    local caller = req.claims and req.claims.sub or ""
    local what, a, b, c = claim(tostring(caller), route, key, request_hash(req))
    if what == "answer" then return a, b, c end
    if a then outcomes:inc(1, route, "recovered") end
    local idem = { key = key, recovered = a, scope = { caller = tostring(caller), route = route } }
    rawset(req, "idempotency", idem)

    local ok, status, body, headers = pcall(handler, req)
    if not ok then
      db.exec(SQL_RELEASE, caller, route, key)   -- a failed handler did not answer: free the key
      error(status, 0)
    end
    status, body, headers = settle(status, body, headers)
    local _, err
    if stored_in_tx(idem, status, body) then
      outcomes:inc(1, route, "stored")
    elseif status >= 500 then
      outcomes:inc(1, route, "released")
      _, err = db.exec(SQL_RELEASE, caller, route, key)
    else
      outcomes:inc(1, route, "stored")
      _, err = db.exec(SQL_STORE, caller, route, key, status, json.encode(headers), body or db.null)
    end
    if err then
      -- The answer still goes out; the key stays locked until LOCK_S passes, then a retry
      -- takes it over and the handler resumes from its own recovery point.
      log.warn("idempotency: the answer could not be stored", { route = route, error = tostring(err) })
    end
    return status, body, headers
  end
end

-- Delete expired keys (a jobs.lua entry: purge_entry()). → count | nil, err, code
function _M.purge()
  return db.exec("DELETE FROM idempotency_keys WHERE expires_at <= now()")
end

function _M.purge_entry(every)
  return {
    name = "idempotency-purge", every = every or 3600,
    run = function()
      local n, err, code = _M.purge()
      if err then log.warn("idempotency purge failed", { error = err, code = code }) end
      return n
    end,
  }
end

return _M
