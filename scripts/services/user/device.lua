-- scripts/services/user/device.lua: the `mercato_device` cookie — proof that this client has
-- logged in to an account before, so that the failed-login lock-out of strangers never locks
-- the owner out of their own device (OWASP "device cookies"; services.user.lockout).
--
--   local dev = device.of(req, email)     -- { id = "<nonce>" } for a valid cookie of email, else nil
--   headers["Set-Cookie"] = device.issue(email)   -- on a successful login
--
-- Value: "<account tag>.<nonce>.<expiry>.<mac>": the tag is 32 hex digits of SHA-256(lower-case
-- email), so that a cookie names one account without carrying its address; the MAC is
-- HMAC-SHA-256 (base64url) under DEVICE_COOKIE_SECRET, or, unset, a key derived from the user
-- service's JWT private key (stable across restarts and replicas that share the key), or else a
-- random per-process key. A cookie is issued only after the right password, so it reveals
-- nothing about which addresses exist.
local crypto = require "crypto"
local host = require "host"
local log = require "log"

local _M = {}

_M.NAME = "mercato_device"
_M.TTL = 180 * 24 * 3600

local secret

local function key()
  if secret then return secret end
  local configured = host.env("DEVICE_COOKIE_SECRET")
  if configured and configured ~= "" then
    secret = crypto.sha256("mercato_device\0" .. configured)
    return secret
  end
  local path = host.env("JWT_PRIVATE_KEY_FILE")
  local f = path and path ~= "" and io.open(path, "rb")
  if f then
    secret = crypto.sha256("mercato_device\0" .. f:read("*a"))
    f:close()
  else
    log.warn("DEVICE_COOKIE_SECRET and JWT_PRIVATE_KEY_FILE unset: device cookies last until this process ends")
    secret = assert(crypto.random(32))
  end
  return secret
end

local function tag(email) return crypto.hex(crypto.sha256(tostring(email):lower())):sub(1, 32) end

local function mac(body) return crypto.base64url_encode(crypto.hmac_sha256(key(), body)) end

-- The Set-Cookie header value of a fresh device cookie for email.
function _M.issue(email)
  local body = ("%s.%s.%d"):format(tag(email), crypto.hex(assert(crypto.random(16))), os.time() + _M.TTL)
  return ("%s=%s.%s; Path=/; Max-Age=%d; HttpOnly; Secure; SameSite=Strict"):format(_M.NAME, body, mac(body), _M.TTL)
end

-- The value of the request's mercato_device cookie, or nil.
local function cookie(req)
  local h = req:header("Cookie")
  if not h or #h > 8192 then return nil end
  for name, value in h:gmatch("([^=;%s]+)=([^;]*)") do
    if name == _M.NAME then return (value:gsub("^%s+", ""):gsub("%s+$", "")) end
  end
  return nil
end

-- The device of a valid, unexpired cookie issued for email: { id = nonce }; else nil.
function _M.of(req, email)
  local v = cookie(req)
  if not v or #v > 200 then return nil end
  local t, nonce, exp, m = v:match("^(%x+)%.(%x+)%.(%d+)%.([%w_-]+)$")
  if not t or #nonce ~= 32 then return nil end
  if not crypto.equal(m, mac(("%s.%s.%s"):format(t, nonce, exp))) then return nil end
  if tonumber(exp) <= os.time() or t ~= tag(email) then return nil end
  return { id = nonce }
end

return _M
