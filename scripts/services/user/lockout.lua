-- scripts/services/user/lockout.lua: the failed-login lock-out (issue 18). A wrong password is
-- counted against whoever could be guessing, never against the account alone, so that nobody
-- can keep an owner locked out by failing on purpose:
--
--   a stranger (no valid device cookie for the account)
--     per (account, client IP)   5 failures within 15 min → locked, 2^(n-5) s, at most 15 min
--     per client IP (any account) LOGIN_IP_FAILURES (default 20) failures → the same back-off
--   a known device (services.user.device: the owner logged in from it before)
--     per device cookie          5 failures → the same back-off, for that cookie only; the
--                                two stranger locks above do not apply to it
--
-- While locked, the answer is 429 with Retry-After even for the right password (otherwise the
-- lock would still let a guesser learn the password), and the lock is checked before the
-- account is looked up: a lock, its answer and its timing are the same whether the address
-- exists or not. A successful login clears its (account, IP) or device count. Keys hold hashes
-- (no address or IP in Redis key names). Redis down: no lock-out (logged); the per-IP rate
-- limit (RATE_LIMIT_AUTH) and the argon2 gate still bound the guessing rate.
--
--   local client = lockout.client(req, email)          -- { ip, device? }
--   local locked, retry_after = lockout.locked(email, client)
--   lockout.failed(email, client); lockout.succeeded(email, client)
local cache = require "cache"
local crypto = require "crypto"
local host = require "host"
local log = require "log"
local device = require "services.user.device"
local limits = require "services.user.limits"
local problem = require "lib.problem"

local _M = {}

_M.AFTER = 5           -- failures of one account from one IP, or of one device, before a lock
_M.WINDOW = 900        -- seconds a failure is remembered (longer while locked)
_M.MAX = 900           -- the longest single lock

local function ip_after()
  local n = tonumber(host.env("LOGIN_IP_FAILURES") or "")
  return n and n >= 1 and math.floor(n) or 20
end

local function h(s) return crypto.hex(crypto.sha256(s)) end

-- The Redis keys that speak for this attempt, and the failures each allows.
local function keys(email, client)
  if client.device then return { "lockout:dev:" .. client.device.id }, { _M.AFTER } end
  local account = tostring(email):lower()
  return { "lockout:acct-ip:" .. h(account .. "\0" .. client.ip), "lockout:ip:" .. h(client.ip) }, { _M.AFTER, ip_after() }
end

-- Who is trying: the client IP (the host's TRUSTED_PROXIES rule) and the device cookie, if it
-- is a valid one for this account.
function _M.client(req, email)
  return { ip = limits.client_ip(req), device = device.of(req, email) }
end

-- KEYS: the counters; ARGV[1] now. The longest lock still running, in seconds (0: none).
local CHECK = [[
local now, left = tonumber(ARGV[1]), 0
for i = 1, #KEYS do
  local u = tonumber(redis.call('HGET', KEYS[i], 'until') or '0')
  if u - now > left then left = u - now end
end
return tostring(left)
]]

-- KEYS: the counters; ARGV: now, cap, window, then each key's threshold. Counts one failure
-- on each; returns the longest lock this failure started (seconds, 0 for none).
local FAIL = [[
local now, cap, window, longest = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), 0
for i = 1, #KEYS do
  local n, after, wait = redis.call('HINCRBY', KEYS[i], 'n', 1), tonumber(ARGV[3 + i]), 0
  if n >= after then
    wait = math.min(2 ^ (n - after), cap)
    local u = tonumber(redis.call('HGET', KEYS[i], 'until') or '0')
    if now + wait > u then redis.call('HSET', KEYS[i], 'until', tostring(now + wait)) end
    if wait > longest then longest = wait end
  end
  redis.call('EXPIRE', KEYS[i], window + math.ceil(wait))
end
return tostring(longest)
]]

-- Whether this client may not try this account now; and the seconds left.
function _M.locked(email, client)
  local ks = keys(email, client)
  local left, err = cache.eval(CHECK, ks, { tostring(host.now()) })
  if err then
    log.warn("lock-out store unavailable; allowing the attempt", { error = tostring(err) })
    return false
  end
  left = tonumber(left) or 0
  if left > 0 then return true, left end
  return false
end

-- Count a failed attempt; returns the lock it started (seconds, 0 for none).
function _M.failed(email, client)
  local ks, after = keys(email, client)
  local argv = { tostring(host.now()), _M.MAX, _M.WINDOW }
  for _, a in ipairs(after) do argv[#argv + 1] = a end
  local wait, err = cache.eval(FAIL, ks, argv)
  if err then log.warn("lock-out store unavailable", { error = tostring(err) }) return 0 end
  wait = tonumber(wait) or 0
  if wait > 0 then
    log.warn("failed logins: a client is locked out", { event = "login_lockout", seconds = wait,
      known_device = client.device ~= nil })
  end
  return wait
end

-- The right password got through: forget this client's failures on the account (not the
-- IP's failures on other accounts).
function _M.succeeded(email, client)
  cache.call("DEL", keys(email, client)[1])
end

-- The 429 of a lock. Its RateLimit-* headers are the lock-out's own policy (5 failed attempts,
-- none left, back after Retry-After), so the host does not add the per-IP limit's.
function _M.locked_problem(retry_after)
  local wait = tostring(math.max(1, math.ceil(retry_after)))
  return problem.new(429, "Too many failed attempts; retry later.", nil, {
    ["Retry-After"] = wait,
    ["RateLimit-Limit"] = tostring(_M.AFTER),
    ["RateLimit-Remaining"] = "0",
    ["RateLimit-Reset"] = wait,
  })
end

return _M
