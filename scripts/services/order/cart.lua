-- scripts/services/order/cart.lua: the cart, a Redis hash per user (CONTRACT §6): field
-- <product_id> → quantity, plus the field `currency` (a cart holds one currency, as an order
-- does), 30 days' TTL renewed on every write. Writes are Lua scripts, so the item cap and the
-- currency check cannot race a concurrent write of the same user.
--
--   local items, err, code = cart.items(user_id)   -- { { product_id, quantity }, ... } by product id
--   local ok, why = cart.put(user_id, product_id, quantity, currency)  -- why: "currency", cur | "full"
local cache = require "cache"
local host = require "host"

local _M = {}

_M.TTL = tonumber(host.env("CART_TTL_S") or "") or 30 * 24 * 3600
_M.MAX_ITEMS = 100
_M.MAX_QUANTITY = 100

local function key(user) return "cart:v1:" .. user end

-- KEYS[1] the cart; ARGV product_id, quantity, currency, ttl, max items.
local PUT = [[
local n = redis.call('HLEN', KEYS[1])
local cur = redis.call('HGET', KEYS[1], 'currency')
if cur and n <= 1 then cur = false end
if cur and cur ~= ARGV[3] then return { 'currency', cur } end
local items = n - (redis.call('HEXISTS', KEYS[1], 'currency') == 1 and 1 or 0)
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 0 and items >= tonumber(ARGV[5]) then return { 'full' } end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2], 'currency', ARGV[3])
redis.call('EXPIRE', KEYS[1], ARGV[4])
return { 'ok' }
]]

-- KEYS[1] the cart; ARGV product_id. The currency goes with the last item.
local REMOVE = [[
redis.call('HDEL', KEYS[1], ARGV[1])
if redis.call('HLEN', KEYS[1]) <= 1 then redis.call('DEL', KEYS[1]) end
return 1
]]

-- cart.items(user) → list of { product_id, quantity } sorted by product id, and the cart's
-- currency (nil when empty) | nil, err, code
function _M.items(user)
  local flat, err, code = cache.call("HGETALL", key(user))
  if flat == nil and err then return nil, err, code end
  local items, currency = {}, nil
  for i = 1, #(flat or {}), 2 do
    local f, v = flat[i], flat[i + 1]
    if f == "currency" then
      currency = v
    else
      local q = tonumber(v)
      if q and q >= 1 then items[#items + 1] = { product_id = f, quantity = math.min(q, _M.MAX_QUANTITY) } end
    end
  end
  table.sort(items, function(a, b) return a.product_id < b.product_id end)
  if #items == 0 then currency = nil end
  return items, currency
end

-- cart.put(user, product_id, quantity, currency) → true | false, "currency", cart_currency |
-- false, "full" | nil, err, code
function _M.put(user, product_id, quantity, currency)
  local r, err, code = cache.eval(PUT, { key(user) }, { product_id, quantity, currency, _M.TTL, _M.MAX_ITEMS })
  if r == nil then return nil, err, code end
  if r[1] == "ok" then return true end
  return false, r[1], r[2]
end

function _M.remove(user, product_id)
  local r, err, code = cache.eval(REMOVE, { key(user) }, { product_id })
  if r == nil then return nil, err, code end
  return true
end

function _M.clear(user)
  local r, err, code = cache.call("DEL", key(user))
  if r == nil and err then return nil, err, code end
  return true
end

return _M
