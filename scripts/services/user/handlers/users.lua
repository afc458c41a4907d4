-- scripts/services/user/handlers/users.lua: the caller's profile (/users/me...) and the admin
-- routes (/users, /users/{id}); roles are checked on the routes, in C.
local crypto = require "crypto"
local db = require "db"
local json = require "json"
local lockout = require "services.user.lockout"
local pagination = require "lib.pagination"
local problem = require "lib.problem"
local revocations = require "services.user.revocations"
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
  local client = lockout.client(req, cred.email)
  local locked, left = lockout.locked(cred.email, client)
  if locked then return lockout.locked_problem(left) end
  local ok, verr, vcode = crypto.argon2_verify(cred.password_hash, doc.current_password)
  if ok == nil then return problem.from(vcode, verr) end
  if not ok then
    lockout.failed(cred.email, client)
    return problem.validation({ { field = "current_password", message = "is not the current password" } })
  end
  lockout.succeeded(cred.email, client)
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

-- PATCH /users/{id} {role?, disabled?} (admin). Disabling ends the user's sessions and, on
-- every service within a couple of seconds, their access tokens; a role change reaches their
-- tokens the same way (services.user.revocations). The last active admin can be neither
-- demoted nor disabled (409): changes that take an admin away are serialised by a transaction
-- lock, so two admins demoting each other at once leave one.
local LAST_ADMIN = {}

local function admin_update(id, doc)
  local old, oerr, ocode = db.query_one("SELECT role, disabled FROM users WHERE id = $1 FOR UPDATE", id)
  if oerr then return nil, oerr, ocode end
  if not old then return json.null end
  local removes_admin = old.role == "admin" and not old.disabled
    and ((doc.role ~= nil and doc.role ~= "admin") or doc.disabled == true)
  if removes_admin then
    local _, lerr, lcode = db.query_one("SELECT pg_advisory_xact_lock(hashtext('mercato.users.active_admins'))")
    if lerr then return nil, lerr, lcode end
    -- A statement after the lock: it sees every admin change committed before it was taken.
    local n, cerr, ccode = db.query_one(
      "SELECT count(*)::int AS n FROM users WHERE role = 'admin' AND NOT disabled AND id <> $1", id)
    if cerr then return nil, cerr, ccode end
    if n.n == 0 then return LAST_ADMIN end
  end
  local r, uerr, ucode = store.update(id, doc)
  if uerr then return nil, uerr, ucode end
  local role_changed = doc.role ~= nil and doc.role ~= old.role
  local revoked = doc.disabled == true and not old.disabled
  if not role_changed and not revoked then return r end
  local rec, rerr, rcode = db.query_one(
    "UPDATE users SET role_changed_at = CASE WHEN $2::boolean THEN now() ELSE role_changed_at END, " ..
    "tokens_revoked_at = CASE WHEN $3::boolean THEN now() ELSE tokens_revoked_at END WHERE id = $1 " ..
    "RETURNING id, role, " .. revocations.columns(), id, role_changed, revoked)
  if rerr then return nil, rerr, rcode end
  if revoked then
    local _, terr, tcode = tokens.revoke_user(id)
    if terr then return nil, terr, tcode end
  end
  return r, rec
end

function _M.admin_patch(req)
  local doc, status, body, headers = validate.body(req, S.admin_patch)
  if not doc then return status, body, headers end
  local id = req.params.id
  if not store.is_uuid(id) then return problem.not_found("user", id) end
  local row, rec_or_err, code = db.tx(admin_update, id, doc)
  if code then return problem.from(code, rec_or_err) end
  if row == json.null then return problem.not_found("user", id) end
  if row == LAST_ADMIN then
    return problem.conflict("This is the last active admin: promote another user to admin first.")
  end
  if rec_or_err then revocations.publish(rec_or_err) end   -- committed; the job repairs a failed write
  return 200, store.public(row)
end

return _M
