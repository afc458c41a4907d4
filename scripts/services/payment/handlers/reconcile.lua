-- scripts/services/payment/handlers/reconcile.lua: POST /payments/reconcile (admin) — one
-- luacheck: max line length 170
-- reconciliation run now (services.payment.reconcile); answers its record.
local problem = require "lib.problem"
local validate = require "lib.validate"
local reconcile = require "services.payment.reconcile"

local _M = {}

function _M.run(req)
  local empty, status, body, headers = validate.empty(req)   -- nothing but {} (or no body)
  if not empty then return status, body, headers end
  local min_age = tonumber(req.query.min_age_s or "0")
  if not min_age or min_age < 0 or min_age > 86400 then
    return problem.bad_request("min_age_s must be 0 to 86400 seconds.", { { field = "min_age_s", message = "must be 0 to 86400" } })
  end
  local run, err, code = reconcile.run("admin", min_age)
  if not run then return problem.from(code, err) end
  return 200, run
end

return _M
