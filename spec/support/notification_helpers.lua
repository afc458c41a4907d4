-- spec/support/notification_helpers.lua: a real notification service for integration specs —
-- its own database and its own event queue (both made here, removed in stop), RabbitMQ and the
-- SMTP sink (maildev) of the private stack, tokens from product_helpers' key pair — plus event
-- publishing and maildev's REST API (SMTP_API_URL).
--
--   local N = require "support.notification_helpers"
--   local svc = N.start()                  -- setup; N.stop(svc) in teardown
--   N.publish(N.event("order.shipped", { email = ..., order_id = ... }))
--   local mails = N.wait_mails(function(m) return m.to[1].address == email end, 1)
local cjson = require "cjson.safe"
local crypto = require "crypto"
local http = require "http"
local queue = require "queue"
local P = require "support.product_helpers"
local server = require "support.server"

local M = {}

local function need(name)
  local v = os.getenv(name)
  assert(v and v ~= "", name .. " is not set: run under `make test` or `set -a; . <(scripts/dev/stack.sh env)`")
  return v
end

M.token, M.party, M.psql, M.sh, M.q = P.token, P.party, P.psql, P.sh, P.q

function M.now() return require("host").now() end
function M.sleep(s) os.execute("sleep " .. s) end

-- An RFC 3339 UTC time with milliseconds (t: epoch seconds, default now).
function M.rfc3339(t)
  t = t or M.now()
  return os.date("!%Y-%m-%dT%H:%M:%S", math.floor(t)) .. (".%03dZ"):format(math.floor((t % 1) * 1000))
end

-- An envelope (CONTRACT §7) of type etype with data; opts.id reuses an id (a duplicate).
function M.event(etype, data, opts)
  opts = opts or {}
  return { id = opts.id or crypto.uuid4(), type = etype, version = 1, occurred_at = opts.occurred_at or M.rfc3339(),
    source = "spec", correlation_id = crypto.uuid4(), data = data }
end

-- Publish an envelope (or raw bytes) on mercato.events with the event's routing key.
function M.publish(ev, key)
  local body = type(ev) == "table" and cjson.encode(ev) or ev
  local props = { content_type = "application/json", delivery_mode = 2 }
  if type(ev) == "table" then props.message_id, props.type = ev.id, ev.type end
  return assert(queue.publish(key or ev.type, body, props))
end

function M.email(tag) return (tag or "n") .. "-" .. crypto.hex(crypto.random(6)) .. "@example.com" end

-- ---- maildev ------------------------------------------------------------------------------

local function api() return need("SMTP_API_URL") end

-- Every message maildev holds (parsed: to, subject, text, html, headers).
function M.mails()
  local r = http.request { method = "GET", url = api(), timeout_ms = 5000 }
  if not r or r.status ~= 200 then return {} end
  return cjson.decode(r.body) or {}
end

function M.mails_to(address)
  local out = {}
  for _, m in ipairs(M.mails()) do
    for _, t in ipairs(m.to or {}) do
      if t.address == address then out[#out + 1] = m break end
    end
  end
  return out
end

-- Poll until `want` mails match pred (or timeout seconds); → the matches.
function M.wait_mails(pred, want, timeout)
  local deadline = M.now() + (timeout or 15)
  local got
  repeat
    got = {}
    for _, m in ipairs(M.mails()) do if pred(m) then got[#got + 1] = m end end
    if #got >= want then return got end
    M.sleep(0.1)
  until M.now() > deadline
  return got
end

-- The raw source of a message.
function M.source(mail)
  local r = http.request { method = "GET", url = api() .. "/" .. mail.id .. "/source", timeout_ms = 5000 }
  return r and r.body or ""
end

-- ---- the service ---------------------------------------------------------------------------

-- Start SERVICE=notification on scripts/ with a fresh database and queue. opts.env overrides.
function M.start(opts)
  opts = opts or {}
  local _, pub = P.keys()
  local tag = crypto.hex(crypto.random(4))
  local name = "mercato_notification_spec_" .. tag
  local admin = P.db_url("postgres")
  M.psql(admin, "CREATE DATABASE " .. name)
  local e = {
    DATABASE_URL = P.db_url(name), AMQP_URL = need("AMQP_URL"), REDIS_URL = need("REDIS_URL"),
    JWT_PUBLIC_KEY_FILE = pub, SMTP_URL = need("SMTP_URL"), SMTP_FROM = "Mercato <no-reply@mercato.test>",
    NOTIFY_QUEUE = "notification.spec." .. tag, NOTIFY_POLL_MS = 20,
  }
  for k, v in pairs(opts.env or {}) do e[k] = v end
  local ok, srv = pcall(server.start, { service = "notification", scripts = opts.scripts or "scripts", env = e,
    timeout = 20, port = opts.port })
  if not ok then M.psql(admin, "DROP DATABASE IF EXISTS " .. name .. " WITH (FORCE)") error(srv, 2) end
  srv.url = "http://127.0.0.1:" .. srv.port
  srv.db_name, srv.db_url, srv.queue, srv.env = name, e.DATABASE_URL, e.NOTIFY_QUEUE, e
  M.wait_consuming(srv)
  return srv
end

-- Wait until the service's queue exists and has its consumer (so a published event is not
-- dropped for want of a bound queue).
function M.wait_consuming(srv, timeout)
  local deadline = M.now() + (timeout or 20)
  repeat
    local out = M.sh("scripts/dev/stack.sh rabbitmqctl list_queues -q --no-table-headers name consumers")
    for line in out:gmatch("[^\n]+") do
      local qn, c = line:match("^(%S+)%s+(%d+)")
      if qn == srv.queue and tonumber(c) > 0 then return true end
    end
    M.sleep(0.2)
  until M.now() > deadline
  error("the notification consumer never attached to " .. srv.queue .. ":\n" .. srv:log())
end

-- Restart a stopped (or killed) service on the same port, database and queue.
function M.restart(srv)
  local again = server.start { service = "notification", scripts = "scripts", env = srv.env, timeout = 20, port = srv.port }
  srv.pid, srv.log_path, srv.status_path = again.pid, again.log_path, again.status_path
  M.wait_consuming(srv)
  return srv
end

function M.stop(srv, keep_queue)
  if not srv then return end
  local st = srv:stop()
  pcall(M.psql, P.db_url("postgres"), "DROP DATABASE IF EXISTS " .. srv.db_name .. " WITH (FORCE)")
  if not keep_queue then
    M.sh("scripts/dev/stack.sh rabbitmqctl delete_queue " .. srv.queue .. " >/dev/null; " ..
      "scripts/dev/stack.sh rabbitmqctl delete_queue " .. srv.queue .. ".dlq >/dev/null")
  end
  return st
end

-- SQL against the service's database; one value per row, "|"-separated columns.
function M.sql(srv, q) return M.psql(srv.db_url, q) end

M.request, M.get, M.post = P.request, P.get, P.post

return M
