-- scripts/services/order/saga.lua: the checkout saga the order service orchestrates
-- luacheck: max line length 170
-- (CONTRACT §6, ARCHITECTURE.md "Events and the saga"); the row exists before any call to
-- another service, and each call's outcome is persisted before the answer:
--
--   checkout:  order row (step reserving; one statement with its items and history) → reserve
--              stock at the product service, reservation id = order id (its snapshot of names,
--              prices and sellers prices the order: a price edit cannot race the total) →
--              create the payment (idempotent per order id) → one statement: the snapshot, the
--              total, step payment_pending and order.created in the outbox (from here the order
--              exists for the buyer, the API and the other services), in one transaction with
--              the Idempotency-Key's answer when the request has one
--   then:      payment.completed → commit the reservation, paid (step done)
--              payment.failed, a cancel, or ORDER_PAYMENT_TIMEOUT → cancel the payment, release
--              the stock (refund if money moved), cancelled (step done)
--
-- A checkout that fails before its payment exists is undone: the reservation is released and the
-- row marked abandoned (nobody was told about it; its Idempotency-Key is free again). If that undo
-- fails too, or the process dies mid-way, the recovery job (jobs.lua) finds the row in step
-- reserving (or reserved, written by older releases) and does the same. A retry with the same
-- Idempotency-Key resumes the order it created: reserving again and creating the payment again
-- answer the same snapshot and payment (both idempotent per order id).
--
-- Every change to a live order (paid, cancelled, shipped, delivered) runs in one transaction
-- that holds the order's row lock across the calls to the other services, so a cancel and a
-- payment.completed for the same order are serialised: the stock is either committed or
-- released, never both. All calls are idempotent on the other side (reservation id, payment per
-- order, refund key per order), so a retry after a crash repeats nothing.
local crypto = require "crypto"
local db = require "db"
local host = require "host"
local log = require "log"
local metrics = require "metrics"
local svc = require "lib.svc"
local buyers = require "services.order.buyers"
local cart = require "services.order.cart"
local payments = require "services.order.payments"
local store = require "services.order.store"

local _M = {}

-- ORDER_PAYMENT_TIMEOUT: seconds, or "30m", "1h", "45s"; default 30 minutes.
local function duration(s, default)
  if not s or s == "" then return default end
  local n, unit = s:match("^%s*(%d+%.?%d*)%s*(%a*)%s*$")
  n = tonumber(n)
  if not n then return default end
  local mult = ({ [""] = 1, s = 1, sec = 1, m = 60, min = 60, h = 3600 })[unit:lower()]
  return mult and n * mult or default
end
_M.duration = duration

_M.PAYMENT_TIMEOUT_S = duration(host.env("ORDER_PAYMENT_TIMEOUT"), 1800)
-- The reservation outlives the payment timeout, so the stock of an order being paid at the
-- last second is still held when payment.completed arrives (the product service caps at a day).
_M.RESERVATION_TTL_S = math.min(86400, math.floor(_M.PAYMENT_TIMEOUT_S + math.max(600, _M.PAYMENT_TIMEOUT_S)))
local CALL_TIMEOUT_MS = 10000

-- ORDER_CRASH_AFTER=reserving|reserved|payment_pending: a test hook for the crash specs — the
-- process SIGKILLs itself right after persisting that step, as a power cut would. Unset in
-- every real deployment (the README says so); nothing else reads it.
local CRASH_AFTER = host.env("ORDER_CRASH_AFTER")
local function crash_point(step)
  if CRASH_AFTER ~= step then return end
  log.warn("ORDER_CRASH_AFTER: killing this process after step " .. step)
  local ffi = require "ffi"
  ffi.cdef "int getpid(void); int kill(int pid, int sig);"
  ffi.C.kill(ffi.C.getpid(), 9)
end

local transitions = metrics.counter("saga_transitions_total",
  "Checkout saga outcomes and order transitions, by kind", { "kind" })

-- ---- the product service ----------------------------------------------------------------------

-- → "reserved", snapshot items | "insufficient", list | "invalid", detail | nil, err, code
local function reserve(order)
  local items = {}
  for i, it in ipairs(order.items) do items[i] = { product_id = it.product_id, quantity = it.quantity } end
  local res, err, code = svc.call("product", "POST", "/internal/reservations",
    { reservation_id = order.id, items = items, ttl_seconds = _M.RESERVATION_TTL_S }, { timeout_ms = CALL_TIMEOUT_MS })
  if not res then return nil, err, code end
  if (res.status == 201 or res.status == 200) and type(res.body) == "table" then
    if res.body.status ~= "reserved" then
      return nil, "the reservation is " .. tostring(res.body.status), "conflict"
    end
    if type(res.body.items) ~= "table" then return nil, "the reservation answer has no item snapshot", "unavailable" end
    return "reserved", res.body.items
  end
  if res.status == 409 and type(res.body) == "table" then return "insufficient", res.body.insufficient or {} end
  if res.status == 422 and type(res.body) == "table" then return "invalid", res.body.detail end
  return nil, "product service answered " .. res.status .. " to a reservation", "unavailable"
