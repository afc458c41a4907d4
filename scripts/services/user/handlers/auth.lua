-- scripts/services/user/handlers/auth.lua: POST /auth/register, /auth/login, /auth/logout.
local crypto = require "crypto"
local db = require "db"
local accounts = require "services.user.accounts"
local device = require "services.user.device"
local limits = require "services.user.limits"
local lockout = require "services.user.lockout"
local outbox = require "lib.outbox"
local problem = require "lib.problem"
local S = require "services.user.schema"
local store = require "services.user.store"
local tokens = require "services.user.tokens"
local validate = require "lib.validate"

local _M = {}

local NO_STORE = { ["Cache-Control"] = "no-store", Pragma = "no-cache" }

function _M.register(req)
  local st, b, h = limits.ip(req, { route = true })
  if st then return st, b, h end
  local doc, status, body, headers = validate.body(req, S.register)
  if not doc then return status, body, headers end

  local hash, herr, hcode = crypto.argon2_hash(doc.password)
  if not hash then return problem.from(hcode, herr) end
  local user, err, code = db.tx(function()
    local row, cerr, ccode = store.create {
      id = crypto.uuid7(), email = doc.email, password_hash = hash, name = doc.name, role = doc.role or "buyer",
    }
    if cerr then return nil, cerr, ccode end
    local ok, eerr, ecode = outbox.add("user.registered", {
      user_id = row.id, email = row.email, name = row.name, role = row.role,
    })
    if not ok then return nil, eerr, ecode end
    return row
  end)
  if code == "conflict" then return problem.conflict("An account with this email already exists.") end
  if err then return problem.from(code, err) end
  return 201, store.public(user), { Location = "/users/" .. user.id }
end

function _M.login(req)
  local st, b, h = limits.ip(req, { route = true })
  if st then return st, b, h end
  local doc, status, body, headers = validate.body(req, S.login)
  if not doc then return status, body, headers end

  local user, why, extra = accounts.authenticate(doc.email, doc.password, lockout.client(req, doc.email))
  if user == nil then return problem.from(extra, why) end
  if user == false then
    if why == "locked" then return lockout.locked_problem(extra) end
    if why == "disabled" then return problem.forbidden("This account is disabled.") end
    return problem.unauthorized("Invalid email or password.")
  end
  local grant, gerr, gcode = tokens.grant_user(user)
  if not grant then return problem.from(gcode, gerr) end
  return 200, grant, { ["Cache-Control"] = NO_STORE["Cache-Control"], Pragma = NO_STORE.Pragma,
    ["Set-Cookie"] = device.issue(doc.email) }
end

-- Revokes the refresh token given in the body (it must be the caller's), or else the session
-- the access token belongs to (its `sid`). Access tokens themselves expire within 15 min.
function _M.logout(req)
  local st, b, h = limits.ip(req, { route = true })
  if st then return st, b, h end
  local doc, status, body, headers = validate.body(req, S.logout, { optional = true })
  if not doc then return status, body, headers end
  local claims = req.claims
  local _, err, code
  if not store.is_uuid(claims.sub) then return 204 end   -- a service token has no session
  if doc.refresh_token then
    _, err, code = tokens.revoke(doc.refresh_token, claims.sub)
  elseif store.is_uuid(claims.sid) then
    _, err, code = tokens.revoke_family(claims.sid, claims.sub)
  end
  if err then return problem.from(code, err) end
  return 204
end

return _M
