-- scripts/services/user/routes.lua: what the user service answers (CONTRACT §6).
-- Rate limits (services.user.limits): /auth/* per client IP by the route option, checked in C
-- (nil on a host without it: the handlers count instead); /oauth/token in its handler.
local roles = require "lib.roles"
local limits = require "services.user.limits"
local auth = require "services.user.handlers.auth"
local oauth = require "services.user.handlers.oauth"
local users = require "services.user.handlers.users"

local SMALL = 16 * 1024   -- auth bodies: a few short fields
local AUTH_LIMIT = limits.route_option()

local USERS = roles.USERS   -- a user account's own routes: a service token gets 403

return {
  { "POST",  "/auth/register",         auth.register, max_body = SMALL, rate_limit = AUTH_LIMIT },
  { "POST",  "/auth/login",            auth.login, max_body = SMALL, rate_limit = AUTH_LIMIT },
  { "POST",  "/auth/logout",           auth.logout, roles = USERS, max_body = SMALL, rate_limit = AUTH_LIMIT },
  { "POST",  "/oauth/token",           oauth.token, max_body = SMALL },
  { "POST",  "/oauth/revoke",          oauth.revoke, max_body = SMALL },
  { "GET",   "/.well-known/jwks.json", oauth.jwks },
  { "GET",   "/users/me",              users.me, roles = USERS },
  { "PATCH", "/users/me",              users.patch_me, roles = USERS, max_body = SMALL },
  { "POST",  "/users/me/password",     users.change_password, roles = USERS, max_body = SMALL },
  { "GET",   "/users",                 users.list, roles = { "admin" } },
  { "GET",   "/users/{id}",            users.show, roles = { "admin" } },
  { "PATCH", "/users/{id}",            users.admin_patch, roles = { "admin" }, max_body = SMALL },
  -- the order service reads the buyer's email at checkout (service token, scope users)
  { "GET",   "/internal/users/{id}",   users.show, scope = "users" },
}
