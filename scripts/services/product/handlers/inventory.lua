-- scripts/services/product/handlers/inventory.lua: stock levels (GET/PUT
-- /products/{id}/inventory) and the order service's reservations (/internal/reservations),
-- all through the `inventory` binding (conditional updates, ledger, one transaction each).
--
-- Routes to add (services.product.routes; roles and scope are checked in C):
--   local inventory = require "services.product.handlers.inventory"
--   { "GET",    "/products/{id}/inventory",           inventory.show },
--   { "PUT",    "/products/{id}/inventory",           inventory.put, roles = { "admin", "seller" }, max_body = 4 * 1024 },
--   { "POST",   "/internal/reservations",             inventory.reserve, scope = "inventory", max_body = 64 * 1024 },
--   { "POST",   "/internal/reservations/{id}/commit", inventory.commit, scope = "inventory", max_body = 4 * 1024 },
--   { "DELETE", "/internal/reservations/{id}",        inventory.release, scope = "inventory" },
local db = require "db"
local inventory = require "inventory"
local etag = require "lib.etag"
local ownership = require "lib.ownership"
local pcache = require "services.product.cache"
local problem = require "lib.problem"
local uuid = require "lib.uuid"
local validate = require "lib.validate"
local S = require "services.product.schema"

local _M = {}

local MAX_ITEMS = 100
local DEFAULT_TTL = 1800   -- seconds: the order service's default payment timeout (30 min)

local is_uuid = uuid.valid

local function level_body(lvl)
  return { stock = lvl.stock, reserved = lvl.reserved, version = lvl.version },
    { ETag = etag.of(lvl.version) }
end

-- GET /products/{id}/inventory → { stock, reserved, version } (public, like the product).
function _M.show(req)
  local id = req.params.id
  if not is_uuid(id) then return problem.not_found("product", id) end
  local lvl, err, code = inventory.get(id)
  if err then return problem.from(code, err) end
  if not lvl then return problem.not_found("product", id) end
  local body, headers = level_body(lvl)
  return 200, body, headers
end

-- The product's owner, or a problem: 404 when there is no live product.
local function owner_of(id)
  local row, err, code = db.query_one("SELECT seller_id FROM products WHERE id = $1 AND status = 'active'", id)
  if err then return nil, problem.from(code, err) end
  if not row then return nil, problem.not_found("product", id) end
  return row.seller_id
end

-- The stock a seller may set: the bounds of POST /products (services.product.schema).
local STOCK = { stock = { type = "integer", required = true, min = 0, max = S.MAX_STOCK } }

-- PUT /products/{id}/inventory {stock} with If-Match (owner or admin): 428 without; 412 when
-- it names no current version — stale, or not a strong entity-tag (W/"7" and a bare 7 never
-- match: RFC 9110 §13.1.1 compares If-Match strongly). A list may name several versions.
function _M.put(req)
  local id = req.params.id
  if not is_uuid(id) then return problem.not_found("product", id) end
  id = id:lower()
  local doc, status, body, headers = validate.body(req, STOCK)
  if not doc then return status, body, headers end
  local owner, pst, pbody, pheaders = owner_of(id)
  if not owner then return pst, pbody, pheaders end
  if not ownership.may_change(req.claims, owner) then
    return problem.forbidden("Only the product's seller or an admin may change its stock.")
  end
  local raw = req:header("If-Match")
  if not raw or raw:match("^%s*$") then
    return problem.new(428, 'This request requires If-Match: "<version>" (see the ETag of GET).')
  end
  local want, expected = etag.versions(raw, false), nil
  if want ~= "*" then
    if #want == 1 then
      expected = want[1]
    else   -- none or several: held to the current version when the list names it
      local cur, err, code = inventory.get(id)
      if err then return problem.from(code, err) end
      if not cur then return problem.not_found("product", id) end
      if not etag.matches(want, cur.version) then
        local _, h = level_body(cur)
        return problem.new(412, "If-Match names no current version of this inventory (a strong ETag such as \"7\").", nil, h)
      end
      expected = cur.version
    end
  end
  local lvl, err, code, current = inventory.set_stock(id, doc.stock, expected)
  if err and current then
    local _, h = level_body(current)
    return problem.new(412, "The inventory changed since you read it; GET it again.", nil, h)
  end
  if err then return problem.from(code, err) end
  if not lvl then return problem.not_found("product", id) end
  pcache.invalidate(id)
  local out, h = level_body(lvl)
  return 200, out, h
end

