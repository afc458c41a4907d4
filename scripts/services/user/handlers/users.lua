-- scripts/services/user/handlers/users.lua: the caller's profile (/users/me...) and the admin
-- routes (/users, /users/{id}); roles are checked on the routes, in C.
local crypto = require "crypto"
local db = require "db"
local json = require "json"
local limits = require "services.user.limits"
local pagination = require "lib.pagination"
local problem = require "lib.problem"
local S = require "services.user.schema"
local store = require "services.user.store"
local tokens = require "services.user.tokens"
local validate = require "lib.validate"

local _M = {}

-- The caller's user row, or a problem: a token whose account is gone or disabled no longer
-- counts (401), a service token has no profile (404).
local function current(req)
  local sub = req.claims.sub
  if not store.is_uuid(sub) then return nil, problem.not_found("user profile") end
  local row, err, code = store.by_id(sub)
  if err then return nil, problem.from(code, err) end
  if not row or row.disabled then
    return nil, problem.unauthorized("This account no longer exists or is disabled.", "invalid_token")
  end
  return row
end

function _M.me(req)
  local row, status, body, headers = current(req)
  if not row then return status, body, headers end
  return 200, store.public(row)
end

function _M.patch_me(req)
  local doc, status, body, headers = validate.body(req, S.profile_patch)
  if not doc then return status, body, headers end
  local row, pst, pbody, pheaders = current(req)
  if not row then return pst, pbody, pheaders end
  local updated, err, code = store.update(row.id, doc)
  if err then return problem.from(code, err) end
  if not updated then return problem.not_found("user", row.id) end
  return 200, store.public(updated)
end

-- Changes the password after checking the current one, and ends every other session.
function _M.change_password(req)
  local doc, status, body, headers = validate.body(req, S.password_change)
  if not doc then return status, body, headers end
  local sub = req.claims.sub
  if not store.is_uuid(sub) then return problem.not_found("user profile") end
  local cred, err, code = store.credentials_by_id(sub)
  if err then return problem.from(code, err) end
  if not cred or cred.disabled then
    return problem.unauthorized("This account no longer exists or is disabled.", "invalid_token")
  end
  local locked, left = limits.locked(cred.email)
  if locked then return limits.locked_problem(left) end
  local ok, verr, vcode = crypto.argon2_verify(cred.password_hash, doc.current_password)
  if ok == nil then return problem.from(vcode, verr) end
  if not ok then
    limits.failed(cred.email)
    return problem.validation({ { field = "current_password", message = "is not the current password" } })
  end
  limits.succeeded(cred.email)
  local hash, herr, hcode = crypto.argon2_hash(doc.new_password)
  if not hash then return problem.from(hcode, herr) end
  local sid = store.is_uuid(req.claims.sid) and req.claims.sid or nil
  local _, terr, tcode = db.tx(function()
    local _, uerr, ucode = store.update(sub, { password_hash = hash })
    if uerr then return nil, uerr, ucode end
    local _, rerr, rcode = tokens.revoke_user(sub, sid)
    if rerr then return nil, rerr, rcode end
    return true
  end)
  if terr then return problem.from(tcode, terr) end
  return 204
end

-- GET /users?limit=&cursor=&email=&role= (admin). `email` with an @ matches the address
-- exactly (case-insensitively); without one, any address containing it.
function _M.list(req)
  local q = req.query
  local page, status, body, headers = pagination.params(q)
  if not page then return status, body, headers end
  local after = page.after and page.after.id
  if page.after and not store.is_uuid(after) then return pagination.bad_cursor() end
  local email = q.email ~= "" and q.email or nil
  local role = q.role ~= "" and q.role or nil
  if (email and (#email > 254 or not validate.utf8_len(email) or email:find("\0", 1, true)))
    or (role and not (role == "buyer" or role == "seller" or role == "admin")) then
    return problem.bad_request("Invalid filter.", { { field = email and "email" or "role", message = "is invalid" } })
  end
  local rows, err, code = db.query(
    "SELECT " .. store.COLUMNS .. " FROM users WHERE ($1::uuid IS NULL OR id > $1::uuid) " ..
    "AND ($2::text IS NULL OR CASE WHEN strpos($2::text, '@') > 0 THEN lower(email) = lower($2::text) " ..
    "ELSE strpos(lower(email), lower($2::text)) > 0 END) " ..
    "AND ($3::text IS NULL OR role = $3::text) ORDER BY id LIMIT $4",
    after or db.null, email or db.null, role or db.null, page.limit + 1)
  if err then return problem.from(code, err) end
  return 200, pagination.result(rows, page.limit, function(r) return { id = r.id } end, store.public)
end

function _M.show(req)
  local id = req.params.id
  local row, err, code = store.by_id(id)
  if err then return problem.from(code, err) end
  if not row then return problem.not_found("user", id) end
  return 200, store.public(row)
end

-- PATCH /users/{id} {role?, disabled?} (admin). Disabling ends the user's sessions.
function _M.admin_patch(req)
  local doc, status, body, headers = validate.body(req, S.admin_patch)
  if not doc then return status, body, headers end
  local id = req.params.id
  if not store.is_uuid(id) then return problem.not_found("user", id) end
  local row, err, code = db.tx(function()
    local r, uerr, ucode = store.update(id, doc)
    if uerr then return nil, uerr, ucode end
    if r and doc.disabled == true then
      local _, rerr, rcode = tokens.revoke_user(id)
      if rerr then return nil, rerr, rcode end
    end
    return r or json.null
  end)
  if err then return problem.from(code, err) end
  if row == json.null then return problem.not_found("user", id) end
  return 200, store.public(row)
end

return _M
