-- scripts/services/payment/handlers/payments.lua: PaymentIntents for orders — the order
-- luacheck: max line length 170
-- service's internal create (idempotent per order) and cancel, and the owner/admin reads
-- (GET /payments/{id}, GET /payments?order_id=).
local crypto = require "crypto"
local db = require "db"
local events = require "lib.events"
local pagination = require "lib.pagination"
local problem = require "lib.problem"
local validate = require "lib.validate"
local provider = require "services.payment.provider"
local schema = require "services.payment.schema"
local store = require "services.payment.store"

local _M = {}

local valid_uuid = events.valid_uuid

local function created_body(p)
  return {
    id = p.id, provider_id = p.provider_id, status = p.status, client_secret = p.client_secret,
    order_id = p.order_id, amount_cents = p.amount_cents, currency = p.currency,
  }
end

-- Statuses a fresh PaymentIntent may have that announce nothing (store.advance writes no
-- outbox event for them).
local QUIET = {
  requires_payment_method = true, requires_confirmation = true, requires_action = true, processing = true,
  requires_capture = true,
}

-- The checkout's case in one statement (its own transaction): the row as create left it (no
-- Stripe id, status creating) takes the intent's id, secret and a quiet status, with the
-- history row store.advance would write. No row back: something moved it meanwhile (a webhook
-- that came first), and the locking path below applies the intent to what is there.
local ADOPT_FRESH = [[WITH p AS (UPDATE payments SET provider_id = $2, client_secret = $3, status = $4,
    updated_at = clock_timestamp() WHERE id = $1 AND provider_id IS NULL AND status = 'creating' RETURNING ]] ..
  store.COLUMNS .. [[),
  h AS (INSERT INTO payment_status_history (payment_id, status, source) SELECT id, status, $5 FROM p)
  SELECT * FROM p]]

-- Stripe answered pi for payment p: keep its id and secret, move the status (forward only).
local function adopt_intent(p, pi, source)
  local st = store.status_of(pi)
  if QUIET[st] and p.status == "creating" and (p.provider_id == nil or p.provider_id == db.null) then
    local row, err, code = db.query_one(ADOPT_FRESH, p.id, pi.id, pi.client_secret, st, source)
    if err then return nil, err, code end
    if row then return row end
  end
  return store.tx(function()
    local row = store.must(store.lock(p.id))
    if row.provider_id == nil or row.provider_id == db.null then
      store.must(db.exec([[UPDATE payments SET provider_id = $2, client_secret = $3, updated_at = clock_timestamp()
        WHERE id = $1]], p.id, pi.id, pi.client_secret))
      row.provider_id, row.client_secret = pi.id, pi.client_secret
    end
    store.advance(row, st, source, nil, (st == "failed" or st == "canceled") and store.reason_of(pi) or nil)
    return row
  end)
end
_M.adopt_intent = adopt_intent

-- Make (or find) the PaymentIntent of payment row p; → the row, or nil, err, code.
function _M.ensure_intent(p, source)
  if p.provider_id ~= nil and p.provider_id ~= db.null then return p end
  local pi, err, code = provider.create_intent(p)
  if not pi then return nil, err, code end
  return adopt_intent(p, pi, source)
end

-- POST /internal/payments {order_id, amount_cents, currency, customer_email, user_id}
-- → 201 (new) or 200 (this order's payment already exists); 503 when Stripe is down (the row
-- stays, and a repeat — or reconciliation — finishes it with the same Idempotency-Key).
function _M.create(req)
  local doc, status, body, headers = validate.body(req, schema.create)
  if not doc then return status, body, headers end
  local user_id = doc.user_id ~= nil and doc.user_id ~= db.null and doc.user_id or nil
  local tp = req:header("traceparent")   -- the checkout's trace (lib.svc propagates it): its events continue it
  if not events.valid_traceparent(tp) then tp = db.null end
  local row, err, code = db.query_one("INSERT INTO payments (id, order_id, user_id, customer_email, amount_cents, currency, "
    .. "traceparent) VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (order_id) DO NOTHING RETURNING " .. store.COLUMNS,
    crypto.uuid7(), doc.order_id, user_id, doc.customer_email, doc.amount_cents, doc.currency, tp)
  if err then return problem.from(code, err) end
  local fresh = row ~= nil
  if not row then
    row, err, code = db.query_one("SELECT " .. store.COLUMNS .. " FROM payments WHERE order_id = $1", doc.order_id)
    if err then return problem.from(code, err) end
    if not row then return problem.from("conflict", "payment row vanished") end
    if row.amount_cents ~= doc.amount_cents or row.currency ~= doc.currency then
      return problem.new(409, "This order already has a payment of another amount or currency.",
        { payment_id = row.id, amount_cents = row.amount_cents, currency = row.currency })
    end
  end
  local p
  p, err, code = _M.ensure_intent(row, "api")
  if not p then
    if code == "invalid" then return problem.new(422, "Stripe refused the payment: " .. tostring(err)) end
    return problem.new(503, "The payment provider is unavailable; retry shortly.", nil, { ["Retry-After"] = "5" })
  end
  return fresh and 201 or 200, created_body(p)
