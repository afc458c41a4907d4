-- scripts/lib/consumer.lua: an event consumer as a consumers.lua entry — its own durable queue
-- (dead-letter queue, delivery limit, prefetch), the inbox in the transaction of the work, and
-- the ack only after that transaction committed (ARCHITECTURE.md "Reliability rules").
--
--   -- services/notification/consumers.lua
--   local consumer = require "lib.consumer"
--   return {
--     consumer.define{
--       name = "notifications", queue = "notification.events", bindings = { "order.*", "payment.*" },
--       prefetch = 20, delivery_limit = 5,
--       handle = function(event, msg) ... db.exec(...) ... end,
--     },
--   }
--
-- handle(event, msg) runs inside db.tx with the event's id already claimed in the inbox; it
-- commits when handle returns, rolls back when it raises or returns nil, err[, code]. Events
-- an outbox.add publishes from handle carry the handled event's correlation_id and trace.
--
-- What becomes of a delivery:
--   not an envelope (bad JSON, no id...)   → nack without requeue: straight to <queue>.dlq
--   already in the inbox                   → ack, handler skipped (a redelivery)
--   handled and committed                  → ack
--   handle raised or returned nil, err     → rollback, nack with requeue; past delivery_limit
--                                            the broker dead-letters it to <queue>.dlq
--   database (or handler) "unavailable"/"timeout" → rollback, the message is kept unacked and
--     retried every second for up to `hold` seconds (60) without burning its delivery limit —
--     a database outage is not the message's fault — then nacked with requeue.
--
-- Metrics: events_consumed_total{consumer,outcome=processed|duplicate|failed|invalid},
-- event_processing_latency_seconds{consumer} (envelope occurred_at → committed).
local db = require "db"
local host = require "host"
local log = require "log"
local metrics = require "metrics"
local queue = require "queue"
local events = require "lib.events"
local inbox = require "lib.inbox"

local _M = {}

local NEXT_WAIT_MS = 1000
local DECLARE_RETRY = 1        -- seconds asleep after a failed declaration
local HOLD_RETRY = 1           -- seconds between attempts of a held message
local HOLD_MAX = 60            -- seconds a message is held through an outage before requeueing
-- Milliseconds matter at the low end (issue 17: p99 under 20 ms at 200 events/s); minutes at the high end (an outage).
local LATENCY_BUCKETS = { 0.001, 0.002, 0.005, 0.01, 0.015, 0.02, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300 }

local m
local function meters()
  if not m then
    m = {
      consumed = metrics.counter("events_consumed_total", "Event deliveries handled, by consumer and outcome.",
        { "consumer", "outcome" }),
      latency = metrics.histogram("event_processing_latency_seconds",
        "From an event's occurred_at to its consumer's commit.", { "consumer" }, LATENCY_BUCKETS),
    }
  end
  return m
end

local function traceback(e) return debug.traceback(tostring(e), 2) end

