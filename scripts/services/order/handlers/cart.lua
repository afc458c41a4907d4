-- scripts/services/order/handlers/cart.lua: GET /cart, PUT/DELETE /cart/items/{product_id},
-- DELETE /cart (CONTRACT §6). The caller's cart: the token's sub. Quantities 1–100, 0 removes;
-- a product that does not exist or was deleted is 404 on PUT and flagged `unavailable` in
-- GET /cart (and left out of total_cents). One cart, one currency: a product in another
-- currency than the cart's is 409.
local json = require "json"
local problem = require "lib.problem"
local validate = require "lib.validate"
local cart = require "services.order.cart"
local catalog = require "services.order.catalog"
local S = require "services.order.schema"
local store = require "services.order.store"

local _M = {}

local function buyer(req)
  local sub = req.claims and req.claims.sub
  if not store.is_uuid(sub) then return nil end
  return sub:lower()
end

local function not_a_buyer()
  return problem.forbidden("A cart belongs to a user account (a token whose subject is a user id).")
end

-- GET /cart → { items: [...], total_cents, currency, item_count }
function _M.show(req)
  local user = buyer(req)
  if not user then return not_a_buyer() end
  local items, err, code = cart.items(user)
  if not items then return problem.from(code, err) end
  local ids = {}
  for i, it in ipairs(items) do ids[i] = it.product_id end
  local products = {}
  if #ids > 0 then
    products, err, code = catalog.products(ids)
    if not products then return problem.from(code, err) end
  end
  local out, total, currency, count = json.array({}), 0, nil, 0
  for i, it in ipairs(items) do
    local p = products[it.product_id]
    local line = { product_id = it.product_id, quantity = it.quantity, available = p ~= nil }
    if p then
      line.name, line.unit_price_cents, line.currency = p.name, p.price_cents, p.currency
      line.line_total_cents = p.price_cents * it.quantity
      line.in_stock = type(p.stock) ~= "number" or p.stock >= it.quantity
      currency = currency or p.currency
      if p.currency == currency then total = total + line.line_total_cents end
      count = count + it.quantity
    else
      line.unavailable = true
    end
    out[i] = line
  end
  return 200, { items = out, total_cents = total, currency = currency or json.null, item_count = count }
end

-- PUT /cart/items/{product_id} {quantity} → the cart
function _M.put(req)
  local user = buyer(req)
  if not user then return not_a_buyer() end
  local pid = req.params.product_id
  if not store.is_uuid(pid) then return problem.not_found("product", pid) end
  pid = pid:lower()
  local doc, status, body, headers = validate.body(req, S.cart_item)
  if not doc then return status, body, headers end
  if doc.quantity == 0 then
    local ok, err, code = cart.remove(user, pid)
    if not ok then return problem.from(code, err) end
    return _M.show(req)
  end
  catalog.forget(pid)   -- a product just deleted must not be added from a stale entry
  local products, err, code = catalog.products({ pid })
  if not products then return problem.from(code, err) end
  local p = products[pid]
  if not p then return problem.not_found("product", pid) end
  local ok, why, cur = cart.put(user, pid, doc.quantity, p.currency)
  if ok == nil then return problem.from(cur, why) end
  if not ok then
    if why == "currency" then
      return problem.conflict("The cart holds items priced in " .. tostring(cur) .. "; this product is priced in " ..
        tostring(p.currency) .. ". Check out or empty the cart first.")
    end
    return problem.conflict("The cart holds " .. cart.MAX_ITEMS .. " different products, the most it can.")
  end
  return _M.show(req)
end

-- DELETE /cart/items/{product_id} → 204 (also when it was not there)
function _M.remove(req)
  local user = buyer(req)
  if not user then return not_a_buyer() end
  local pid = req.params.product_id
  if not store.is_uuid(pid) then return 204 end
  local ok, err, code = cart.remove(user, pid:lower())
  if not ok then return problem.from(code, err) end
  return 204
end

-- DELETE /cart → 204
function _M.clear(req)
  local user = buyer(req)
  if not user then return not_a_buyer() end
  local ok, err, code = cart.clear(user)
  if not ok then return problem.from(code, err) end
  return 204
end

_M.buyer = buyer
_M.not_a_buyer = not_a_buyer

return _M
