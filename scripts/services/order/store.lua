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

-- The checkout's first row, in one statement: the order (status created, step reserving), its
-- items with the cart's quantities and its first history row. The Idempotency-Key's unique
-- index answers "this key already has an order": then nothing is written and the answer is a
-- bare nil (the saga resumes that order). → the row | nil (the key's order exists) | nil, err, code
local CREATE = "WITH o AS (INSERT INTO orders (id, user_id, email, shipping_address, idempotency_key, currency) " ..
  "VALUES ($1, $2, $3, $4::jsonb, $5, $6) " ..
  "ON CONFLICT (user_id, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING RETURNING " .. COLS .. "), " ..
  "i AS (INSERT INTO order_items (order_id, product_id, name, quantity) " ..
  "SELECT o.id, x.product_id, x.name, x.quantity FROM o, " ..
  "jsonb_to_recordset($7::jsonb) AS x(product_id uuid, name text, quantity integer)), " ..
  "h AS (INSERT INTO order_status_history (order_id, status, actor) SELECT o.id, 'created', o.user_id::text FROM o) " ..
  "SELECT o.* FROM o"

function _M.create(o)
  local items = json.array({})
  for i, it in ipairs(o.items) do items[i] = { product_id = it.product_id, name = it.name or "", quantity = it.quantity } end
  return db.query_one(CREATE, o.id, o.user_id, o.email, json.encode(o.shipping_address), o.idempotency_key or db.null,
    o.currency or db.null, json.encode(items))
end

-- The order priced by the reservation's snapshot (name, unit price, seller of each item: a
-- price edit cannot race the total), nothing written yet. → the order with .items, total_cents
-- and currency set
function _M.priced(order, snapshot)
  local by_id, total, currency = {}, 0, nil
  for _, it in ipairs(snapshot) do
    by_id[tostring(it.product_id):lower()] = it
    total = total + it.unit_price_cents * it.quantity
    currency = currency or it.currency
  end
  local items = {}
  for i, it in ipairs(order.items) do
    local snap = by_id[tostring(it.product_id):lower()] or {}
    items[i] = { product_id = it.product_id, quantity = snap.quantity or it.quantity, name = snap.name or it.name or "",
      unit_price_cents = snap.unit_price_cents or 0, seller_id = snap.seller_id or db.null }
  end
  table.sort(items, function(a, b) return a.product_id < b.product_id end)
  order.items, order.total_cents, order.currency = items, total, currency
  return order
end

-- Stock held and the payment made: in one statement, the items' snapshot, the total, step
-- payment_pending with the payment, and order.created in the outbox — from here the order
-- exists for everyone. Only from a checkout step (a lost race: nothing written, a conflict).
-- order: from priced(). → the order with .items | nil, err, code
local ANNOUNCE_HEAD = "WITH o AS (UPDATE orders SET step = 'payment_pending', total_cents = $2, currency = $3, " ..
  "payment_id = $4, payment_status = $5, version = version + 1, updated_at = now() " ..
  "WHERE id = $1 AND step IN ('reserving', 'reserved') RETURNING " .. COLS .. "), " ..
  "s AS (SELECT * FROM jsonb_to_recordset($6::jsonb) AS s(product_id uuid, name text, unit_price_cents bigint, seller_id uuid)), " ..
  "i AS (UPDATE order_items t SET name = s.name, unit_price_cents = s.unit_price_cents, seller_id = s.seller_id " ..
  "FROM s, o WHERE t.order_id = o.id AND t.product_id = s.product_id), "

function _M.announce(order, payment)
  local items, snap = json.array({}), json.array({})
  for i, it in ipairs(order.items) do
    items[i] = { product_id = it.product_id, name = it.name, quantity = it.quantity, unit_price_cents = it.unit_price_cents }
    snap[i] = { product_id = it.product_id, name = it.name, unit_price_cents = it.unit_price_cents, seller_id = it.seller_id }
  end
  local ev, ev_id, ev_type, ev_payload = outbox.insert_part("order.created", {
    order_id = order.id, user_id = order.user_id, email = order.email, items = items,
    total_cents = order.total_cents, currency = order.currency,
  }, nil, 7, "o")
  local row, err, code = db.query_one(ANNOUNCE_HEAD .. "e AS (" .. ev .. ") SELECT o.*, (SELECT count(*) FROM e) AS announced FROM o",
    order.id, order.total_cents, order.currency or db.null, payment.id, payment.status or db.null, json.encode(snap),
    ev_id, ev_type, ev_payload)
  if not row then return nil, err or "the order is no longer checking out", code or "conflict" end
  row.announced = nil
  row.items = order.items
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
