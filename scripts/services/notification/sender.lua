-- scripts/services/notification/sender.lua: the sending step. A sender runner takes one due
-- queued row at a time with FOR UPDATE SKIP LOCKED and keeps its lock (its transaction open)
-- while it speaks SMTP, so no other sender — thread or process — can take the same row; the
-- outcome is committed with the row:
--   accepted by SMTP        → sent (attempts + 1, message_id, sent_at)
--   unavailable / timeout   → queued again, next_attempt_at = now + backoff with jitter,
--                             or failed once NOTIFY_MAX_ATTEMPTS attempts were made
--   rejected (5xx) / invalid → failed at once (an admin may retry it)
-- The first success after the server was unavailable makes every deferred delivery due at once.
-- A sender killed mid-send loses its transaction: the row is still queued and is sent again,
-- so an e-mail the SMTP server had accepted just before the kill arrives twice — at most one
-- duplicate per sender runner per kill (NOTIFY_SENDERS, default 1). Nothing is lost.
--
-- smtp.send blocks (curl easy): fine here, this runs only on runner threads.
local db = require "db"
local events = require "lib.events"
local host = require "host"
local metrics = require "metrics"
local smtp = require "smtp"

local _M = {}

local function env_number(name, default, min)
  local v = tonumber(host.env(name) or "")
  if not v or v < (min or 0) then return default end
  return v
end

function _M.config()
  return {
    from = host.env("SMTP_FROM") or "Mercato <no-reply@mercato.test>",
    max_attempts = math.floor(env_number("NOTIFY_MAX_ATTEMPTS", 8, 1)),
    base = env_number("NOTIFY_RETRY_BASE_S", 2, 0.01),
    cap = env_number("NOTIFY_RETRY_MAX_S", 600, 0.01),
    poll = env_number("NOTIFY_POLL_MS", 100, 1) / 1000,
    senders = math.floor(env_number("NOTIFY_SENDERS", 1, 1)),
  }
end

local LATENCY_BUCKETS = { 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30 }
local EVENT_BUCKETS = { 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 3600 }

local m
local function meters()
  if not m then
    m = {
      sent = metrics.counter("notifications_sent_total", "E-mails accepted by the SMTP server, by event type.", { "type" }),
      failed = metrics.counter("notifications_failed_total", "Deliveries given up (failed), by event type.", { "type" }),
      retried = metrics.counter("notifications_retried_total", "Send attempts that failed and were rescheduled, by event type.",
        { "type" }),
      send_latency = metrics.histogram("notification_send_duration_seconds", "One SMTP send, connect to accepted.", {},
        LATENCY_BUCKETS),
      event_latency = metrics.histogram("notification_event_latency_seconds",
        "From the event's occurred_at to its e-mail accepted by SMTP.", {}, EVENT_BUCKETS),
    }
  end
  return m
end
_M.meters = meters

-- Seconds to wait after `attempts` failed attempts: exponential (base · 2^(n−1), at most cap),
-- with "equal jitter" — half fixed, half random — so retries of many rows spread out.
function _M.backoff(attempts, base, cap)
  local d = math.min(cap, base * 2 ^ (attempts - 1))
  return d / 2 + math.random() * d / 2
end

local CLAIM = "SELECT id, event_id, event_type, recipient, subject, body_text, body_html, attempts, occurred_at, traceparent " ..
  "FROM notifications WHERE status = 'queued' AND next_attempt_at <= now() " ..
  "ORDER BY next_attempt_at LIMIT 1 FOR UPDATE SKIP LOCKED"
local SENT = "UPDATE notifications SET status = 'sent', attempts = attempts + 1, message_id = $2, sent_at = now(), " ..
  "last_error = NULL, updated_at = now() WHERE id = $1"
local RETRY = "UPDATE notifications SET attempts = $2, last_error = $3, updated_at = now(), " ..
  "next_attempt_at = now() + make_interval(secs => $4) WHERE id = $1"
local FAILED = "UPDATE notifications SET status = 'failed', attempts = $2, last_error = $3, updated_at = now() WHERE id = $1"
-- The server is back: deliveries deferred by the outage are due now, not at the end of their
-- backoff (after a long outage that could be many minutes away).
local RECOVERED = "UPDATE notifications SET next_attempt_at = now() " ..
  "WHERE status = 'queued' AND attempts > 0 AND next_attempt_at > now()"

local deferred = false   -- this sender saw the server unavailable since its last success

-- One due row, sent → "idle" | "sent" | "retried" | "failed" (and the send's error, code), or
-- nil, err, code when the database failed.
function _M.send_one(cfg)
  cfg = cfg or _M.config()
  local mm = meters()
  local serr, scode
  local res, err, code = db.tx(function()
    local row, qerr, qcode = db.query_one(CLAIM)
    if qerr then return nil, qerr, qcode end
    if not row then return "idle" end
    local t0 = host.now()
    local msgid
    msgid, serr, scode = smtp.send {
      from = cfg.from, to = row.recipient, subject = row.subject, text = row.body_text, html = row.body_html,
      headers = { ["X-Mercato-Event-Id"] = row.event_id, ["X-Mercato-Notification-Id"] = row.id,
        Traceparent = row.traceparent ~= db.null and row.traceparent or nil },
    }
    local now = host.now()
    mm.send_latency:observe(now - t0)
    if msgid then
      local n, uerr, ucode = db.exec(SENT, row.id, msgid)
      if not n then return nil, uerr, ucode end
      if deferred then
        local _, rerr, rcode = db.exec(RECOVERED)
        if rerr then return nil, rerr, rcode end
      end
      mm.sent:inc(1, row.event_type)
      local at = events.parse_time(row.occurred_at)
      if at then mm.event_latency:observe(math.max(0, now - at)) end
      return "sent"
    end
    local attempts = row.attempts + 1
    local why = tostring(serr):sub(1, 500)
    if scode == "rejected" or scode == "invalid" or attempts >= cfg.max_attempts then
      local n, uerr, ucode = db.exec(FAILED, row.id, attempts, why)
      if not n then return nil, uerr, ucode end
      mm.failed:inc(1, row.event_type)
      return "failed"
    end
    local n, uerr, ucode = db.exec(RETRY, row.id, attempts, why, _M.backoff(attempts, cfg.base, cfg.cap))
    if not n then return nil, uerr, ucode end
    mm.retried:inc(1, row.event_type)
    return "retried"
  end)
  if not res then return nil, err, code end
  if res == "sent" then deferred = false
  elseif res == "retried" and (scode == "unavailable" or scode == "timeout") then deferred = true end
  return res, serr, scode
end

return _M