end

-- POST /internal/payments/{id}/cancel → 200 {id, status}; 409 (with status) once it succeeded.
function _M.cancel(req)
  local id = req.params.id
  if not valid_uuid(id) then return problem.not_found("payment", id) end
  local empty, est, ebody, eheaders = validate.empty(req)
  if not empty then return est, ebody, eheaders end
  local p, err, code = store.get(id)
  if err then return problem.from(code, err) end
  if not p then return problem.not_found("payment", id) end
  if p.status == "succeeded" then
    return problem.new(409, "The payment succeeded; refund it instead.", { status = p.status })
  end
  if p.status == "canceled" then return 200, { id = p.id, status = p.status } end
  if p.provider_id ~= db.null and p.provider_id ~= nil then
    local pi, e
    pi, err, code, e = provider.cancel_intent(p.provider_id, p.id)
    if not pi and code == "invalid" and e and e.code == "payment_intent_unexpected_state" then
      pi, err, code = provider.retrieve_intent(p.provider_id)   -- it moved at Stripe: take its state
    end
    if not pi then return problem.from(code == "invalid" and "unavailable" or code, err) end
    p, err, code = adopt_intent(p, pi, "api")
    if not p then return problem.from(code, err) end
    if p.status == "succeeded" then
      return problem.new(409, "The payment succeeded; refund it instead.", { status = p.status })
    end
    return 200, { id = p.id, status = p.status }
  end
  -- No PaymentIntent was recorded (Stripe was down at create): nothing can be charged.
  p, err, code = store.tx(function()
    local row = store.must(store.lock(id))
    store.advance(row, "canceled", "api")
    return row
  end)
  if not p then return problem.from(code, err) end
  return 200, { id = p.id, status = p.status }
end

-- The payment if the caller may see it (its buyer, or an admin); 404 otherwise.
local function visible(req, p)
  local c = req.claims or {}
  return c.role == "admin" or (c.sub ~= nil and c.sub == p.user_id)
end

-- GET /payments/{id} (owner/admin): with status_history and refunds.
function _M.show(req)
  local id = req.params.id
  if not valid_uuid(id) then return problem.not_found("payment", id) end
  local p, err, code = store.get(id)
  if err then return problem.from(code, err) end
  if not p or not visible(req, p) then return problem.not_found("payment", id) end
  local hist, herr, hcode = db.query("SELECT status, source, at FROM payment_status_history WHERE payment_id = $1 ORDER BY id", id)
  if herr then return problem.from(hcode, herr) end
  local refunds, rerr, rcode = db.query([[SELECT id, amount_cents, status, provider_id, created_at FROM refunds
    WHERE payment_id = $1 AND status <> 'failed' ORDER BY created_at, id]], id)
  if rerr then return problem.from(rcode, rerr) end
  return 200, store.public(p, hist, refunds)
end

-- GET /payments?order_id=&limit=&cursor= : the caller's payments (admin: everyone's), newest
-- first; order_id narrows to that order's payment.
function _M.list(req)
  local q = req.query
  local page, status, body, headers = pagination.params(q)
  if not page then return status, body, headers end
  local order_id = q.order_id
  if order_id ~= nil and order_id ~= "" and not valid_uuid(order_id) then
    return problem.bad_request("order_id must be a UUID.", { { field = "order_id", message = "must be a UUID" } })
  end
  if order_id == "" then order_id = nil end
  local after = page.after and page.after.id
  if after ~= nil and not valid_uuid(after) then
    return problem.bad_request("cursor is not a cursor this endpoint gave out.", { { field = "cursor", message = "is invalid" } })
  end
  local c = req.claims or {}
  local owner = c.role ~= "admin" and (c.sub or "") or nil
  if owner and not valid_uuid(owner) then return 200, pagination.result({}, page.limit) end
  local rows, err, code = db.query("SELECT " .. store.COLUMNS .. [[ FROM payments
    WHERE ($1::uuid IS NULL OR user_id = $1) AND ($2::uuid IS NULL OR order_id = $2) AND ($3::uuid IS NULL OR id < $3)
    ORDER BY id DESC LIMIT $4]], owner, order_id, after, page.limit + 1)
  if err then return problem.from(code, err) end
  return 200, pagination.result(rows, page.limit, function(r) return { id = r.id } end, function(r) return store.public(r) end)
end

return _M
