-- scripts/services/product/jobs.lua: stale reservations released; deleted products' images
-- removed from the store; sent outbox rows and old inbox rows purged.
local outbox = require "lib.outbox"
local inbox = require "lib.inbox"
local log = require "log"
local inventory_jobs = require "services.product.inventory_jobs"
local image_jobs = require "services.product.image_jobs"

return {
  inventory_jobs.expire_reservations,
  image_jobs.purge_images,
  outbox.purge_entry(),
  {
    name = "inbox-purge", every = 3600,
    run = function()
      local n, err, code = inbox.purge()
      if err then log.warn("inbox purge failed", { error = err, code = code }) end
      return n
    end,
  },
}
