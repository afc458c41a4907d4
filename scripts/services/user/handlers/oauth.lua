-- scripts/services/user/handlers/oauth.lua: POST /oauth/token (RFC 6749), POST /oauth/revoke
-- (RFC 7009), GET /.well-known/jwks.json.
--
-- /oauth/token errors are RFC 6749 §5.2 bodies ({"error": "invalid_grant", ...}, 400; 401
-- invalid_client). A body that is not application/x-www-form-urlencoded is a 415, and a form
-- that is not UTF-8 a 400, whose problem+json body also carries "error": "invalid_request", so
-- both OAuth clients and CONTRACT §3 readers understand it. Rate limits answer 429 (problem+json, Retry-After).
local crypto = require "crypto"
local jwt = require "jwt"
local accounts = require "services.user.accounts"
local db = require "db"
local device = require "services.user.device"
local limits = require "services.user.limits"
local lockout = require "services.user.lockout"
local problem = require "lib.problem"
local tokens = require "services.user.tokens"
local validate = require "lib.validate"

local _M = {}

local FORM = "application/x-www-form-urlencoded"

local function no_store(extra)
  local h = { ["Cache-Control"] = "no-store", Pragma = "no-cache" }
  if extra then for k, v in pairs(extra) do h[k] = v end end
  return h
end

-- RFC 6749 §5.2 error response.
local function oauth_error(status, code, description, headers)
  return status, { error = code, error_description = description }, no_store(headers)
end

local function is_form(req)
  local ct = (req:header("Content-Type") or ""):lower()
  return ct:match("^%s*([^;%s]+)") == FORM
end

local function wrong_type()
  return problem.new(415, "Content-Type must be " .. FORM .. ".",
    { error = "invalid_request", error_description = "Content-Type must be " .. FORM })
end

-- The form itself cannot be read (repeated or not UTF-8): 400 invalid_request. Bytes that are
-- not UTF-8 answer as a problem document that carries the RFC 6749 members too, like 415.
local function bad_form(why, kind)
  if kind ~= "encoding" then return oauth_error(400, "invalid_request", why) end
  local st, body, h = problem.new(400, "The form is not valid UTF-8.", { error = "invalid_request", error_description = why })
  return st, body, no_store(h)
end

-- Client credentials from HTTP Basic (RFC 6749 §2.3.1, form-encoded id and secret) or the
-- body. → { id, secret } (either may be nil) | nil, error description (invalid_request)
local function client_auth(req, form)
  local basic = req:header("Authorization")
  local b64 = basic and basic:match("^[Bb][Aa][Ss][Ii][Cc]%s+(%S+)%s*$")
  if not b64 then return { id = form.client_id, secret = form.client_secret } end
  if form.client_id or form.client_secret then return nil, "use one client authentication method" end
  local raw = crypto.base64_decode(b64)
  local id, secret
  if raw then id, secret = raw:match("^([^:]*):(.*)$") end
  if not id then return nil, "malformed Basic credentials" end
  local f = validate.form("i=" .. id .. "&s=" .. secret)
  if not f then return nil, "malformed Basic credentials" end
  return { id = f.i or "", secret = f.s or "" }
end

-- Whether s is text a lookup may use: valid UTF-8, no NUL, at most max bytes.
local function usable(s, max)
  return type(s) == "string" and #s <= max and not s:find("\0", 1, true) and validate.utf8_len(s) ~= nil
end

local function password_grant(req, form)
  if not form.username or not form.password then
    return oauth_error(400, "invalid_request", "username and password are required")
  end
  if not usable(form.username, 254) or not usable(form.password, 512) or validate.utf8_len(form.password) > 128 then
    return oauth_error(400, "invalid_grant", "invalid username or password")
  end
  local user, why, extra = accounts.authenticate(form.username, form.password, lockout.client(req, form.username))
  if user == nil then return problem.from(extra, why) end
  if user == false then
    if why == "locked" then return lockout.locked_problem(extra) end
    return oauth_error(400, "invalid_grant", "invalid username or password")
  end
  local grant, err, code = tokens.grant_user(user)
  if not grant then return problem.from(code, err) end
  return 200, grant, no_store({ ["Set-Cookie"] = device.issue(form.username) })
