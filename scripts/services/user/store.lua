-- scripts/services/user/store.lua: the users table. Returns rows or `nil, err, code` from db;
-- a user that does not exist is a bare nil (STYLE 12).
local db = require "db"
local json = require "json"
local revocations = require "services.user.revocations"

local _M = {}

local COLUMNS = "id, email, name, role, phone, address, disabled, created_at, updated_at"
_M.COLUMNS = COLUMNS

_M.is_uuid = require("lib.uuid").valid

-- The public form of a user row: never a password hash.
function _M.public(row)
  return {
    id = row.id, email = row.email, name = row.name, role = row.role,
    phone = row.phone == nil and json.null or row.phone,
    address = row.address == nil and json.null or row.address,
    disabled = row.disabled, created_at = row.created_at, updated_at = row.updated_at,
  }
end

function _M.by_id(id)
  if not _M.is_uuid(id) then return nil end
  return db.query_one("SELECT " .. COLUMNS .. " FROM users WHERE id = $1", id)
end

-- With the password hash, for credential checks (and the revocation record, for new tokens).
local CREDENTIALS = "SELECT id, email, role, disabled, password_hash, " .. revocations.columns() .. " FROM users "

function _M.credentials_by_email(email)
  return db.query_one(CREDENTIALS .. "WHERE lower(email) = lower($1)", email)
end

function _M.credentials_by_id(id)
  return db.query_one(CREDENTIALS .. "WHERE id = $1", id)
end

-- Insert a user; a taken email comes back as nil, err, "conflict".
function _M.create(u)
  return db.query_one(
    "INSERT INTO users (id, email, password_hash, name, role) VALUES ($1, $2, $3, $4, $5) RETURNING " .. COLUMNS,
    u.id, u.email, u.password_hash, u.name, u.role)
end

-- Set the given columns (names come from a schema, never from the client); returns the row.
function _M.update(id, fields)
  local sets, args = {}, { id }
  for _, col in ipairs({ "name", "phone", "address", "role", "disabled", "password_hash" }) do
    local v = fields[col]
    if v ~= nil then
      args[#args + 1] = v
      sets[#sets + 1] = col .. " = $" .. #args
    end
  end
  if #sets == 0 then return _M.by_id(id) end
  sets[#sets + 1] = "updated_at = now()"
  return db.query_one("UPDATE users SET " .. table.concat(sets, ", ") .. " WHERE id = $1 RETURNING " .. COLUMNS,
    unpack(args))
end

return _M
