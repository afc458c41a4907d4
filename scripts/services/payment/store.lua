-- scripts/services/payment/store.lua: the payment rows and the one way their status moves —
-- luacheck: max line length 170
-- forward only (a late `payment_failed` never undoes a `succeeded`), with a history row and
-- the outbox event (payment.completed / payment.failed / payment.refunded) in the caller's
-- transaction. Every change locks the payment row first, so webhooks, API calls and
-- reconciliation touching one payment run one after the other.
local db = require "db"
local json = require "json"
local crypto = require "crypto"
local events = require "lib.events"
local outbox = require "lib.outbox"

local _M = {}

-- How far along a status is; a payment only moves to a higher rank, and rank 4 is final.
-- `failed` is Stripe's requires_payment_method after a declined attempt: the buyer may still
-- try again (requires_action, processing, succeeded), but never go back to waiting.
local RANK = {
  creating = 0, requires_payment_method = 1, requires_confirmation = 1, failed = 2,
  requires_action = 3, processing = 3, requires_capture = 3, succeeded = 4, canceled = 4,
}
_M.RANK = RANK

function _M.is_final(status) return RANK[status] == 4 end

local COLUMNS = [[id, order_id, user_id, customer_email, amount_cents, currency, provider_id, client_secret,
  status, refunded_cents, failure_reason, created_at, updated_at, traceparent]]
_M.COLUMNS = COLUMNS

function _M.get(id) return db.query_one("SELECT " .. COLUMNS .. " FROM payments WHERE id = $1", id) end

-- The payment row locked for this transaction (FOR UPDATE), found by id or Stripe id.
function _M.lock(id) return db.query_one("SELECT " .. COLUMNS .. " FROM payments WHERE id = $1 FOR UPDATE", id) end
function _M.lock_by_provider(pi)
  return db.query_one("SELECT " .. COLUMNS .. " FROM payments WHERE provider_id = $1 FOR UPDATE", pi)
end

-- The local status for a PaymentIntent object: Stripe's, except that a PI sent back to
-- requires_payment_method by a declined attempt is `failed`.
function _M.status_of(pi)
  local e = pi.last_payment_error
  if pi.status == "requires_payment_method" and type(e) == "table" then return "failed" end
  return pi.status
end

-- Why a PaymentIntent failed, in a few words.
function _M.reason_of(pi)
  local e = type(pi.last_payment_error) == "table" and pi.last_payment_error or {}
  if pi.status == "canceled" then return "canceled" .. (type(pi.cancellation_reason) == "string" and (": " .. pi.cancellation_reason) or "") end
  return (type(e.decline_code) == "string" and e.decline_code) or (type(e.code) == "string" and e.code)
    or (type(e.message) == "string" and e.message) or "payment_failed"
end

-- The event's trace: a new span of the trace that created the payment (webhooks and
-- reconciliation carry no trace of their own that means anything to the buyer's flow).
local function event_opts(p)
  local tp = p.traceparent
  if type(tp) == "string" and events.valid_traceparent(tp) then return { traceparent = events.traceparent(tp:sub(4, 35)) } end
  return nil
end

local function event_data(p, extra)
  local d = {
    payment_id = p.id, order_id = p.order_id, user_id = p.user_id, email = p.customer_email,
    amount_cents = p.amount_cents, currency = p.currency, provider_id = p.provider_id,
  }
  for k, v in pairs(extra or {}) do d[k] = v end
  return d
end

local function must(v, err, code)
  if err then error({ err = err, code = code }, 0) end
  return v
end
_M.must = must

