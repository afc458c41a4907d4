-- scripts/services/user/accounts.lua: password checks shared by /auth/login and the password
-- grant, and the idempotent bootstrap of the admin (ADMIN_EMAIL/ADMIN_PASSWORD) and of the
-- internal OAuth client (SERVICE_CLIENT_ID/SERVICE_CLIENT_SECRET). Bootstrap runs from
-- jobs.lua at start-up and lazily before the first login or token request that needs it, so
-- neither waits for the other.
local crypto = require "crypto"
local db = require "db"
local host = require "host"
local log = require "log"
local lockout = require "services.user.lockout"
local store = require "services.user.store"
local tokens = require "services.user.tokens"

local _M = {}

-- The scopes of the internal client, and no more: what its one caller, the order service,
-- needs (reserve stock at the product service, payments, the buyer's email). No other service
-- calls another; one that starts to gets a client of its own (least privilege).
_M.SERVICE_SCOPES = "inventory payments users"

local function env(name)
  local v = host.env(name)
  if v == nil or v == "" then return nil end
  return v
end

-- A cache per Lua state: once the rows are known to be there, skip the queries.
local admin_done, client_done = false, false

-- Create the bootstrap admin if absent (an existing account is never overwritten: its
-- password may have been changed since). → true | nil, err, code
function _M.ensure_admin()
  if admin_done then return true end
  local email, password = env("ADMIN_EMAIL"), env("ADMIN_PASSWORD")
  if not email or not password then admin_done = true return true end
  local row, err, code = db.query_one("SELECT id, role FROM users WHERE lower(email) = lower($1)", email)
  if err then return nil, err, code end
  if not row then
    local hash, herr, hcode = crypto.argon2_hash(password)
    if not hash then return nil, herr, hcode end
    local n, ierr, icode = db.exec(
      "INSERT INTO users (id, email, password_hash, name, role) VALUES ($1, $2, $3, 'Administrator', 'admin') " ..
      "ON CONFLICT ((lower(email))) DO NOTHING", crypto.uuid7(), email, hash)
    if ierr then return nil, ierr, icode end
    if n == 1 then log.info("bootstrap admin created", { event = "admin_bootstrap" }) end
  elseif row.role ~= "admin" then
    log.warn("ADMIN_EMAIL names an account that is not an admin; left unchanged", { user_id = row.id })
  end
  admin_done = true
  return true
end

-- Register (or re-key) the internal client from the environment. → true | nil, err, code
function _M.ensure_client()
  if client_done then return true end
  local id, secret = env("SERVICE_CLIENT_ID"), env("SERVICE_CLIENT_SECRET")
  if not id or not secret then client_done = true return true end
  local scopes = env("SERVICE_CLIENT_SCOPES") or _M.SERVICE_SCOPES
  local row, err, code = db.query_one("SELECT secret_hash, scopes, disabled FROM oauth_clients WHERE id = $1", id)
  if err then return nil, err, code end
  if not row or row.scopes ~= scopes or row.disabled or not tokens.secret_matches(row.secret_hash, secret) then
    local _, uerr, ucode = db.exec(
      "INSERT INTO oauth_clients (id, secret_hash, scopes) VALUES ($1, $2, $3) ON CONFLICT (id) DO UPDATE " ..
      "SET secret_hash = EXCLUDED.secret_hash, scopes = EXCLUDED.scopes, disabled = false, updated_at = now()",
      id, tokens.hash_secret(secret), scopes)
    if uerr then return nil, uerr, ucode end
    log.info("internal OAuth client registered", { event = "client_bootstrap", client_id = id })
  end
  client_done = true
  return true
end

function _M.is_admin_email(email)
  local a = env("ADMIN_EMAIL")
  return a ~= nil and a:lower() == tostring(email):lower()
end

function _M.is_service_client(id)
  return env("SERVICE_CLIENT_ID") == id
end

-- Check an email and password with the same work whether the account exists or not, under
-- the lock-out of this client (lockout.client(req, email): its IP and device cookie).
-- → user row | false, reason ("invalid" | "disabled" | "locked"), retry_after | nil, err, code
-- (a dependency failure).
function _M.authenticate(email, password, client)
  if _M.is_admin_email(email) then
    local ok, err, code = _M.ensure_admin()
    if not ok then return nil, err, code end
  end
  local locked, left = lockout.locked(email, client)
  if locked then return false, "locked", left end
  local row, err, code = store.credentials_by_email(email)
  if err then return nil, err, code end
  local ok, verr, vcode
  if row then
    ok, verr, vcode = crypto.argon2_verify(row.password_hash, password)
  else
    ok, verr, vcode = crypto.dummy_verify(password)
  end
  if ok == nil then return nil, verr, vcode end
  if not ok then
    lockout.failed(email, client)
    return false, "invalid"
  end
  lockout.succeeded(email, client)
  if row.disabled then return false, "disabled" end
  return row
end

return _M