end

-- Release the order's reservation (idempotent; after a commit it returns the goods to stock).
local function release(order_id)
  local res, err, code = svc.call("product", "DELETE", "/internal/reservations/" .. order_id, nil,
    { timeout_ms = CALL_TIMEOUT_MS })
  if not res then return nil, err, code end
  if res.status ~= 204 and res.status ~= 200 then
    return nil, "product service answered " .. res.status .. " to a release", "unavailable"
  end
  return true
end

-- → "committed" | "gone" (released or expired: the stock may be sold) | nil, err, code
local function commit(order_id)
  local res, err, code = svc.call("product", "POST", "/internal/reservations/" .. order_id .. "/commit", nil,
    { timeout_ms = CALL_TIMEOUT_MS })
  if not res then return nil, err, code end
  if res.status == 200 then return "committed" end
  if res.status == 409 or res.status == 404 then return "gone" end
  return nil, "product service answered " .. res.status .. " to a commit", "unavailable"
end

-- ---- checkout ---------------------------------------------------------------------------------

-- Undo a checkout that has no payment yet: release, then abandon the row. → true | nil, err, code
local function undo(order_id)
  local ok, err, code = release(order_id)
  if not ok then return nil, err, code end
  local _, derr, dcode = db.exec(store.ABANDON .. " AND step IN ('reserving', 'reserved')", order_id)
  if derr then return nil, derr, dcode end
  return true
end

local function undo_or_leave(order_id, why)
  local ok, err = undo(order_id)
  if not ok then
    log.warn("checkout: undo failed; the recovery job will finish it", { order_id = order_id, why = why, error = tostring(err) })
  end
end

-- Reserve the order's stock: the reservation's snapshot prices it (store.priced; nothing
-- written: the row stays in step reserving until the payment exists too).
-- → the priced order | "insufficient"/"invalid", detail | nil, err, code
local function step_reserve(order)
  local outcome, detail, code = reserve(order)
  if not outcome then
    undo_or_leave(order.id, "reservation failed")   -- its outcome is unknown: releasing is safe either way
    return nil, detail, code
  end
  if outcome ~= "reserved" then
    local _, err, ecode = db.exec(store.ABANDON .. " AND step = 'reserving'", order.id)
    if err then return nil, err, ecode end
    transitions:inc(1, outcome)
    return outcome, detail
  end
  crash_point("reserved")
  return store.priced(order, detail)
end

-- Create the payment, then record both outcomes and announce the order in one statement
-- (store.announce); with opts.record (the handler's answer, stored with the order: lib.idempotency
-- store_in_tx) in one transaction with it. → order, payment | nil, err, code
local function step_pay(order, opts)
  local p, err, code = payments.create(order)
  if not p then
    undo_or_leave(order.id, "payment failed")
    transitions:inc(1, "payment_unavailable")
    return nil, err, code == "not_found" and "unavailable" or code
  end
  local row
  if opts.record then
    row, err, code = db.tx(function()
      local r, aerr, acode = store.announce(order, p)
      if not r then return nil, aerr, acode end
      local ok, rerr, rcode = opts.record(r, p)
      if not ok then return nil, rerr, rcode end
      return r
    end)
  else
    row, err, code = store.announce(order, p)
  end
  if not row then
    -- The payment exists but the order could not say so: leave the row for the recovery job,
    -- which undoes it; a payment nobody can confirm (the buyer never got its secret) is
    -- cancelled by the payment timeout at the payment side, or refunded if it completes.
    log.warn("checkout: recording the payment failed", { order_id = order.id, error = tostring(err) })
    return nil, err or "the order changed meanwhile", code or "unavailable"
  end
  transitions:inc(1, "checkout")
  crash_point("payment_pending")
  return row, p
end

-- Drive an order from wherever its checkout stands to payment_pending. → order, payment |
-- "insufficient"/"invalid", detail | nil, err, code. opts.record: see step_pay.
-- A row in step reserved (written by an older release, which persisted the snapshot on its
-- own) resumes like one in reserving: the reservation and the payment are idempotent per order
-- id, and answer the same snapshot and payment again.
function _M.resume(order, opts)
  opts = opts or {}
  if order.step == "reserving" or order.step == "reserved" then
    local r, detail, code = step_reserve(order)
    if type(r) ~= "table" then return r, detail, code end
    return step_pay(r, opts)
  end
  -- Past checkout: the payment as the payment service has it (the same one: per order id).
  if order.status == "created" then
    local p = payments.create(order)
    return order, p
  end
  return order
