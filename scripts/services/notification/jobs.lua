-- scripts/services/notification/jobs.lua: housekeeping — inbox claims past their retention.
local inbox = require "lib.inbox"
local log = require "log"

return {
  {
    name = "purge-inbox", every = 3600,
    run = function()
      local n, err = inbox.purge()
      if err then log.warn("inbox purge failed", { error = tostring(err) }) return end
      if n > 0 then log.info("old inbox claims purged", { count = n }) end
    end,
  },
}
