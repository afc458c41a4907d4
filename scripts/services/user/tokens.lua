-- scripts/services/user/tokens.lua: access tokens (RS256 JWTs, 15 min) and refresh tokens
-- (random, stored as SHA-256, 30 days, rotated on every use; a reused one revokes its family).
local crypto = require "crypto"
local db = require "db"
local jwt = require "jwt"
local log = require "log"
local revocations = require "services.user.revocations"

local _M = {}

_M.ACCESS_TTL = 900
_M.REFRESH_TTL = 30 * 24 * 3600

local function hash(token) return crypto.hex(crypto.sha256(token)) end
_M.hash = hash

-- An access token for a user (sid = the refresh-token family of the session, when one exists).
-- Its iat is never before the user's last revocation (user.revoked_s, a whole second rounded
-- up), which would make the hosts refuse it: a token made in that second is dated a moment on.
function _M.access_for_user(user, sid)
  local claims = { sub = user.id, role = user.role, scope = "", sid = sid }
  local min_iat = revocations.min_iat(user)
  if min_iat > os.time() then claims.iat, claims.exp = min_iat, min_iat + _M.ACCESS_TTL end
  return jwt.sign(claims, { ttl = _M.ACCESS_TTL })
end

-- An access token for an OAuth client (client_credentials): sub names the client.
function _M.access_for_client(client_id, scope)
  return jwt.sign({ sub = client_id, role = "service", scope = scope, client_id = client_id }, { ttl = _M.ACCESS_TTL })
end

-- Insert a fresh refresh token of family (a new family when nil); call inside db.tx or alone.
-- → token, family | nil, err, code
function _M.new_refresh(user_id, family)
  local raw, err, code = crypto.random(32)
  if not raw then return nil, err, code end
  local token = crypto.base64url_encode(raw)
  family = family or crypto.uuid7()
  local _, ierr, icode = db.exec(
    "INSERT INTO refresh_tokens (id, token_hash, family_id, user_id, expires_at) " ..
    "VALUES ($1, $2, $3, $4, now() + make_interval(secs => $5))",
    crypto.uuid7(), hash(token), family, user_id, _M.REFRESH_TTL)
  if ierr then return nil, ierr, icode end
  return token, family
end

-- The token response of RFC 6749 §5.1 for a user, with a new refresh token in family.
function _M.grant_user(user, family)
  local refresh, fam_or_err, code = _M.new_refresh(user.id, family)
  if not refresh then return nil, fam_or_err, code end
  local access, aerr, acode = _M.access_for_user(user, fam_or_err)
  if not access then return nil, aerr, acode end
  return {
    access_token = access, token_type = "Bearer", expires_in = _M.ACCESS_TTL, refresh_token = refresh, scope = "",
  }
end

-- Rotate a refresh token. → response | nil, reason ("invalid_grant" outcomes are reasons:
-- "unknown", "expired", "revoked", "reused", "disabled") | nil, err, code (dependency).
function _M.rotate(token)
  if type(token) ~= "string" or token == "" or #token > 512 then return nil, "unknown" end
  local outcome
  local res, err, code = db.tx(function()
    local row, qerr, qcode = db.query_one(
      "SELECT t.id, t.family_id, t.user_id, t.used_at, t.revoked_at, t.expires_at < now() AS expired, " ..
      "u.role, u.disabled, " .. revocations.columns("u") ..
      " FROM refresh_tokens t JOIN users u ON u.id = t.user_id WHERE t.token_hash = $1 FOR UPDATE OF t",
      hash(token))
    if qerr then return nil, qerr, qcode end
    if not row then outcome = "unknown" return false end
    if row.revoked_at ~= db.null then outcome = "revoked" return false end
    if row.used_at ~= db.null then
      -- A spent token came back: someone holds a copy. Kill the whole session (committed).
      local _, rerr, rcode = db.exec(
        "UPDATE refresh_tokens SET revoked_at = now() WHERE family_id = $1 AND revoked_at IS NULL", row.family_id)
      if rerr then return nil, rerr, rcode end
      outcome = "reused"
      log.warn("refresh token reused; its family is revoked",
        { event = "refresh_token_reuse", user_id = row.user_id, family_id = row.family_id })
      return false
    end
    if row.expired then outcome = "expired" return false end
    if row.disabled then outcome = "disabled" return false end
    local _, uerr, ucode = db.exec("UPDATE refresh_tokens SET used_at = now() WHERE id = $1", row.id)
    if uerr then return nil, uerr, ucode end
    return _M.grant_user({ id = row.user_id, role = row.role, revoked_s = row.revoked_s }, row.family_id)
  end)
  if err then return nil, err, code end
  if not res then return nil, outcome end
  return res
end

-- Revoke the family of a refresh token (logout, RFC 7009). user_id, when given, must own it.
-- → number of tokens revoked | nil, err, code
function _M.revoke(token, user_id)
  if type(token) ~= "string" or token == "" or #token > 512 then return 0 end
  local sql = "UPDATE refresh_tokens SET revoked_at = now() WHERE revoked_at IS NULL AND family_id = " ..
    "(SELECT family_id FROM refresh_tokens WHERE token_hash = $1" .. (user_id and " AND user_id = $2)" or ")")
  if user_id then return db.exec(sql, hash(token), user_id) end
  return db.exec(sql, hash(token))
end

function _M.revoke_family(family, user_id)
  return db.exec("UPDATE refresh_tokens SET revoked_at = now() WHERE family_id = $1 AND user_id = $2 AND revoked_at IS NULL",
    family, user_id)
end

-- Revoke every session of a user, except the family `keep` (the caller's own session).
function _M.revoke_user(user_id, keep)
  if keep then
    return db.exec("UPDATE refresh_tokens SET revoked_at = now() WHERE user_id = $1 AND revoked_at IS NULL " ..
      "AND family_id <> $2", user_id, keep)
  end
  return db.exec("UPDATE refresh_tokens SET revoked_at = now() WHERE user_id = $1 AND revoked_at IS NULL", user_id)
end

-- Client secrets: "sha256$<salt hex>$<hex SHA-256(salt .. secret)>".
function _M.hash_secret(secret)
  local salt = crypto.hex(assert(crypto.random(16)))
  return "sha256$" .. salt .. "$" .. crypto.hex(crypto.sha256(salt .. secret))
end

function _M.secret_matches(stored, secret)
  local salt, digest = tostring(stored):match("^sha256%$(%x+)%$(%x+)$")
  if not salt then return false end
  return crypto.equal(crypto.hex(crypto.sha256(salt .. secret)), digest)
end

return _M
