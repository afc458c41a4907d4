-- scripts/services/payment/jobs.lua: reconciliation with Stripe every RECONCILE_EVERY_S (300)
-- for payments quiet for RECONCILE_QUIET_S (60) or more; sent outbox rows purged.
local host = require "host"
local log = require "log"
local outbox = require "lib.outbox"
local reconcile = require "services.payment.reconcile"

local every = tonumber(host.env("RECONCILE_EVERY_S") or "") or 300
local quiet = tonumber(host.env("RECONCILE_QUIET_S") or "") or 60

return {
  {
    name = "payment-reconcile", every = every,
    run = function()
      local run, err, code = reconcile.run("job", quiet)
      if not run then log.warn("reconciliation run failed", { error = err, code = code }) end
      return run
    end,
  },
  outbox.purge_entry(),
}
