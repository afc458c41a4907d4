-- spec/support/payment_helpers.lua: a real payment service for integration specs — a fresh
-- luacheck: max line length 170
-- database of its own, Redis and RabbitMQ from the private stack, tokens signed with the
-- product specs' key pair (support.product_helpers) — in front of the local Stripe stand-in
-- (scripts/dev/stripe_standin.js, a Node process started and stopped here by PID), which sends
-- its signed webhooks to that service.
--
--   local PAY = require "support.payment_helpers"
--   local env = PAY.start()                       -- { svc, standin }; PAY.stop(env) in teardown
--   local res = PAY.post(env.svc, "/internal/payments", doc, { token = PAY.service_token() })
local cjson = require "cjson.safe"
local crypto = require "crypto"
local http = require "http"
local P = require "support.product_helpers"
local raw = require "support.raw_http"
local server = require "support.server"

local M = {}

M.API_KEY = "sk_test_spec_" .. string.rep("x", 8)
M.SECRET = "whsec_spec_" .. string.rep("s", 16)
M.get, M.post, M.request = P.get, P.post, P.request
M.token, M.psql, M.sh, M.q = P.token, P.psql, P.sh, P.q

function M.sleep(s) os.execute("sleep " .. s) end

-- A token as the order service holds it (client_credentials, scope payments).
function M.service_token() return (P.token("service", nil, { scope = "payments" })) end

-- Start the stand-in on port (free if nil), its webhooks to webhook_url. → { pid, port, url, log }.
function M.start_standin(webhook_url, opts)
  opts = opts or {}
  local port = opts.port or server.free_port()
  os.execute("mkdir -p .run/test/payment")
  local log = ".run/test/payment/standin-" .. port .. ".log"
  local cmd = ("STRIPE_STANDIN_PORT=%d STRIPE_WEBHOOK_URL=%s STRIPE_WEBHOOK_SECRET=%s STRIPE_STANDIN_DUPLICATE_RATE=%s "
    .. "STRIPE_STANDIN_MAX_DELAY_MS=%s node scripts/dev/stripe_standin.js > %s 2>&1 & echo $!")
    :format(port, P.q(webhook_url or ""), P.q(M.SECRET), tostring(opts.duplicate_rate or 0.2), tostring(opts.max_delay_ms or 200), log)
  local p = io.popen(cmd)
  local pid = tonumber(p:read("*l"))
  p:close()
  local s = { pid = pid, port = port, url = "http://127.0.0.1:" .. port, log = log }
  for _ = 1, 100 do
    local r = http.request { method = "GET", url = s.url .. "/_standin/health", timeout_ms = 500 }
    if r and r.status == 200 then return s end
    os.execute("sleep 0.05")
  end
  error("the Stripe stand-in did not start: " .. (io.open(log) and io.open(log):read("*a") or ""))
end

function M.stop_standin(s)
  if s and s.pid then
    os.execute("kill " .. s.pid .. " 2>/dev/null")
    for _ = 1, 50 do
      if os.execute("kill -0 " .. s.pid .. " 2>/dev/null") ~= 0 then break end
      os.execute("sleep 0.05")
    end
    s.pid = nil
  end
end

-- POST /_standin/config (webhooks, duplicate_rate, max_delay_ms, fail_next).
function M.standin_config(s, doc)
  local r = assert(http.request { method = "POST", url = s.url .. "/_standin/config", body = cjson.encode(doc),
    headers = { ["Content-Type"] = "application/json" } })
  assert(r.status == 200, r.body)
end

-- Every event the stand-in made, oldest first.
function M.standin_events(s)
  local r = assert(http.request { method = "GET", url = s.url .. "/_standin/events" })
  return cjson.decode(r.body).data
end

-- Wait until every webhook delivery the stand-in planned for PaymentIntent pi (events of the
-- intent, its charges and refunds), duplicates included, has been answered 2xx.
function M.settle(env, pi)
  return assert(M.eventually(function()
    local n = 0
    for _, e in ipairs(M.standin_events(env.standin)) do
      local o = e.data.object
      if o.id == pi or o.payment_intent == pi then
        local d = e.standin_deliveries
        if d.done < d.scheduled then return false end
        n = n + 1
      end
    end
    return n > 0
  end), "the stand-in's webhooks for " .. pi .. " were not all answered")
end

