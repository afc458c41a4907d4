-- scripts/services/order/catalog.lua: what the order service reads from the product service —
-- current products for the cart, one batched GET /products?ids=... per read, cached in this Lua
-- state for CART_PRICE_CACHE_S (2 s) so that a busy cart page does not become a product
-- service load. Prices shown in the cart are informative: the checkout's prices are the
-- reservation's snapshot (services.order.saga).
--
--   local products, err, code = catalog.products({ id1, id2 })   -- id → document; absent: gone
local host = require "host"
local svc = require "lib.svc"

local _M = {}

_M.TTL = tonumber(host.env("CART_PRICE_CACHE_S") or "") or 2
local MAX_IDS = 100        -- GET /products?ids= takes up to 100
local MAX_ENTRIES = 10000  -- past this, the cache starts over

local cached, size = {}, 0   -- id → { doc = document | false, at = seconds }

local function remember(id, doc, now)
  if size >= MAX_ENTRIES then cached, size = {}, 0 end
  if not cached[id] then size = size + 1 end
  cached[id] = { doc = doc or false, at = now }
end

local function fetch(ids, out, now)
  local res, err, code = svc.call("product", "GET", "/products?ids=" .. table.concat(ids, ","), nil, { auth = false })
  if not res then return nil, err, code end
  if res.status ~= 200 or type(res.body) ~= "table" or type(res.body.items) ~= "table" then
    return nil, "product service answered " .. res.status .. " to a batch read", "unavailable"
  end
  local found = {}
  for _, p in ipairs(res.body.items) do
    if type(p) == "table" and type(p.id) == "string" then found[p.id:lower()] = p end
  end
  for _, id in ipairs(ids) do
    remember(id, found[id], now)
    out[id] = found[id]
  end
  return true
end

-- catalog.products(ids) → { [id] = product document } (deleted or unknown ids absent) |
-- nil, err, code. ids: lower-case UUID strings.
function _M.products(ids)
  local now, out, want = host.now(), {}, {}
  for _, id in ipairs(ids) do
    local c = cached[id]
    if c and now - c.at < _M.TTL then
      out[id] = c.doc or nil
    else
      want[#want + 1] = id
    end
  end
  for i = 1, #want, MAX_IDS do
    local ok, err, code = fetch({ unpack(want, i, math.min(i + MAX_IDS - 1, #want)) }, out, now)
    if not ok then return nil, err, code end
  end
  return out
end

-- For specs and hot paths that must see a change now.
function _M.forget(id)
  if id then
    if cached[id] then cached[id], size = nil, size - 1 end
  else
    cached, size = {}, 0
  end
end

return _M
