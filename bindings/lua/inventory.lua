-- inventory: stock reservations over the db module (compiled into the binary; bindings/inventory.c
-- checks the arguments and counts the outcomes).
--
-- Lua over db rather than C over libpq, so that a handler parks on every statement like any
-- other db call, and a reservation made inside the caller's db.tx runs on that transaction's
-- connection as a savepoint and commits or rolls back with it. Every operation is one
-- transaction (db.tx: BEGIN at the top level, a SAVEPOINT inside the caller's), tried again up
-- to RETRIES times at the top level after a deadlock or serialization failure. Rows are locked
-- in product_id order everywhere (items sorted; commit and release lock with ORDER BY ... FOR
-- UPDATE), so overlapping multi-item reservations cannot deadlock. Stock is taken with one
-- conditional UPDATE per item (`WHERE stock >= n`), which PostgreSQL re-checks against the newly
-- committed row when a concurrent update blocked it; `CHECK (stock >= 0)` is the last line of
-- defence. Every change writes an inventory_ledger row, so initial + restocks - sold - reserved
-- = stock can be audited.
local C = ...
local db = require "db"
local log = require "log"

local ipairs, select, tonumber, type, unpack = ipairs, select, tonumber, type, unpack
local RETRIES = 3
local NOT_FOUND = {}   -- a body's answer for "no such row" (commits nothing, returns a bare nil)

local inventory = {}

-- ---- transactions ---------------------------------------------------------------------------

local function pack(...) return { n = select("#", ...), ... } end

-- fn(...) in a transaction, again after a deadlock or serialization failure at the top level
-- (the rolled-back attempt changed nothing). fn returns its results, or nil, err, code, state
-- to roll back. Returns db.tx's results.
local function with_tx(fn, ...)
  local top = not db.in_tx()
  for attempt = 0, RETRIES do
    local r = pack(db.tx(fn, ...))
    local state = r[4]
    if r[1] ~= nil or not top or attempt == RETRIES or (state ~= "40001" and state ~= "40P01") then
      return unpack(r, 1, r.n)
    end
  end
end

-- ---- reserve --------------------------------------------------------------------------------

-- Claim the reservation id; a row already there means a replay (or a concurrent duplicate,
-- which waits here for the first to finish).
local SQL_CLAIM = "INSERT INTO reservations (id, status, expires_at) VALUES ($1::uuid, 'reserved', " ..
  "now() + make_interval(secs => $2::float8)) ON CONFLICT (id) DO NOTHING RETURNING status"

-- Take one item: the conditional update (enough stock, and the product still active), its
-- ledger row and the reservation item with its snapshot of the products row the take checked
-- (name, unit price, currency, seller), all in one statement.
local SQL_TAKE = "WITH u AS (UPDATE inventory i SET stock = i.stock - $2::int, reserved = i.reserved + $2::int, " ..
  "version = i.version + 1 FROM products p WHERE i.product_id = $1::uuid AND p.id = i.product_id " ..
  "AND p.status = 'active' AND i.stock >= $2::int " ..
  "RETURNING i.product_id, i.stock, i.reserved, p.name, p.price_cents, p.currency, p.seller_id), " ..
  "l AS (INSERT INTO inventory_ledger (product_id, kind, quantity, reservation_id, stock_after, reserved_after) " ..
  "SELECT product_id, 'reserve', $2::int, $3::uuid, stock, reserved FROM u), " ..
  "ri AS (INSERT INTO reservation_items (reservation_id, product_id, quantity, name, unit_price_cents, currency, seller_id) " ..
  "SELECT $3::uuid, product_id, $2::int, name, price_cents, currency, seller_id FROM u) " ..
  "SELECT product_id, name, price_cents AS unit_price_cents, currency, seller_id FROM u"

-- What can be sold now: a product that is not active has nothing to sell.
local SQL_AVAILABLE = "SELECT CASE WHEN p.status = 'active' THEN i.stock ELSE 0 END AS stock " ..
  "FROM inventory i JOIN products p ON p.id = i.product_id WHERE i.product_id = $1::uuid"

-- The currencies of the active products among $1 (a reservation is one order: one currency).
local SQL_CURRENCIES = "SELECT DISTINCT currency FROM products WHERE id = ANY($1::uuid[]) AND status = 'active' ORDER BY currency"

local SQL_ITEMS = "SELECT product_id, quantity, name, unit_price_cents, currency, seller_id " ..
  "FROM reservation_items WHERE reservation_id = $1::uuid ORDER BY product_id"

-- One item of the answer: what was reserved and the snapshot taken with it.
local function item(product_id, quantity, snap)
  return { product_id = product_id, quantity = quantity, name = snap.name, unit_price_cents = snap.unit_price_cents,
    currency = snap.currency, seller_id = snap.seller_id }
end

local function mixed_currencies(list)
  return nil, { currencies = C.array(list) }, "invalid"
end

-- The id exists: the same items → a replay reporting its current status and the snapshot
-- taken when it was made; others → invalid.
local function replay(rid, items)
  local row, err, code, state = db.query_one("SELECT status FROM reservations WHERE id = $1::uuid", rid)
  if err then return nil, err, code, state end
  local rows
  rows, err, code, state = db.query(SQL_ITEMS, rid)
  if err then return nil, err, code, state end
  local same = #rows == #items
  for i = 1, #items do
    same = same and rows[i].product_id == items[i].product_id and rows[i].quantity == items[i].quantity
  end
  if not same then return nil, "this reservation_id was already used with other items", "invalid" end
  local out = {}
  for i, r in ipairs(rows) do out[i] = item(r.product_id, r.quantity, r) end
  return { status = row and row.status or "released", replayed = true, items = C.array(out) }
end

-- How much of the product is available now; nil, err, code, state on failure.
local function available(product_id)
  local row, err, code, state = db.query_one(SQL_AVAILABLE, product_id)
  if err then return nil, err, code, state end
  return row and row.stock or 0
end

local function reserve_body(rid, items, ttl)
  local claimed, err, code, state = db.query_one(SQL_CLAIM, rid, ttl)
  if err then return nil, err, code, state end
  if not claimed then return replay(rid, items) end
  local short, taken_items, currencies, seen = {}, {}, {}, {}
  for _, it in ipairs(items) do
    local have
    if #short == 0 then
      -- A shortfall seen by the UPDATE may be gone by the SELECT (a release committed in
      -- between): take again rather than report "requested 3, available 5".
      local snap
      for _ = 1, 3 do
        snap, err, code, state = db.query_one(SQL_TAKE, it.product_id, it.quantity, rid)
        if err then return nil, err, code, state end
        if snap then break end
        have, err, code, state = available(it.product_id)
        if err then return nil, err, code, state end
        if have < it.quantity then break end
      end
      if snap then
        taken_items[#taken_items + 1] = item(it.product_id, it.quantity, snap)
        if not seen[snap.currency] then seen[snap.currency] = true; currencies[#currencies + 1] = snap.currency end
      else
        short[1] = { product_id = it.product_id, requested = it.quantity,
          available = have < it.quantity and have or it.quantity - 1 }
      end
    else
      have, err, code, state = available(it.product_id)
      if err then return nil, err, code, state end
      if have < it.quantity then
        short[#short + 1] = { product_id = it.product_id, requested = it.quantity, available = have }
      end
    end
  end
  -- Short or mixed: rolled back, so nothing was reserved, not even the id. Mixed currencies are
  -- reported first (the request itself is wrong); on the short path they are looked up, since
  -- the takes stopped at the first short item.
  if #short > 0 and #items > 1 then
    local ids = {}
    for i, it in ipairs(items) do ids[i] = it.product_id end
    local rows
    rows, err, code, state = db.query(SQL_CURRENCIES, "{" .. table.concat(ids, ",") .. "}")
    if err then return nil, err, code, state end
    if #rows > 1 then
      local list = {}
      for i, r in ipairs(rows) do list[i] = r.currency end
      return mixed_currencies(list)
    end
  end
  if #short > 0 then return nil, { insufficient = C.array(short) }, "conflict" end
  if #currencies > 1 then table.sort(currencies) return mixed_currencies(currencies) end
  return { status = "reserved", replayed = false, items = C.array(taken_items) }
end

-- inventory.reserve(reservation_id, items, ttl_seconds)
--   → true, { status, replayed, items = [{ product_id, quantity, name, unit_price_cents, currency, seller_id }] }
--   | nil, { insufficient = [...] }, "conflict" | nil, { currencies = [...] }, "invalid" | nil, err, code
function inventory.reserve(...)
  local rid, items, ttl = C.reserve(...)   -- raises on misuse; nil, err, "invalid" for bad values
  if not rid then return nil, items, ttl end
  local info, err, code = with_tx(reserve_body, rid, items, ttl)
  C.count(info and (info.replayed and "replayed" or "reserved") or type(err) == "table" and err.insufficient and "insufficient"
    or code == "invalid" and "invalid" or "error")
  if not info then return nil, err, code end
  return true, info
end

-- ---- commit, release, expire ------------------------------------------------------------------

-- The reservation's inventory rows, locked in product_id order (the ORDER BY is applied before
-- the row locks, so every transaction takes them in the same order).
local SQL_LOCK_ROWS = "SELECT product_id FROM inventory WHERE product_id IN " ..
  "(SELECT product_id FROM reservation_items WHERE reservation_id = $1::uuid) ORDER BY product_id FOR UPDATE"

local SQL_APPLY_COMMIT = "WITH u AS (UPDATE inventory i SET reserved = i.reserved - ri.quantity, " ..
  "version = i.version + 1 FROM reservation_items ri WHERE ri.reservation_id = $1::uuid " ..
  "AND i.product_id = ri.product_id RETURNING i.product_id, ri.quantity, i.stock, i.reserved) " ..
  "INSERT INTO inventory_ledger (product_id, kind, quantity, reservation_id, stock_after, reserved_after) " ..
  "SELECT product_id, 'commit', quantity, $1::uuid, stock, reserved FROM u"

-- $2: 1 when the reservation still holds its stock (release, expire), 0 for a return of sold
-- goods (stock back, nothing held).
local SQL_APPLY_RELEASE = "WITH u AS (UPDATE inventory i SET stock = i.stock + ri.quantity, " ..
  "reserved = i.reserved - CASE WHEN $2::int = 1 THEN ri.quantity ELSE 0 END, version = i.version + 1 " ..
  "FROM reservation_items ri WHERE ri.reservation_id = $1::uuid AND i.product_id = ri.product_id " ..
  "RETURNING i.product_id, ri.quantity, i.stock, i.reserved) " ..
  "INSERT INTO inventory_ledger (product_id, kind, quantity, reservation_id, stock_after, reserved_after) " ..
  "SELECT product_id, $3::text, quantity, $1::uuid, stock, reserved FROM u"

local SQL_SET_STATUS = "UPDATE reservations SET status = $2::text, updated_at = now() WHERE id = $1::uuid"

-- Apply op ("commit", "release", "expire") to reservation rid, locked by this transaction with
-- status st. → "done" | "already", product_ids | nil, err, code, state (rolled back)
local function apply(rid, op, st)
  local held, sold = st == "reserved", st == "committed"
  if op == "commit" then
    if sold then return "already", {} end
    if not held then return nil, "the reservation was released or expired; it cannot be committed", "conflict" end
  elseif not held and not sold then
    return "already", {}   -- released or expired before: the stock is back already
  end
  local rows, err, code, state = db.query(SQL_LOCK_ROWS, rid)
  if err then return nil, err, code, state end
  local _
  if op == "commit" then
    _, err, code, state = db.exec(SQL_APPLY_COMMIT, rid)
  else
    _, err, code, state = db.exec(SQL_APPLY_RELEASE, rid, held and 1 or 0,
      op == "expire" and "expire" or held and "release" or "return")
  end
  if err then return nil, err, code, state end
  local status = op == "commit" and "committed" or op == "expire" and "expired" or "released"
  _, err, code, state = db.exec(SQL_SET_STATUS, rid, status)
  if err then return nil, err, code, state end
  local ids = {}
  for i, r in ipairs(rows) do ids[i] = r.product_id end
  return "done", ids
end

local function change_body(op, rid)
  local row, err, code, state
  if op == "expire" then
    row, err, code, state = db.query_one("SELECT id, status FROM reservations WHERE status = 'reserved' " ..
      "AND expires_at < now() ORDER BY expires_at LIMIT 1 FOR UPDATE SKIP LOCKED")
  else
    row, err, code, state = db.query_one("SELECT id, status FROM reservations WHERE id = $1::uuid FOR UPDATE", rid)
  end
  if err then return nil, err, code, state end
  if not row then return NOT_FOUND end
  local outcome, ids, acode, astate = apply(row.id, op, row.status)
  if not outcome then return nil, ids, acode, astate end
  return outcome, ids, row.id
end

-- commit and release: true, "committed" | "released" | "already", product_ids | bare nil
-- (unknown id) | nil, err, code
local function change(fn, op, done, ...)
  local rid = C.rid(fn, ...)
  if not rid then return nil end   -- not a UUID: no reservation has that id
  local outcome, ids, code = with_tx(change_body, op, rid)
  if outcome == NOT_FOUND then return nil end
  if not outcome then return nil, ids, code end
  return true, outcome == "done" and done or "already", ids
end

function inventory.commit(...) return change("inventory.commit", "commit", "committed", ...) end
function inventory.release(...) return change("inventory.release", "release", "released", ...) end

-- inventory.expire([limit]) → how many reservations past their TTL were released, each in its
-- own transaction, skipping rows another worker holds, and the ids of the products whose stock
-- came back (each once; the caller drops their cached reads).
function inventory.expire(...)
  local limit, err, code = C.limit(...)
  if not limit then return nil, err, code end
  local done, touched, seen = 0, {}, {}
  while done < limit do
    local outcome, a, b = with_tx(change_body, "expire")   -- "done", ids, id | nil, err, code
    if not outcome then
      if done > 0 then break end
      return nil, a, b
    end
    if outcome == NOT_FOUND then break end
    if outcome == "done" then
      log.info("inventory: reservation expired; its stock is released", { reservation_id = b })
      done = done + 1
      for _, pid in ipairs(a) do
        if not seen[pid] then seen[pid] = true; touched[#touched + 1] = pid end
      end
    end
  end
  return done, touched
end

-- ---- stock levels ---------------------------------------------------------------------------

local SQL_SET_STOCK = "WITH u AS (UPDATE inventory SET stock = $2::int, version = version + 1 WHERE product_id = $1::uuid " ..
  "RETURNING product_id, stock, reserved, version), " ..
  "l AS (INSERT INTO inventory_ledger (product_id, kind, quantity, stock_after, reserved_after) " ..
  "SELECT product_id, 'restock', $2::int - $3::int, stock, reserved FROM u WHERE $2::int <> $3::int) " ..
  "SELECT stock, reserved, version FROM u"

local function level(row) return { stock = row.stock, reserved = row.reserved, version = row.version } end

local function stock_body(pid, stock, expected)
  local row, err, code, state = db.query_one(
    "SELECT stock, reserved, version FROM inventory WHERE product_id = $1::uuid FOR UPDATE", pid)
  if err then return nil, err, code, state end
  if not row then return NOT_FOUND end
  if expected and expected ~= row.version then
    return nil, "the inventory changed since that version was read", "conflict", level(row)
  end
  row, err, code, state = db.query_one(SQL_SET_STOCK, pid, stock, row.stock)
  if err then return nil, err, code, state end
  return level(row)
end

-- inventory.set_stock(product_id, stock[, expected_version]) → { stock, reserved, version } |
-- bare nil | nil, err, "conflict", current level (stale version) | nil, err, code
function inventory.set_stock(...)
  local pid, stock, expected = C.set_stock(...)
  if pid == nil then   -- not a UUID (no such product), or nil, err, code for a bad value
    if stock == nil then return nil end
    return nil, stock, expected
  end
  local lvl, err, code, current = with_tx(stock_body, pid, stock, expected)
  if lvl == NOT_FOUND then return nil end
  if not lvl then
    if type(current) == "table" then return nil, err, code, current end
    return nil, err, code
  end
  return lvl
end

-- inventory.get(product_id) → { stock, reserved, version } or bare nil
function inventory.get(...)
  local pid = C.pid("inventory.get", ...)
  if not pid then return nil end
  local row, err, code = db.query_one("SELECT stock, reserved, version FROM inventory WHERE product_id = $1::uuid", pid)
  if err then return nil, err, code end
  return row and level(row) or nil
end

local SQL_AUDIT = "SELECT i.stock, i.reserved, " ..
  "COALESCE(SUM(l.quantity) FILTER (WHERE l.kind = 'initial'), 0) AS initial, " ..
  "COALESCE(SUM(l.quantity) FILTER (WHERE l.kind = 'restock'), 0) AS restocks, " ..
  "COALESCE(SUM(l.quantity) FILTER (WHERE l.kind = 'commit'), 0) - " ..
  "COALESCE(SUM(l.quantity) FILTER (WHERE l.kind = 'return'), 0) AS sold, " ..
  "COALESCE(SUM(l.quantity) FILTER (WHERE l.kind = 'reserve'), 0) - " ..
  "COALESCE(SUM(l.quantity) FILTER (WHERE l.kind IN ('commit', 'release', 'expire')), 0) AS held, " ..
  "(SELECT COALESCE(SUM(ri.quantity), 0) FROM reservation_items ri JOIN reservations r ON r.id = ri.reservation_id " ..
  "WHERE ri.product_id = i.product_id AND r.status = 'reserved') AS open_items " ..
  "FROM inventory i LEFT JOIN inventory_ledger l ON l.product_id = i.product_id " ..
  "WHERE i.product_id = $1::uuid GROUP BY i.product_id, i.stock, i.reserved"

-- inventory.audit(product_id) → the ledger's account { ..., balanced }, or bare nil
function inventory.audit(...)
  local pid = C.pid("inventory.audit", ...)
  if not pid then return nil end
  local a, err, code = db.query_one(SQL_AUDIT, pid)
  if err then return nil, err, code end
  if not a then return nil end
  local out = {}
  for _, k in ipairs { "stock", "reserved", "initial", "restocks", "sold", "held", "open_items" } do
    out[k] = tonumber(a[k]) or 0
  end
  out.balanced = out.initial + out.restocks - out.sold - out.held == out.stock and out.held == out.reserved
    and out.open_items == out.reserved
  return out
end

return inventory