-- Call the stand-in's API as Stripe's client would (form body).
function M.stripe(s, method, path, form)
  local body = form and require("stripe").form(form) or nil
  if method == "GET" and body then path, body = path .. "?" .. body, nil end
  local r = assert(http.request { method = method, url = s.url .. path, body = body,
    headers = { Authorization = "Bearer " .. M.API_KEY, ["Content-Type"] = "application/x-www-form-urlencoded" } })
  return r.status, cjson.decode(r.body)
end

-- Start the payment service and a stand-in wired to each other. opts.env overrides,
-- opts.standin = stand-in options (its .port too), opts.port = the service's port (free if nil).
function M.start(opts)
  opts = opts or {}
  local _, pub = P.keys()
  local port = opts.port or server.free_port()
  local standin = M.start_standin("http://127.0.0.1:" .. port .. "/webhooks/stripe", opts.standin)
  local name = "mercato_payment_spec_" .. crypto.hex(crypto.random(4))
  local admin = P.db_url("postgres")
  P.psql(admin, "CREATE DATABASE " .. name)
  local url = P.db_url(name)
  local e = {
    DATABASE_URL = url, REDIS_URL = os.getenv("REDIS_URL"), AMQP_URL = os.getenv("AMQP_URL") or false,
    JWT_PUBLIC_KEY_FILE = pub, STRIPE_API_KEY = M.API_KEY, STRIPE_API_BASE = standin.url,
    STRIPE_WEBHOOK_SECRET = M.SECRET, STRIPE_MAX_RETRIES = 1, RECONCILE_EVERY_S = 3600,
  }
  for k, v in pairs(opts.env or {}) do e[k] = v end
  local ok, srv = pcall(server.start, { service = "payment", scripts = "scripts", env = e, timeout = 20, port = port })
  if not ok then
    M.stop_standin(standin)
    P.psql(admin, "DROP DATABASE IF EXISTS " .. name .. " WITH (FORCE)")
    error(srv, 2)
  end
  srv.url = "http://127.0.0.1:" .. srv.port
  srv.db_name, srv.db_url = name, url
  for _ = 1, 100 do
    local r = http.request { method = "GET", url = srv.url .. "/ready", timeout_ms = 2000 }
    if r and r.status == 200 then break end
    os.execute("sleep 0.1")
  end
  return { svc = srv, standin = standin, db_url = url }
end

function M.stop(env)
  if not env then return end
  M.stop_standin(env.standin)
  local st = env.svc:stop()
  pcall(P.psql, P.db_url("postgres"), "DROP DATABASE IF EXISTS " .. env.svc.db_name .. " WITH (FORCE)")
  return st
end

-- One SQL value from the service's database.
function M.sql(env, sql) return P.psql(env.db_url, sql) end

-- A new payment for a fresh order (201 asserted). → the body, the order id, the buyer id.
function M.create(env, over)
  local doc = { order_id = crypto.uuid4(), amount_cents = 2599, currency = "eur", customer_email = "buyer@example.com",
    user_id = crypto.uuid7() }
  for k, v in pairs(over or {}) do doc[k] = v end
  local res = P.post(env.svc, "/internal/payments", doc, { token = M.service_token() })
  assert(res.status == 201, "create: " .. res.status .. " " .. tostring(res.body))
  return res.json, doc
end

-- Confirm a payment's intent at the stand-in with a test card (pm_card_visa | pm_card_chargeDeclined).
function M.confirm(env, provider_id, card)
  return M.stripe(env.standin, "POST", "/v1/payment_intents/" .. provider_id .. "/confirm", { payment_method = card or "pm_card_visa" })
end

-- Wait until cond() is truthy (polling every 50 ms, at most timeout s). → its value or nil.
function M.eventually(cond, timeout)
  local deadline = os.time() + (timeout or 10)
  repeat
    local v = cond()
    if v then return v end
    os.execute("sleep 0.05")
  until os.time() > deadline
  return nil
end

-- Stripe-Signature headers from the official library's generateTestHeaderString:
-- list = { { payload =, secret =, timestamp = }, ... } → { header, ... }.
function M.sign_headers(list)
  local f = os.tmpname()
  local h = assert(io.open(f, "w"))
  h:write(cjson.encode(list))
  h:close()
  local out, rc = P.sh("node spec/fixtures/payment/stripe_client.js sign < " .. f)
  os.remove(f)
  assert(rc == 0, "sign failed: " .. out)
  return cjson.decode(out)
end

M.concurrently = raw.concurrently

return M