-- The reservation document: { reservation_id, items = { { product_id, quantity } }, ttl_seconds? }
-- → doc, or nil and a problem.
local function reservation_doc(req)
  if not validate.is_json(req) then return nil, problem.unsupported_media_type("application/json") end
  local doc, jerr = req:json()
  if doc == nil then return nil, problem.bad_request(jerr) end
  if type(doc) ~= "table" or doc[1] ~= nil then return nil, problem.bad_request("The request body must be a JSON object.") end
  local errors = {}
  for k in pairs(doc) do
    if k ~= "reservation_id" and k ~= "items" and k ~= "ttl_seconds" then
      return nil, problem.bad_request("The request body has fields that are not allowed.",
        { { field = tostring(k), message = "is not allowed" } })
    end
  end
  if not is_uuid(doc.reservation_id) then errors[#errors + 1] = { field = "reservation_id", message = "must be a UUID" } end
  local ttl = doc.ttl_seconds
  if ttl ~= nil and (type(ttl) ~= "number" or ttl ~= math.floor(ttl) or ttl < 1 or ttl > 86400) then
    errors[#errors + 1] = { field = "ttl_seconds", message = "must be a whole number from 1 to 86400" }
  end
  local items = doc.items
  if type(items) ~= "table" or #items == 0 or #items > MAX_ITEMS then
    errors[#errors + 1] = { field = "items", message = "must be a list of 1 to " .. MAX_ITEMS .. " items" }
  else
    for i, it in ipairs(items) do
      local f = "items[" .. (i - 1) .. "]"
      if type(it) ~= "table" then
        errors[#errors + 1] = { field = f, message = "must be an object" }
      else
        if not is_uuid(it.product_id) then errors[#errors + 1] = { field = f .. ".product_id", message = "must be a UUID" } end
        local q = it.quantity
        if type(q) ~= "number" or q ~= math.floor(q) or q < 1 or q > 1000000 then
          errors[#errors + 1] = { field = f .. ".quantity", message = "must be a whole number from 1 to 1000000" }
        end
      end
    end
  end
  if #errors > 0 then return nil, problem.validation(errors) end
  return doc
end

local function reservation_view(id, status, items)
  return { reservation_id = id, status = status, items = items }
end

-- POST /internal/reservations → 201 { reservation_id, status, items } (or 200 with the same
-- items for a replay of the same id and items), 409 { insufficient = [...] } with nothing
-- reserved, 422 for items in different currencies. Each item is { product_id, quantity, name,
-- unit_price_cents, currency, seller_id }, snapshotted with the take (product_id order).
function _M.reserve(req)
  local doc, status, body, headers = reservation_doc(req)
  if not doc then return status, body, headers end
  local items = {}
  for i, it in ipairs(doc.items) do items[i] = { product_id = it.product_id:lower(), quantity = it.quantity } end
  local rid = doc.reservation_id:lower()
  local ok, info, code = inventory.reserve(rid, items, doc.ttl_seconds or DEFAULT_TTL)
  if not ok then
    if type(info) == "table" and info.insufficient then
      return problem.new(409, "Not enough stock for every item; nothing was reserved.",
        { insufficient = info.insufficient })
    end
    if type(info) == "table" and info.currencies then
      return problem.new(422, "The items are priced in different currencies; one reservation (one order) has one currency.",
        { currencies = info.currencies, errors = { { field = "items", message = "must all be priced in one currency" } } })
    end
    if code == "invalid" then
      return problem.new(422, "This reservation_id was already used with other items.")
    end
    return problem.from(code, info)
  end
  if info.replayed then return 200, reservation_view(rid, info.status, info.items) end
  local ids = {}
  for i, it in ipairs(items) do ids[i] = it.product_id end
  pcache.invalidate(unpack(ids))
  return 201, reservation_view(rid, info.status, info.items), { Location = "/internal/reservations/" .. rid }
end

-- POST /internal/reservations/{id}/commit → 200 (also when committed before), 404, 409 when
-- the reservation was released or expired (its stock may be sold to someone else). The
-- products' cached reads are dropped like after any other stock move.
function _M.commit(req)
  local id = req.params.id
  if not is_uuid(id) then return problem.not_found("reservation", id) end
  local empty, est, ebody, eheaders = validate.empty(req)
  if not empty then return est, ebody, eheaders end
  id = id:lower()
  local ok, err, code = inventory.commit(id)
  if not ok and err then
    if code == "conflict" then return problem.conflict("The reservation was released or expired; it cannot be committed.") end
    return problem.from(code, err)
  end
  if not ok then return problem.not_found("reservation", id) end
  if type(code) == "table" and #code > 0 then pcache.invalidate(unpack(code)) end
  return 200, { reservation_id = id, status = "committed" }
end

-- DELETE /internal/reservations/{id} → 204, also when unknown or released before (idempotent).
function _M.release(req)
  local id = req.params.id
  if not is_uuid(id) then return 204 end
  local ok, err_or_status, code_or_ids = inventory.release(id:lower())
  if not ok and err_or_status then return problem.from(code_or_ids, err_or_status) end
  if ok and #code_or_ids > 0 then pcache.invalidate(unpack(code_or_ids)) end
  return 204
end

return _M