end

-- The order a checkout with this key made before, resumed. → as resume | false (none)
local function resume_by_key(user_id, key, opts)
  local existing, err, code = store.by_key(user_id, key)
  if err then return nil, err, code end
  if not existing then return false end
  return _M.resume(existing, opts)
end

-- saga.checkout(user_id, shipping_address, idempotency_key, opts) → order, payment |
-- "empty" | "insufficient", list | "invalid", detail | nil, err, code.
-- opts.recovered: the key was taken over from a request that died (lib.idempotency): its order
-- is looked for first. Otherwise the order's INSERT finds a key that has an order already (an
-- earlier try answered 5xx after writing it) and that order is resumed.
-- opts.record(order, payment) → true | nil, err, code: runs in the transaction that announces
-- the order (the handler stores its answer there).
function _M.checkout(user_id, address, key, opts)
  opts = opts or {}
  if key and opts.recovered then
    local r, detail, code = resume_by_key(user_id, key, opts)
    if r ~= false then return r, detail, code end
  end
  local items, err, code = cart.items(user_id)
  if not items then return nil, err, code end
  if #items == 0 then
    -- An earlier try with this key may have checked the cart out, then failed to answer.
    if key then
      local r, detail, rcode = resume_by_key(user_id, key, opts)
      if r ~= false then return r, detail, rcode end
    end
    return "empty"
  end
  local email
  email, err, code = buyers.email(user_id)
  if not email then return nil, err, code end

  local order
  order, err, code = store.create {
    id = crypto.uuid7(), user_id = user_id, email = email, shipping_address = address,
    idempotency_key = key, items = items,
  }
  if err then return nil, err, code end
  if not order then   -- this key has its order already
    local r, detail, rcode = resume_by_key(user_id, key, opts)
    if r == false then return nil, "the order of this Idempotency-Key changed meanwhile; retry", "conflict" end
    return r, detail, rcode
  end
  order.items = items
  crash_point("reserving")
  local p
  order, p, code = _M.resume(order, opts)
  if type(order) == "table" then
    local ok, cerr = cart.clear(user_id)
    if not ok then log.warn("checkout: the cart could not be cleared", { user_id = user_id, error = tostring(cerr) }) end
  end
  return order, p, code
end

-- ---- after checkout -------------------------------------------------------------------------------

-- Refund an order's payment and note it on the row (inside the caller's tx). → row | nil, err, code
local function refund(order)
  if not order.payment_id or order.payment_id == db.null then return order end
  local r, err, code = payments.refund(order)
  if not r then return nil, err, code end
  transitions:inc(1, "refund")
  return order
end

