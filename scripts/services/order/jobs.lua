-- scripts/services/order/jobs.lua: the saga's clocks — checkouts a crash left half-done are
-- undone, orders not paid within ORDER_PAYMENT_TIMEOUT are cancelled — and the purges.
local host = require "host"
local idempotency = require "lib.idempotency"
local inbox = require "lib.inbox"
local log = require "log"
local outbox = require "lib.outbox"
local saga = require "services.order.saga"

local RECOVER_AFTER_S = tonumber(host.env("ORDER_RECOVER_AFTER_S") or "") or 60

local function job(name, every, fn)
  return {
    name = name, every = every,
    run = function()
      local n, err, code = fn()
      if not n then log.warn(name .. " failed", { error = tostring(err), code = code }) end
      return n
    end,
  }
end

return {
  job("saga-recovery", tonumber(host.env("ORDER_RECOVERY_EVERY_S") or "") or 10,
    function() return saga.recover(RECOVER_AFTER_S, 100) end),
  job("payment-timeout", tonumber(host.env("ORDER_TIMEOUT_EVERY_S") or "") or 10,
    function() return saga.expire_unpaid(100) end),
  idempotency.purge_entry(),
  outbox.purge_entry(),
  job("inbox-purge", 3600, function() return inbox.purge() end),
}