-- Move the locked payment p to status (inside db.tx). source: api | webhook | reconcile.
-- Returns true when it moved (history and event written), false when the move would go back
-- or sideways. Raises { err, code } on a database failure (db.tx rolls back).
function _M.advance(p, status, source, event_id, reason)
  local old = p.status
  if RANK[status] == nil then return false end
  if RANK[old] == 4 or RANK[status] <= RANK[old] then return false end
  must(db.exec([[UPDATE payments SET status = $2, failure_reason = COALESCE($3, failure_reason),
    updated_at = clock_timestamp() WHERE id = $1]], p.id, status, reason))
  must(db.exec("INSERT INTO payment_status_history (payment_id, status, source, event_id) VALUES ($1, $2, $3, $4)",
    p.id, status, source, event_id))
  p.status = status
  if status == "succeeded" then
    must(outbox.add("payment.completed", event_data(p), event_opts(p)))
  elseif status == "failed" then
    must(outbox.add("payment.failed", event_data(p, { reason = reason or "payment_failed" }), event_opts(p)))
  elseif status == "canceled" and source ~= "api" and old ~= "failed" then
    -- Canceled at Stripe (not by the order service through us): the order must hear of it.
    must(outbox.add("payment.failed", event_data(p, { reason = reason or "canceled" }), event_opts(p)))
  end
  return true
end

-- Record a refund Stripe made (inside db.tx, p locked): a pending refund of ours completes, a
-- refund made elsewhere (the dashboard) is added; payment.refunded goes out once per refund.
-- Returns the refund row, and whether it was new.
function _M.record_refund(p, refund_id, provider_id, amount)
  local known = db.query_one("SELECT id, amount_cents, status FROM refunds WHERE provider_id = $1", provider_id)
  if known then return known, false end
  local row
  if refund_id then
    row = must(db.query_one([[UPDATE refunds SET status = 'succeeded', provider_id = $3, locked_until = NULL
      WHERE id = $1 AND payment_id = $2 AND status = 'pending' RETURNING id, amount_cents, status, created_at]],
      refund_id, p.id, provider_id))
    if not row then
      -- ours, but not pending any more (already completed by the other path, or failed)
      row = db.query_one("SELECT id, amount_cents, status, created_at FROM refunds WHERE id = $1", refund_id)
      if row and row.status == "succeeded" then return row, false end
    end
  end
  if not row then
    local left = p.amount_cents - p.refunded_cents
    if amount > left then amount = left end
    if amount <= 0 then return nil, false end
    row = must(db.query_one([[INSERT INTO refunds (id, payment_id, amount_cents, status, provider_id)
      VALUES ($1, $2, $3, 'succeeded', $4) RETURNING id, amount_cents, status, created_at]],
      crypto.uuid7(), p.id, amount, provider_id))
  end
  local total = must(db.query_one([[UPDATE payments SET refunded_cents = refunded_cents + $2, updated_at = clock_timestamp()
    WHERE id = $1 RETURNING refunded_cents]], p.id, row.amount_cents)).refunded_cents
  p.refunded_cents = total
  must(outbox.add("payment.refunded", {
    payment_id = p.id, order_id = p.order_id, user_id = p.user_id, email = p.customer_email, refund_id = row.id,
    amount_cents = row.amount_cents, refunded_total_cents = total, currency = p.currency, provider_id = provider_id,
  }, event_opts(p)))
  return row, true
end

-- A payment as the API shows it.
function _M.public(p, history, refunds)
  local out = {
    id = p.id, order_id = p.order_id, user_id = p.user_id, provider_id = p.provider_id, status = p.status,
    amount_cents = p.amount_cents, currency = p.currency, refunded_cents = p.refunded_cents,
    client_secret = p.client_secret, failure_reason = p.failure_reason, created_at = p.created_at, updated_at = p.updated_at,
  }
  if history then out.status_history = json.array(history) end
  if refunds then out.refunds = json.array(refunds) end
  return out
end

-- Run fn inside db.tx; fn may raise { err, code } (from must) → nil, err, code.
function _M.tx(fn, ...)
  local ok, a, b, c = pcall(db.tx, fn, ...)
  if ok then return a, b, c end
  if type(a) == "table" and a.err then return nil, a.err, a.code end
  error(a, 0)
end

return _M
