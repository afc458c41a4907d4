-- scripts/services/payment/handlers/webhooks.lua: POST /webhooks/stripe.
--
-- The raw body is verified in C (stripe.verify_webhook: HMAC-SHA256 over "t.payload", any v1,
-- 300 s tolerance, constant-time) before it is parsed; a failure is 400. Then one transaction:
-- the event id (evt_…) into processed_events — a duplicate, even a concurrent one, finds it
-- there and changes nothing — and the change it announces, forward only, with its outbox
-- event. Types it does not act on are acknowledged without a database write. A database failure answers 503 so Stripe retries.
local host = require "host"
local json = require "json"
local log = require "log"
local events = require "lib.events"
local problem = require "lib.problem"
local stripe = require "stripe"
local store = require "services.payment.store"
local db = require "db"

local _M = {}

local INTENT_STATUS = {
  ["payment_intent.succeeded"] = "succeeded",
  ["payment_intent.payment_failed"] = "failed",
  ["payment_intent.canceled"] = "canceled",
  ["payment_intent.processing"] = "processing",
  ["payment_intent.requires_action"] = "requires_action",
}

local function tolerance()
  return tonumber(host.env("STRIPE_WEBHOOK_TOLERANCE_S") or "") or 300
end

-- The payment an intent belongs to, locked: by Stripe id, else by the metadata we sent (the
-- webhook can come before our create recorded the id).
local function lock_payment(pi_id, metadata)
  local p = store.must(store.lock_by_provider(pi_id))
  if p then return p end
  local pid = type(metadata) == "table" and metadata.payment_id
  if events.valid_uuid(pid) then
    p = store.must(store.lock(pid))
    if p and (p.provider_id == db.null or p.provider_id == nil) then
      store.must(db.exec("UPDATE payments SET provider_id = $2 WHERE id = $1", p.id, pi_id))
      p.provider_id = pi_id
    end
    if p and p.provider_id == pi_id then return p end
  end
  return nil
end

-- Inside db.tx: claim the event id, apply it. → "duplicate" | "applied" | "ignored" | "unknown".
local function apply(evt)
  local fresh = store.must(db.query_one(
    "INSERT INTO processed_events (event_id, type) VALUES ($1, $2) ON CONFLICT (event_id) DO NOTHING RETURNING event_id",
    evt.id, evt.type))
  if not fresh then return "duplicate" end
  local obj = evt.data.object
  local status = INTENT_STATUS[evt.type]
  if status then
    local p = lock_payment(obj.id, obj.metadata)
    if not p then return "unknown" end
    local reason = (status == "failed" or status == "canceled") and store.reason_of(obj) or nil
    return store.advance(p, status, "webhook", evt.id, reason) and "applied" or "ignored"
  end
  if evt.type == "charge.refunded" and type(obj.payment_intent) == "string" then
    local p = lock_payment(obj.payment_intent, obj.metadata)
    if not p then return "unknown" end
    local list = type(obj.refunds) == "table" and type(obj.refunds.data) == "table" and obj.refunds.data or {}
    local any = false
    for _, re in ipairs(list) do
      if type(re) == "table" and type(re.id) == "string" and re.status ~= "failed" and re.status ~= "canceled" then
        local md = type(re.metadata) == "table" and re.metadata or {}
        local ours = events.valid_uuid(md.refund_id) and md.refund_id or nil
        local _, new = store.record_refund(p, ours, re.id, tonumber(re.amount) or 0)
        any = any or new
      end
    end
    if #list == 0 and (tonumber(obj.amount_refunded) or 0) > p.refunded_cents then
      log.warn("charge.refunded without its refunds list; reconciliation will catch up", { payment_id = p.id, event = evt.id })
    end
    return any and "applied" or "ignored"
  end
  return "ignored"
end

-- POST /webhooks/stripe
function _M.receive(req)
  local secret = host.env("STRIPE_WEBHOOK_SECRET")
  if not secret or secret == "" then return problem.new(503, "Webhooks are not configured.") end
  local raw = req.body
  local ok, why = stripe.verify_webhook(raw, req:header("Stripe-Signature"), secret, tolerance())
  if not ok then return problem.bad_request("Stripe-Signature verification failed: " .. why .. ".") end
  local evt = json.decode(raw)
  if type(evt) ~= "table" or type(evt.id) ~= "string" or #evt.id == 0 or #evt.id > 255 or type(evt.type) ~= "string"
    or type(evt.data) ~= "table" or type(evt.data.object) ~= "table" then
    return problem.bad_request("The body is not a Stripe event.")
  end
  if not INTENT_STATUS[evt.type] and evt.type ~= "charge.refunded" then
    -- Nothing to apply (payment_intent.created comes with every checkout): acknowledged
    -- without a transaction; its id needs no record, a copy would change nothing either.
    return 200, { received = true, id = evt.id, outcome = "ignored" }
  end
  local outcome, err, code = store.tx(apply, evt)
  if not outcome then
    log.warn("webhook not applied; Stripe will retry", { event = evt.id, code = code, error = err })
    return problem.new(503, "The event could not be recorded; retry.", nil, { ["Retry-After"] = "5" })
  end
  return 200, { received = true, id = evt.id, outcome = outcome }
end

return _M