-- Cancel a live order (locked by the caller's tx): stop or refund the payment, release the
-- stock, cancelled. → row | nil, err, code
local function cancel_locked(order, reason, actor)
  local refunded = false
  if order.status == "created" and order.payment_id and order.payment_id ~= db.null then
    local st, err, code = payments.cancel(order.payment_id)
    if not st then return nil, err, code end
    if st == "succeeded" then order.money_moved = true end
  end
  if order.status == "paid" or order.money_moved then
    local ok, err, code = refund(order)
    if not ok then return nil, err, code end
    refunded = true
  end
  local ok, err, code = release(order.id)
  if not ok then return nil, err, code end
  local set = { step = "done", cancel_reason = reason }
  if refunded then set.refunded_cents = order.total_cents end
  local row
  row, err, code = store.transition(order, "cancelled", {
    reason = reason, actor = actor, set = set, event = { reason = reason, refunded = refunded },
  })
  if row then transitions:inc(1, "cancelled_" .. reason) end
  return row, err, code
end

-- saga.cancel(order_id, reason, actor, check) → row | "conflict", detail | bare nil (no such
-- order) | nil, err, code. check(order) → true or a refusal ("forbidden"/"not_found"/"conflict", detail).
function _M.cancel(order_id, reason, actor, check)
  local out = { db.tx(function()
    local order, err, code = store.get(order_id, { lock = true })
    if not order then
      if err then return nil, err, code end
      return false, "not_found"
    end
    if store.hidden(order) then return false, "not_found" end
    if check then
      local ok, why, detail = check(order)
      if not ok then return false, why, detail end
    end
    if order.status ~= "created" and order.status ~= "paid" then
      return false, "conflict", "An order that is " .. order.status .. " cannot be cancelled."
    end
    return cancel_locked(order, reason, actor)
  end) }
  return unpack(out, 1, 3)
end

-- ship / deliver: one transition under the row lock. → row | false, why, detail | nil, err, code
function _M.advance(order_id, from, to, actor, check, set, event)
  return db.tx(function()
    local order, err, code = store.get(order_id, { lock = true })
    if not order then
      if err then return nil, err, code end
      return false, "not_found"
    end
    if store.hidden(order) then return false, "not_found" end
    if check then
      local ok, why, detail = check(order)
      if not ok then return false, why, detail end
    end
    if order.status ~= from then
      return false, "conflict", "An order that is " .. order.status .. " cannot become " .. to .. "."
    end
    local row
    row, err, code = store.transition(order, to, { actor = actor, set = set, event = event })
    if row then transitions:inc(1, to) end
    return row, err, code
  end)
end

-- ---- payment events (consumers.lua; inside the consumer's transaction) ----------------------------

function _M.payment_completed(data)
  local order, err, code = store.get(data.order_id, { lock = true })
  if err then return nil, err, code end
  if not order then
    log.warn("payment completed for an order this service does not know; ignored", { order_id = data.order_id })
    return true
  end
  if store.hidden(order) then
    -- Money for a checkout that was undone: give it back.
    log.warn("payment completed for an abandoned checkout; refunding", { order_id = data.order_id })
    local r, rerr, rcode = payments.refund({ id = data.order_id, payment_id = data.payment_id })
    if not r then return nil, rerr, rcode end
    return true
  end
  if order.status == "created" then
    local outcome
    outcome, err, code = commit(order.id)
    if not outcome then return nil, err, code end
    if outcome == "committed" then
      local row
      row, err, code = store.transition(order, "paid", {
        reason = "payment_completed", set = { step = "done", payment_status = "succeeded", payment_id = data.payment_id },
        event = { total_cents = order.total_cents, currency = order.currency, payment_id = data.payment_id },
      })
      if row then transitions:inc(1, "paid") end
      return row, err, code
    end
    -- The reservation expired before the money came: the goods may be gone. Refund, cancel.
    order.payment_id = data.payment_id
    order.money_moved = true
    return cancel_locked(order, "reservation_expired", "system")
  end
  if order.status == "cancelled" and (tonumber(order.refunded_cents) or 0) < (tonumber(order.total_cents) or 0) then
    -- Paid after it was cancelled (the timeout won the race): the money goes back.
    order.payment_id = data.payment_id
    local ok, rerr, rcode = refund(order)
    if not ok then return nil, rerr, rcode end
    return store.update(order.id, { refunded_cents = order.total_cents, payment_status = "succeeded" })
  end
  return true   -- paid, shipped, delivered already: a duplicate
end

function _M.payment_failed(data)
  local order, err, code = store.get(data.order_id, { lock = true })
  if err then return nil, err, code end
  if not order or order.status ~= "created" or order.step ~= "payment_pending" then return true end
  local ok
  ok, err, code = release(order.id)
  if not ok then return nil, err, code end
  local row
  row, err, code = store.transition(order, "cancelled", {
    reason = "payment_failed", set = { step = "done", cancel_reason = "payment_failed", payment_status = "failed" },
    event = { reason = "payment_failed", refunded = false },
  })
  if row then transitions:inc(1, "cancelled_payment_failed") end
  return row, err, code
end

function _M.payment_refunded(data)
  if not store.is_uuid(data.order_id) then return true end
  local total = tonumber(data.refunded_total_cents) or tonumber(data.amount_cents) or 0
  local _, err, code = db.exec("UPDATE orders SET refunded_cents = GREATEST(refunded_cents, LEAST(total_cents, $2)), " ..
    "updated_at = now() WHERE id = $1", data.order_id:lower(), total)
  if err then return nil, err, code end
  return true
end

-- ---- jobs -------------------------------------------------------------------------------------

-- Checkouts a crash (or a failed undo) left in step reserving/reserved: undo them.
function _M.recover(age, limit)
  local rows, err, code = store.stuck(age or 60, limit or 100)
  if not rows then return nil, err, code end
  local n = 0
  for _, r in ipairs(rows) do
    if r.step == "reserving" or r.step == "reserved" then
      local ok, uerr = undo(r.id)
      if ok then
        n = n + 1
        transitions:inc(1, "recovered")
      else
        log.warn("recovery: undo failed; next pass", { order_id = r.id, error = tostring(uerr) })
      end
    end
  end
  return n
end

-- Orders not paid within ORDER_PAYMENT_TIMEOUT: cancelled, their stock released.
function _M.expire_unpaid(limit)
  local rows, err, code = store.unpaid(_M.PAYMENT_TIMEOUT_S, limit or 100)
  if not rows then return nil, err, code end
  local n = 0
  for _, r in ipairs(rows) do
    local row, cerr = _M.cancel(r.id, "payment_timeout", "system")
    if type(row) == "table" then n = n + 1
    elseif row == nil and cerr then log.warn("payment timeout: cancel failed; next pass", { order_id = r.id, error = tostring(cerr) }) end
  end
  return n
end

return _M
