-- scripts/services/notification/routes.lua: what the notification service answers (CONTRACT §6).
-- In the check state it also compiles every e-mail template: routes.lua is what `mercato check`
-- and a hot reload run in their scratch state, so a broken template fails them with file:line
-- and the old generation keeps serving. Serving states compile a type's templates on first use
-- (all of them took ~20 ms: too much for every worker's state swap).
local roles = require "lib.roles"
local host = require "host"
local n = require "services.notification.handlers.notifications"
if host.checking() then require("services.notification.templates").check() end

local USERS = roles.USERS   -- a user account's own routes: a service token gets 403

return {
  { "GET",  "/notifications",             n.list, roles = { "admin" } },
  { "GET",  "/notifications/me",          n.me, roles = USERS },
  { "GET",  "/notifications/{id}",        n.show, roles = USERS },
  { "POST", "/notifications/{id}/retry",  n.retry, roles = { "admin" }, max_body = 1024 },
}
