-- scripts/lib/roles.lua: the role lists routes.lua gates on (checked in C before a handler).
--   { "GET", "/cart", cart.show, roles = roles.USERS }
local _M = {}

-- A user account's own routes: buyers, sellers and admins. A service token (role "service",
-- its sub a client id, not a user id) is refused with 403: services call only the /internal
-- routes of their scopes, so a client id can never be taken for a user's.
_M.USERS = { "buyer", "seller", "admin" }

return _M
