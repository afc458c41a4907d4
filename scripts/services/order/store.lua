-- scripts/services/order/store.lua: the order tables (migrations/001_orders.sql) — every SQL
-- luacheck: max line length 170
-- statement of the order service is here; the saga and the handlers say what happens.
local db = require "db"
local json = require "json"
local outbox = require "lib.outbox"

local _M = {}

_M.is_uuid = require("lib.uuid").valid

local COLS = "id, user_id, email, status, step, currency, total_cents, shipping_address, payment_id, " ..
  "payment_status, refunded_cents, cancel_reason, carrier, tracking_number, idempotency_key, version, " ..
  "created_at, updated_at"

-- ---- reading -------------------------------------------------------------------------------

-- A checkout that is still reserving, or was abandoned, is not an order for anyone.
function _M.hidden(o) return o.step == "reserving" or o.step == "reserved" or o.step == "abandoned" end

-- Abandon a checkout (append the step condition): its key is free for a new try.
_M.ABANDON = "UPDATE orders SET step = 'abandoned', idempotency_key = NULL, updated_at = now() WHERE id = $1"

local function items_of(id)
  return db.query("SELECT product_id, name, quantity, unit_price_cents, seller_id FROM order_items " ..
    "WHERE order_id = $1 ORDER BY product_id", id)
end

-- store.get(id[, opts]) → order with .items | nil (absent) | nil, err, code.
-- opts.lock: FOR UPDATE (inside db.tx); opts.history: with .history.
function _M.get(id, opts)
  if not _M.is_uuid(id) then return nil end
  local row, err, code = db.query_one("SELECT " .. COLS .. " FROM orders WHERE id = $1" ..
    (opts and opts.lock and " FOR UPDATE" or ""), id:lower())
  if not row then return nil, err, code end
  row.items, err, code = items_of(row.id)
  if err then return nil, err, code end
  if opts and opts.history then
    row.history, err, code = db.query("SELECT status, reason, actor, at FROM order_status_history " ..
      "WHERE order_id = $1 ORDER BY seq", row.id)
    if err then return nil, err, code end
  end
  return row
end

-- The order a checkout with this Idempotency-Key created (a retry after a crash resumes it).
function _M.by_key(user_id, key)
  local row, err, code = db.query_one("SELECT id FROM orders WHERE user_id = $1 AND idempotency_key = $2", user_id, key)
  if not row then return nil, err, code end
  return _M.get(row.id)
end

