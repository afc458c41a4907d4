-- scripts/lib/ownership.lua: who may change a seller's resource (CONTRACT §4: sellers manage
-- only their own products and inventory; admins manage everything). Roles are checked on the
-- routes in C; this is the per-row check the handlers make.
--
--   local ownership = require "lib.ownership"
--   if not ownership.may_change(req.claims, row.seller_id) then return problem.forbidden(...) end
local _M = {}

-- Whether the token's claims may change a resource owned by seller_id.
function _M.may_change(claims, seller_id)
  if type(claims) ~= "table" then return false end
  if claims.role == "admin" then return true end
  return claims.role == "seller" and type(claims.sub) == "string" and type(seller_id) == "string"
    and claims.sub:lower() == seller_id:lower()
end

return _M
