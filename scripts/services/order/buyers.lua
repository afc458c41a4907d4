-- scripts/services/order/buyers.lua: the buyer's email for order.created and the emails that
-- follow, read from the user service at checkout (GET /internal/users/{id}, service token with
-- scope users) and kept on the order row. A lookup rather than a projection of
-- user.registered: a buyer who registered a second ago can check out before that event
-- arrives, and an email changed later is current at the next checkout. Cached in this Lua
-- state for a minute.
local host = require "host"
local svc = require "lib.svc"

local _M = {}

local TTL = 60
local cached = {}   -- user id → { email, at }

-- buyers.email(user_id) → email | nil, err, code ("not_found" for an unknown or disabled user)
function _M.email(user_id)
  local now = host.now()
  local c = cached[user_id]
  if c and now - c.at < TTL then return c.email end
  local res, err, code = svc.call("user", "GET", "/internal/users/" .. user_id)
  if not res then return nil, err, code end
  if res.status == 404 then return nil, "no such user", "not_found" end
  if res.status ~= 200 or type(res.body) ~= "table" or type(res.body.email) ~= "string" then
    return nil, "user service answered " .. res.status, "unavailable"
  end
  if res.body.disabled == true then return nil, "the account is disabled", "not_found" end
  cached[user_id] = { email = res.body.email, at = now }
  return res.body.email
end

return _M
