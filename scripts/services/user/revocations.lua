-- scripts/services/user/revocations.lua: the token revocation records every service's host
-- checks with each bearer token (host/revocation.c): Redis key "auth:revocation:<user id>" =
-- "<revoked_s> <role_s> <role>" — tokens issued (iat) before revoked_s are refused, tokens
-- issued before role_s carry `role`. The users row is the truth (tokens_revoked_at,
-- role_changed_at, plus CLOCK_MARGIN, rounded up to whole seconds); Redis holds a copy for TTL seconds (an access
-- token lives 900 s, plus the hosts' 60 s clock skew: after that every older token is dead
-- anyway), written right after each change and written again by the `publish-revocations` job
-- every couple of seconds, so that a failed write or a Redis restart is repaired within seconds.
local cache = require "cache"
local db = require "db"
local log = require "log"

local _M = {}

_M.TTL = 960
_M.PREFIX = "auth:revocation:"

-- Seconds added to both times: the database's clock and the clock of the user service that
-- dates tokens (iat) may differ by this much, and a token issued just before a revocation must
-- not pass for one issued after. Fresh tokens are dated after revoked_s anyway (min_iat).
_M.CLOCK_MARGIN = 2

-- The record's columns in a users query (`u` names the users table, or nil).
function _M.columns(u)
  local p = u and (u .. ".") or ""
  return ("ceil(extract(epoch FROM %stokens_revoked_at) + %d)::bigint AS revoked_s, " ..
    "ceil(extract(epoch FROM %srole_changed_at) + %d)::bigint AS role_s"):format(p, _M.CLOCK_MARGIN, p, _M.CLOCK_MARGIN)
end

function _M.value(row)
  return ("%d %d %s"):format(tonumber(row.revoked_s) or 0, tonumber(row.role_s) or 0, row.role or "-")
end

-- Write one user's record (row: id, role, revoked_s, role_s). → true | nil, err, code
function _M.publish(row)
  local ok, err, code = cache.call("SET", _M.PREFIX .. row.id, _M.value(row), "EX", tostring(_M.TTL))
  if not ok then
    log.warn("token revocation record not written; the publish job retries",
      { user_id = row.id, error = tostring(err), code = code })
    return nil, err, code
  end
  return true
end

-- The job: write again every record that still matters (changed within TTL seconds).
function _M.publish_recent()
  local rows, err = db.query("SELECT id, role, " .. _M.columns() .. " FROM users " ..
    "WHERE greatest(tokens_revoked_at, role_changed_at) > now() - make_interval(secs => $1) " ..
    "AND (tokens_revoked_at IS NOT NULL OR role_changed_at IS NOT NULL)", _M.TTL)
  if err then log.warn("token revocation records not re-published", { error = tostring(err) }) return end
  for _, row in ipairs(rows) do
    if not _M.publish(row) then return end
  end
end

-- The earliest iat a fresh token for row may carry: never before its revocation (rounded up
-- to a whole second), or the token would be refused at once.
function _M.min_iat(row)
  return tonumber(row and row.revoked_s) or 0
end

return _M