local function check_spec(spec)
  if type(spec) ~= "table" then error("consumer.define: expecting a table", 3) end
  local function need(ok, what) if not ok then error("consumer.define: " .. what, 3) end end
  need(type(spec.name) == "string" and spec.name:match("^[%w_%.%-]+$"), "name must be a word (letters, digits, _ . -)")
  need(type(spec.queue) == "string" and #spec.queue > 0 and #spec.queue <= 200, "queue must be a queue name")
  need(type(spec.handle) == "function", "handle must be a function(event, msg)")
  need(type(spec.bindings) == "table" and #spec.bindings > 0, "bindings must list routing key patterns")
  for _, b in ipairs(spec.bindings) do need(type(b) == "string" and #b > 0, "bindings must be strings") end
  need(spec.prefetch == nil or (type(spec.prefetch) == "number" and spec.prefetch >= 1), "prefetch must be >= 1")
  need(spec.delivery_limit == nil or (type(spec.delivery_limit) == "number" and spec.delivery_limit >= 1),
    "delivery_limit must be >= 1")
end

-- consumer.define(spec) → { name = spec.name, loop = function, process = function(msg) }.
function _M.define(spec)
  check_spec(spec)
  local name, qname, handle = spec.name, spec.queue, spec.handle
  local hold_max = spec.hold or HOLD_MAX
  local declared = false
  local held           -- { msg, event, first, next_at }: a delivery kept through an outage
  local last_warn = 0

  local function warn_limited(msg, fields)
    local now = host.now()
    if now - last_warn < 10 then return end
    last_warn = now
    log.warn(msg, fields)
  end

  local function settle(msg, ack, requeue)
    local ok, err, code
    if ack then ok, err, code = queue.ack(msg.delivery_tag) else ok, err, code = queue.nack(msg.delivery_tag, requeue) end
    if not ok then
      -- Its connection is gone: the broker redelivers it, and the inbox recognises it.
      log.debug("consumer: could not settle a delivery", { consumer = name, error = err, code = code })
      declared = declared and code ~= "unavailable"
    end
  end

  -- One attempt in one transaction → "processed" | "duplicate", or nil, err, code.
  local function attempt(event, msg)
    events.context = event
    local res, err, code = db.tx(function()
      local fresh, cerr, ccode = inbox.claim(event.id, name)
      if fresh == nil then return nil, cerr, ccode end
      if not fresh then return "duplicate" end
      local ok, r1, r2, r3 = xpcall(handle, traceback, event, msg)
      if not ok then return nil, r1, "handler" end
      if r1 == nil and r2 ~= nil then return nil, tostring(r2), r3 or "handler" end
      return "processed"
    end)
    events.context = nil
    return res, err, code
  end

  local function process_event(event, msg, first_seen)
    local mm = meters()
    local outcome, err, code = attempt(event, msg)
    if outcome then
      mm.consumed:inc(1, name, outcome)
      if outcome == "processed" then
        local age = host.now() - events.parse_time(event.occurred_at)
        mm.latency:observe(age > 0 and age or 0, name)
      end
      held = nil
      settle(msg, true)
      return outcome
    end
    mm.consumed:inc(1, name, "failed")
    local now = host.now()
    if (code == "unavailable" or code == "timeout") and now - first_seen < hold_max then
      held = { msg = msg, event = event, first = first_seen, next_at = now + HOLD_RETRY }
      warn_limited("consumer: dependency unavailable; holding the event and retrying",
        { consumer = name, event_id = event.id, type = event.type, error = err, code = code })
      return "held"
    end
    held = nil
    log.error("consumer: handling failed; the event is requeued (dead-lettered past its delivery limit)",
      { consumer = name, event_id = event.id, type = event.type, redelivered = msg.redelivered,
        code = code, error = err })
    settle(msg, false, true)
    return "failed"
  end

  -- process(msg) → "processed" | "duplicate" | "failed" | "invalid" | "held".
  local function process(msg)
    local event, why = events.decode(msg.body)
    if not event then
      meters().consumed:inc(1, name, "invalid")
      log.warn("consumer: not an event envelope; dead-lettered", {
        consumer = name, message_id = msg.message_id, routing_key = msg.routing_key, error = why })
      settle(msg, false, false)
      return "invalid"
    end
    return process_event(event, msg, host.now())
  end

  local function loop()
    if held then
      local wait = held.next_at - host.now()
      if wait > 0 then host.sleep(wait < 1 and wait or 1) end
      process_event(held.event, held.msg, held.first)
      return
    end
    if not declared then
      local ok, err, code = queue.declare_consumer_queue(qname, {
        bindings = spec.bindings, prefetch = spec.prefetch or 20, delivery_limit = spec.delivery_limit or 5,
      })
      if not ok then
        warn_limited("consumer: cannot declare its queue; retrying", { consumer = name, queue = qname, error = err, code = code })
        if code == "conflict" then
          log.error("consumer: the queue exists with other arguments", { consumer = name, queue = qname, error = err })
        end
        host.sleep(DECLARE_RETRY)
        return
      end
      declared = true
    end
    local msg, err, code = queue.next(qname, NEXT_WAIT_MS)
    if not msg then
      if err then
        -- Declare again once the broker is back (it may have lost a non-durable binding).
        declared = false
        warn_limited("consumer: broker unavailable", { consumer = name, queue = qname, error = err, code = code })
      end
      return
    end
    process(msg)
  end

  return { name = name, loop = loop, process = process }
end

return _M