-- store.list(user_id | nil, page) → rows (limit + 1) newest first.
function _M.list(user_id, page)
  local after = page.after
  local at, id = after and after.t, after and after.id
  local args, where = {}, {}
  if user_id then args[#args + 1] = user_id; where[#where + 1] = "user_id = $" .. #args end
  -- a checkout that is still reserving (or failed to) is not an order yet
  where[#where + 1] = "step NOT IN ('reserving', 'reserved', 'abandoned')"
  if at and id then
    args[#args + 1] = at; args[#args + 1] = id
    where[#where + 1] = "(created_at, id) < ($" .. (#args - 1) .. "::timestamptz, $" .. #args .. "::uuid)"
  end
  args[#args + 1] = page.limit + 1
  return db.query("SELECT " .. COLS .. " FROM orders WHERE " .. table.concat(where, " AND ") ..
    " ORDER BY created_at DESC, id DESC LIMIT $" .. #args, unpack(args))
end

-- Items of many orders at once: order id → items.
function _M.items_of_many(ids)
  local out = {}
  if #ids == 0 then return out end
  local rows, err, code = db.query("SELECT order_id, product_id, name, quantity, unit_price_cents, seller_id " ..
    "FROM order_items WHERE order_id = ANY($1::uuid[]) ORDER BY order_id, product_id", "{" .. table.concat(ids, ",") .. "}")
  if not rows then return nil, err, code end
  for _, r in ipairs(rows) do
    local list = out[r.order_id]
    if not list then list = {}; out[r.order_id] = list end
    list[#list + 1] = r
  end
  return out
end

-- ---- writing (inside db.tx) -----------------------------------------------------------------

local function history(id, status, reason, actor)
  return db.exec("INSERT INTO order_status_history (order_id, status, reason, actor) VALUES ($1, $2, $3, $4)",
    id, status, reason or db.null, actor or "system")
end

-- The checkout's first row: status created, step reserving; items with the cart's quantities.
function _M.create(o)
  local row, err, code = db.query_one("INSERT INTO orders (id, user_id, email, shipping_address, idempotency_key, currency) " ..
    "VALUES ($1, $2, $3, $4::jsonb, $5, $6) RETURNING " .. COLS,
    o.id, o.user_id, o.email, json.encode(o.shipping_address), o.idempotency_key or db.null, o.currency or db.null)
  if not row then return nil, err, code end
  for _, it in ipairs(o.items) do
    local _, ierr, icode = db.exec("INSERT INTO order_items (order_id, product_id, name, quantity) VALUES ($1, $2, $3, $4)",
      o.id, it.product_id, it.name or "", it.quantity)
    if ierr then return nil, ierr, icode end
  end
  local _, herr, hcode = history(o.id, "created", nil, o.user_id)
  if herr then return nil, herr, hcode end
  return row
end

-- Stock held: the reservation's snapshot of each item (name, unit price, seller), the total and
-- step reserved. Not announced yet. → the order with .items | nil, err, code
function _M.reserved(order, snapshot)
  local total, currency = 0, nil
  for _, it in ipairs(snapshot) do
    local _, err, code = db.exec("UPDATE order_items SET name = $3, unit_price_cents = $4, seller_id = $5 " ..
      "WHERE order_id = $1 AND product_id = $2", order.id, it.product_id, it.name or "", it.unit_price_cents,
      it.seller_id or db.null)
    if err then return nil, err, code end
    total = total + it.unit_price_cents * it.quantity
    currency = currency or it.currency
  end
  local row, err, code = db.query_one("UPDATE orders SET step = 'reserved', total_cents = $2, currency = $3, " ..
    "version = version + 1, updated_at = now() WHERE id = $1 AND step = 'reserving' RETURNING " .. COLS,
    order.id, total, currency)
  if not row then return nil, err or "the order is no longer reserving", code or "conflict" end
  row.items, err, code = items_of(order.id)
  if err then return nil, err, code end
  return row
end

-- The payment exists: step payment_pending, and order.created in the outbox — from here the
-- order exists for everyone. → the order with .items | nil, err, code
function _M.payment_created(order, payment)
  local row, err, code = db.query_one("UPDATE orders SET step = 'payment_pending', payment_id = $2, payment_status = $3, " ..
    "version = version + 1, updated_at = now() WHERE id = $1 AND step = 'reserved' RETURNING " .. COLS,
    order.id, payment.id, payment.status or db.null)
  if not row then return nil, err or "the order is no longer waiting for its payment", code or "conflict" end
  row.items = order.items
  local items = json.array({})
  for i, it in ipairs(row.items) do
    items[i] = { product_id = it.product_id, name = it.name, quantity = it.quantity, unit_price_cents = it.unit_price_cents }
  end
  local ok, oerr, ocode = outbox.add("order.created", {
    order_id = row.id, user_id = row.user_id, email = row.email, items = items,
    total_cents = row.total_cents, currency = row.currency,
  })
  if not ok then return nil, oerr, ocode end
  return row
end

-- The event a transition announces (CONTRACT §7 and docs/events.md).
local function event_data(row, extra)
  local d = { order_id = row.id, user_id = row.user_id, email = row.email }
  for k, v in pairs(extra or {}) do d[k] = v end
  return d
end

-- The SET list of an UPDATE of orders: `sets` (already bound to args), then each column of `set`
-- (names from this file only) bound as the next parameter, then the version bump.
local function assignments(sets, args, set)
  for col, v in pairs(set or {}) do
    args[#args + 1] = v
    sets[#sets + 1] = col .. " = $" .. #args
  end
  sets[#sets + 1] = "version = version + 1"
  sets[#sets + 1] = "updated_at = now()"
  return table.concat(sets, ", "), args
end

-- store.transition(order, to, opts) inside db.tx: status from order.status to `to` (only if
-- the row still has order.status: a lost race is a conflict), history, and order.<to> in the
-- outbox. opts: reason, actor, set = { column = value } (column names from this file only),
-- event = extra event data. → the new row | nil, err, code
function _M.transition(order, to, opts)
  opts = opts or {}
  local sets, args = assignments({ "status = $3" }, { order.id, order.status, to }, opts.set)
  local row, err, code = db.query_one("UPDATE orders SET " .. sets .. " WHERE id = $1 AND status = $2 RETURNING " .. COLS,
    unpack(args))
  if err then return nil, err, code end
  if not row then return nil, "the order changed meanwhile", "conflict" end
  local _
  _, err, code = history(order.id, to, opts.reason, opts.actor)
  if err then return nil, err, code end
  local ok, oerr, ocode = outbox.add("order." .. to, event_data(row, opts.event))
  if not ok then return nil, oerr, ocode end
  return row
end

-- Columns that change without a status change (saga bookkeeping).
function _M.update(id, set)
  local sets, args = assignments({}, { id }, set)
  return db.query_one("UPDATE orders SET " .. sets .. " WHERE id = $1 RETURNING " .. COLS, unpack(args))
end

-- ---- the jobs' scans --------------------------------------------------------------------------

-- Checkouts older than `age` seconds that never got their payment, oldest first.
function _M.stuck(age, limit)
  return db.query("SELECT id, step, status FROM orders WHERE step IN ('reserving', 'reserved') AND updated_at < now() - make_interval(secs => $1::float8) " ..
    "ORDER BY created_at LIMIT $2", age, limit)
end

-- Orders still waiting for their payment past the timeout.
function _M.unpaid(age, limit)
  return db.query("SELECT id FROM orders WHERE status = 'created' AND step = 'payment_pending' AND " ..
    "created_at < now() - make_interval(secs => $1::float8) ORDER BY created_at LIMIT $2", age, limit)
end

-- ---- the document ----------------------------------------------------------------------------

local function item_view(it)
  return {
    product_id = it.product_id, name = it.name, quantity = it.quantity, unit_price_cents = it.unit_price_cents,
    line_total_cents = it.unit_price_cents * it.quantity, seller_id = it.seller_id,
  }
end

-- The order as the API shows it; payment: the payment as the saga knows it (with the
-- client_secret only in the checkout's answer).
function _M.public(o, payment)
  local items = json.array({})
  for i, it in ipairs(o.items or {}) do items[i] = item_view(it) end
  local doc = {
    id = o.id, user_id = o.user_id, status = o.status, items = items, total_cents = o.total_cents,
    currency = o.currency, shipping_address = o.shipping_address, refunded_cents = o.refunded_cents,
    cancel_reason = o.cancel_reason, carrier = o.carrier, tracking_number = o.tracking_number,
    created_at = o.created_at, updated_at = o.updated_at,
    payment = payment or (o.payment_id ~= db.null and o.payment_id and { id = o.payment_id, status = o.payment_status } or json.null),
  }
  if o.history then
    local h = json.array({})
    for i, e in ipairs(o.history) do h[i] = { status = e.status, reason = e.reason, actor = e.actor, at = e.at } end
    doc.status_history = h
  end
  return doc
end

return _M