end

local function refresh_grant(form)
  if not form.refresh_token then return oauth_error(400, "invalid_request", "refresh_token is required") end
  local grant, why, code = tokens.rotate(form.refresh_token)
  if grant then return 200, grant, no_store() end
  if code then return problem.from(code, why) end
  local text = {
    unknown = "the refresh token is invalid", revoked = "the refresh token was revoked",
    reused = "the refresh token was already used; its session is revoked", expired = "the refresh token expired",
    disabled = "the account is disabled",
  }
  return oauth_error(400, "invalid_grant", text[why] or "the refresh token is invalid")
end

-- The requested scope must be a subset of the client's; none requested = all of them.
local function grant_scope(requested, allowed)
  if not requested or requested == "" then return allowed end
  local have = {}
  for s in allowed:gmatch("%S+") do have[s] = true end
  local out = {}
  for s in requested:gmatch("%S+") do
    if not have[s] then return nil end
    out[#out + 1] = s
  end
  return table.concat(out, " ")
end

local function client_grant(req, form)
  local c, cerr = client_auth(req, form)
  if not c then return oauth_error(400, "invalid_request", cerr) end
  local id, secret = c.id, c.secret
  local challenge = { ["WWW-Authenticate"] = 'Basic realm="mercato"' }
  if not id or id == "" or not secret then
    return oauth_error(401, "invalid_client", "client authentication is required", challenge)
  end
  if not usable(id, 200) or not usable(secret, 1024) then
    return oauth_error(401, "invalid_client", "client authentication failed", challenge)
  end
  if accounts.is_service_client(id) then
    local ok, err, code = accounts.ensure_client()
    if not ok then return problem.from(code, err) end
  end
  local row, err, code = db.query_one("SELECT secret_hash, scopes, disabled FROM oauth_clients WHERE id = $1", id)
  if err then return problem.from(code, err) end
  if not row or row.disabled or not tokens.secret_matches(row.secret_hash, secret) then
    local st, b, h = limits.ip(req)   -- only failed client logins count against the IP
    if st then return st, b, h end
    return oauth_error(401, "invalid_client", "client authentication failed", challenge)
  end
  local scope = grant_scope(form.scope, row.scopes)
  if not scope then return oauth_error(400, "invalid_scope", "the requested scope exceeds the client's") end
  local access, serr, scode = tokens.access_for_client(id, scope)
  if not access then return problem.from(scode, serr) end
  return 200, { access_token = access, token_type = "Bearer", expires_in = tokens.ACCESS_TTL, scope = scope }, no_store()
end

function _M.token(req)
  if not is_form(req) then return wrong_type() end
  local form, why, kind = validate.form(req.body)
  if not form then return bad_form(why, kind) end
  local grant = form.grant_type
  if not grant then return oauth_error(400, "invalid_request", "grant_type is required") end
  if grant == "client_credentials" then return client_grant(req, form) end
  if grant ~= "password" and grant ~= "refresh_token" then
    return oauth_error(400, "unsupported_grant_type", "grant_type must be password, refresh_token or client_credentials")
  end
  local st, b, h = limits.ip(req)
  if st then return st, b, h end
  if grant == "password" then return password_grant(req, form) end
  return refresh_grant(form)
end

-- RFC 7009: 200 whether or not the token was known (an access token cannot be revoked: it
-- expires within 15 minutes); refresh tokens take their whole session with them.
function _M.revoke(req)
  if not is_form(req) then return wrong_type() end
  local form, why, kind = validate.form(req.body)
  if not form then return bad_form(why, kind) end
  if not form.token or form.token == "" then return oauth_error(400, "invalid_request", "token is required") end
  local _, err, code = tokens.revoke(form.token)
  if err then return problem.from(code, err) end
  return 200, nil, no_store()
end

function _M.jwks()
  return 200, jwt.jwks(), { ["Content-Type"] = "application/json", ["Cache-Control"] = "public, max-age=300" }
end

return _M
