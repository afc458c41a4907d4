-- scripts/services/product/cache.lua: the Redis read cache of GET /products/{id}.
--
--   local pcache = require "services.product.cache"
--   pcache.invalidate(product_id)     -- after the COMMIT of any write that changes what GET shows
--
-- Entries hold the JSON of the product document (stock included) for TTL seconds. Every write
-- (PATCH, DELETE, inventory changes, reservations) must call invalidate after its transaction
-- committed; the TTL bounds the damage of the one race left (a reader that loaded the old row
-- before the commit and stores it after the invalidation). Redis down: reads go to PostgreSQL,
-- invalidation failures are logged and the TTL cleans up.
local cache = require "cache"
local host = require "host"
local log = require "log"

local _M = {}

_M.TTL = tonumber(host.env("PRODUCT_CACHE_TTL") or "") or 60
local PREFIX = "product:v2:"   -- v2: the document has `images`

local function key(id) return PREFIX .. id end

-- The cached version and JSON text of a product, or nil (a miss, or Redis is down). Entries
-- are "<version>\n<json>", so a conditional GET needs no JSON decoding.
function _M.get(id)
  if _M.TTL <= 0 then return nil end
  local v = cache.call("GET", key(id))
  if type(v) ~= "string" then return nil end
  local version, text = v:match("^(%d+)\n(.*)$")
  if not version then return nil end
  return tonumber(version), text
end

function _M.put(id, version, json_text)
  if _M.TTL <= 0 then return end
  local ok, err = cache.call("SET", key(id), version .. "\n" .. json_text, "EX", tostring(_M.TTL))
  if not ok and err then log.debug("product cache: SET failed", { error = tostring(err) }) end
end

-- The cached JSON texts of several products in one round trip (MGET): { [id] = text } for the
-- hits (misses, and everything when Redis is down, are simply absent).
function _M.get_many(ids)
  local out = {}
  if _M.TTL <= 0 or #ids == 0 then return out end
  local args = { "MGET" }
  for i, id in ipairs(ids) do args[i + 1] = key(id) end
  local vals = cache.call(unpack(args))
  if type(vals) ~= "table" then return out end
  for i, id in ipairs(ids) do
    local v = vals[i]
    local text = type(v) == "string" and v:match("^%d+\n(.*)$")
    if text then out[id] = text end
  end
  return out
end

-- Cache several documents in one round trip: entries = { { id, version, json_text }, ... }.
function _M.put_many(entries)
  if _M.TTL <= 0 or #entries == 0 then return end
  local cmds = {}
  for i, e in ipairs(entries) do cmds[i] = { "SET", key(e[1]), e[2] .. "\n" .. e[3], "EX", tostring(_M.TTL) } end
  local ok, err = cache.pipeline(cmds)
  if not ok and err then log.debug("product cache: SET failed", { error = tostring(err) }) end
end

-- Drop the cached document of one product (or several: invalidate(id1, id2, ...)).
function _M.invalidate(...)
  local n = select("#", ...)
  if n == 0 then return true end
  local args = { "DEL" }
  for i = 1, n do args[#args + 1] = key(select(i, ...)) end
  local ok, err, code = cache.call(unpack(args))
  if ok == nil and err then
    log.warn("product cache: invalidation failed; entries expire within the TTL",
      { error = tostring(err), ttl = _M.TTL })
    return nil, err, code
  end
  return true
end

return _M
