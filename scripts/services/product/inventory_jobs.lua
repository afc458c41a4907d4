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

local _M = {}

local BATCH = 500

_M.expire_reservations = {
  name = "expire-reservations",
  every = tonumber(host.env("RESERVATION_EXPIRY_EVERY_S") or "") or 5,
  run = function()
    local n, err, code = inventory.expire(BATCH)
    if err then
      log.warn("reservation expiry failed", { error = err, code = code })
      return
    end
    if n > 0 then log.info("expired reservations released", { count = n }) end
    return n
  end,
}

return _M
