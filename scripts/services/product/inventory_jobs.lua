-- scripts/services/product/inventory_jobs.lua: the job that releases reservations whose TTL
-- passed without a commit (CONTRACT §6: "uncommitted reservations expire and are released by
-- the service itself"). One entry for services.product.jobs:
--   local inventory_jobs = require "services.product.inventory_jobs"
--   return { ..., inventory_jobs.expire_reservations, }
-- Each run releases at most BATCH reservations, each in its own short transaction, skipping
-- rows another replica holds (FOR UPDATE SKIP LOCKED), so replicas can all run it.
local host = require "host"
local inventory = require "inventory"
local log = require "log"
local pcache = require "services.product.cache"

local _M = {}

local BATCH = 500
local DEL_CHUNK = 200   -- keys per DEL

_M.expire_reservations = {
  name = "expire-reservations",
  every = tonumber(host.env("RESERVATION_EXPIRY_EVERY_S") or "") or 5,
  run = function()
    local n, ids_or_err, code = inventory.expire(BATCH)
    if not n then
      log.warn("reservation expiry failed", { error = ids_or_err, code = code })
      return
    end
    -- The stock came back: the products' cached reads would show it held until their TTL.
    for i = 1, #ids_or_err, DEL_CHUNK do
      pcache.invalidate(unpack(ids_or_err, i, math.min(i + DEL_CHUNK - 1, #ids_or_err)))
    end
    if n > 0 then log.info("expired reservations released", { count = n }) end
    return n
  end,
}

return _M
