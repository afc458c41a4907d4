-- scripts/services/payment/handlers/refunds.lua: full and partial refunds
-- luacheck: max line length 170
-- (POST /payments/{id}/refunds, admin; POST /internal/payments/{id}/refunds, the order service).
--
-- Never more than captured: the refund is claimed as a `pending` row while the payment row is
-- locked, counting every pending and succeeded refund, before Stripe is asked; Stripe's answer
-- completes it (payment.refunded in the same transaction) or fails it (the amount is free again).
--
-- Idempotency-Key (Stripe semantics) is the host's (`idempotency = true` on both routes,
-- lib.idempotency): the same key and body replay the first answer byte for byte, another body is
-- 422, a duplicate while the first runs is 409. Here the key is the recovery point: it is stored
-- with the refund under UNIQUE (payment_id, idempotency_key) and its refund passed on to Stripe
-- (as refund-<our id>), so a request that died mid-way — taken over by a retry once the host's
-- lock passed — resumes that refund instead of making a second one.
local crypto = require "crypto"
local db = require "db"
local events = require "lib.events"
local problem = require "lib.problem"
local validate = require "lib.validate"
local provider = require "services.payment.provider"
local schema = require "services.payment.schema"
local store = require "services.payment.store"

local _M = {}

local CLAIM_S = 30   -- seconds a request owns its pending refund before another may resume it

local function refund_body(p, r)
  return { id = r.id, payment_id = p.id, amount_cents = r.amount_cents, status = r.status,
    provider_id = r.provider_id, created_at = r.created_at }
end

-- Inside db.tx: claim a refund of `amount` (nil: the rest) on payment id for key.
-- → { refund = row, replay = bool } or { problem = {status, body, headers} }.
local function claim(id, key, amount, hash)
  local p = store.lock(id)
  if not p then return { problem = { problem.not_found("payment", id) } } end
  if key then
    local r = store.must(db.query_one([[SELECT id, amount_cents, status, provider_id, request_hash, error_status,
      error_detail, created_at, locked_until > clock_timestamp() AS busy FROM refunds
      WHERE payment_id = $1 AND idempotency_key = $2]], id, key))
    if r then
      if r.request_hash ~= hash then   -- another caller's request under the same key (the host scopes keys per caller)
        return { problem = { problem.new(422, "This Idempotency-Key was used with another request body.") } }
      end
      if r.status == "succeeded" then return { payment = p, refund = r, replay = true } end
      if r.status == "failed" then
        return { problem = { problem.new(r.error_status, r.error_detail) } }
      end
      if r.busy then
        return { problem = { problem.new(409, "A request with this Idempotency-Key is in progress; retry later.") } }
      end
      store.must(db.exec("UPDATE refunds SET locked_until = clock_timestamp() + make_interval(secs => $2) WHERE id = $1", r.id, CLAIM_S))
      return { payment = p, refund = r }
    end
  end
  if p.status ~= "succeeded" then
    return { problem = { problem.new(409, "Only a succeeded payment can be refunded.", { status = p.status }) } }
  end
  local taken = store.must(db.query_one([[SELECT COALESCE(sum(amount_cents), 0)::bigint AS n FROM refunds
    WHERE payment_id = $1 AND status IN ('pending', 'succeeded')]], id)).n
  local left = p.amount_cents - math.max(taken, p.refunded_cents)
  amount = amount or left
  if left <= 0 or amount > left then
    return { problem = { problem.new(409, "The refund would exceed what is left of the captured amount.",
      { amount_cents = amount, refundable_cents = math.max(left, 0) }) } }
  end
  local r = store.must(db.query_one([[INSERT INTO refunds (id, payment_id, amount_cents, status, idempotency_key,
      request_hash, locked_until) VALUES ($1, $2, $3, 'pending', $4, $5, clock_timestamp() + make_interval(secs => $6))
    RETURNING id, amount_cents, status, provider_id, created_at]], crypto.uuid7(), id, amount, key, hash, CLAIM_S))
  return { payment = p, refund = r }
end

-- Stripe refused the refund: remember the answer (a replay gives it again), free the amount.
local function fail(refund_id, status, detail)
  store.tx(function()
    store.must(db.exec([[UPDATE refunds SET status = 'failed', error_status = $2, error_detail = $3, locked_until = NULL
      WHERE id = $1 AND status = 'pending']], refund_id, status, detail))
    return true
  end)
  return problem.new(status, detail)
end

-- POST /payments/{id}/refunds {amount_cents?} → 201 {id, payment_id, amount_cents, status}.
function _M.create(req)
  local id = req.params.id
  if not events.valid_uuid(id) then return problem.not_found("payment", id) end
  local doc, status, body, headers = validate.body(req, schema.refund, { optional = true })
  if not doc then return status, body, headers end
  local key = req:header("Idempotency-Key")
  if key ~= nil and (#key == 0 or #key > 255) then
    return problem.bad_request("Idempotency-Key must be 1 to 255 characters.", { { field = "Idempotency-Key", message = "must be 1 to 255 characters" } })
  end
  local hash = doc.amount_cents and tostring(doc.amount_cents) or "full"
  local c, err, code = store.tx(claim, id, key, doc.amount_cents, hash)
  if not c then return problem.from(code, err) end
  if c.problem then return unpack(c.problem) end
  local p, r = c.payment, c.refund
  if c.replay then return 201, refund_body(p, r) end
  local done, refused
  done, err, code, refused = _M.send(p, r)
  if refused then return fail(r.id, 409, "Stripe refused the refund: " .. tostring(err)) end
  if not done and code == "unavailable" then
    db.exec("UPDATE refunds SET locked_until = NULL WHERE id = $1 AND status = 'pending'", r.id)   -- a retry may resume at once
    return problem.new(503, "The payment provider is unavailable; retry with the same Idempotency-Key.", nil, { ["Retry-After"] = "5" })
  end
  if not done then return problem.from(code, err) end
  return 201, refund_body(p, done)
end

-- Ask Stripe for the pending refund r of payment p — its id is the Idempotency-Key, so asking
-- again (a resumed request, reconciliation) never refunds twice — and record what it made.
-- → the refund row, or nil, err, code, refused (true when Stripe said no: not worth retrying).
function _M.send(p, r)
  local re, err, code, e = provider.refund(p, r.id, r.amount_cents)
  if not re then
    local refused = code == "invalid" or code == "not_found" or (code == "conflict" and e and e.type == "idempotency_error")
    return nil, err, refused and "invalid" or "unavailable", refused
  end
  local done
  done, err, code = store.tx(function()
    local locked = store.must(store.lock(p.id))
    return (store.record_refund(locked, r.id, re.id, re.amount))
  end)
  if not done then return nil, err, code end
  done.provider_id = re.id
  return done
end

-- Reconciliation: finish a pending refund nobody is working on. → "repaired" | "failed".
function _M.resume(r)
  local p = store.get(r.payment_id)
  if not p then return "failed" end
  local done, err, _, refused = _M.send(p, r)
  if refused then
    fail(r.id, 409, "Stripe refused the refund: " .. tostring(err))
    return "repaired"
  end
  return done and "repaired" or "failed"
end

return _M
