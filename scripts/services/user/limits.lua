-- scripts/services/user/limits.lua: rate limits of the auth endpoints, behind one small module
-- so that handlers do not care whether the host's `ratelimit` binding is there.
--
--   routes.lua:  { "POST", "/auth/login", h, rate_limit = limits.route_option() }
--   handler:     local st, body, headers = limits.ip(req, { route = true })  -- nil: go on; else 429
-- (The failed-login lock-out is services.user.lockout.)
--
-- Per IP: RATE_LIMIT_AUTH ("10/min" by default) over /auth/* and /oauth/token, one bucket
-- "auth" per client IP. With the host's `ratelimit` binding, /auth/* are limited in C by the
-- route option and /oauth/token in its handler by ratelimit.check — password and
-- refresh_token grants, and failed client authentications, but not the internal client's
-- successful client_credentials requests (every service on a host shares one IP and asks for
-- tokens at start-up and on every reload). Without the binding the same rules run here, on a
-- fixed window in Redis. The client IP is the host's (TRUSTED_PROXIES) when it has one, else
-- the peer, or the last X-Forwarded-For entry when the peer is loopback or private.
-- Redis down: the limits fail open (logged; the binding falls back to an in-process table) —
-- an outage of the limiter must not lock every user out; the argon2 gate still bounds the
-- cost of each attempt.
local cache = require "cache"
local host = require "host"
local log = require "log"
local problem = require "lib.problem"

local has_rl, ratelimit = pcall(require, "ratelimit")
if not has_rl then ratelimit = nil end

local _M = {}

local NAME = "auth"

local units = { s = 1, sec = 1, second = 1, m = 60, min = 60, minute = 60, h = 3600, hour = 3600 }

-- "10/min" → 10, 60; nil for anything else.
function _M.parse(spec)
  local n, unit = tostring(spec or ""):match("^%s*(%d+)%s*/%s*(%a+)%s*$")
  n = tonumber(n)
  if not n or n < 1 or not units[unit] then return nil end
  return n, units[unit]
end

-- The configured limit as a string ("10/min"), falling back to the default when unparsable.
function _M.spec()
  local spec = host.env("RATE_LIMIT_AUTH")
  if spec == nil or spec == "" then return "10/min" end
  if not _M.parse(spec) then
    log.warn("RATE_LIMIT_AUTH is not N/s, N/min or N/hour; using 10/min", { value = tostring(spec) })
    return "10/min"
  end
  return spec
end

-- The `rate_limit` route option, when the host enforces it (else nil: the handler does).
function _M.route_option()
  if not ratelimit then return nil end
  return { name = NAME, limit = _M.spec(), key = "ip" }
end

local function trusted_peer(ip)
  return ip == "127.0.0.1" or ip == "::1" or ip:find("^10%.") or ip:find("^192%.168%.")
    or ip:find("^172%.1[6-9]%.") or ip:find("^172%.2%d%.") or ip:find("^172%.3[01]%.")
    or ip:find("^::ffff:127%.") or ip:find("^f[cd]")
end

function _M.client_ip(req)
  local ok, host_ip = pcall(function() return req.client_ip end)
  if ok and type(host_ip) == "string" and host_ip ~= "" then return host_ip end
  local ip = req.remote_addr or "unknown"
  if trusted_peer(ip) then
    local xff = req:header("X-Forwarded-For")
    local last = xff and xff:match("([^,%s]+)%s*$")
    if last and #last <= 64 then ip = last end
  end
  return ip
end

local WINDOW = [[
local n = redis.call('INCR', KEYS[1])
if n == 1 then redis.call('EXPIRE', KEYS[1], ARGV[1]) end
local ttl = redis.call('TTL', KEYS[1])
return { n, ttl }
]]

local function too_many(limit, reset)
  return problem.too_many(reset, {
    ["RateLimit-Limit"] = tostring(limit), ["RateLimit-Remaining"] = "0", ["RateLimit-Reset"] = tostring(reset),
  })
end

-- Count one request of the client's IP; nil when allowed, else a 429 triple. opts.route: the
-- route declares limits.route_option(), so with the binding the host has counted it already;
-- opts.limit: another limit than RATE_LIMIT_AUTH (specs).
function _M.ip(req, opts)
  local spec = opts and opts.limit or _M.spec()
  if ratelimit then
    if opts and opts.route then return nil end
    local ok, info = ratelimit.check(NAME, _M.client_ip(req), spec)
    if ok then return nil end
    local h = ratelimit.headers(info)
    return problem.new(429, "Too many requests; retry later.", nil, h)
  end
  local limit, per = _M.parse(spec)
  local window = math.floor(host.now() / per)
  local key = ("rl:%s:%s:%d"):format(NAME, _M.client_ip(req), window)
  local r, err = cache.eval(WINDOW, { key }, { per })
  if not r then
    log.warn("rate limiter unavailable; allowing the request", { error = tostring(err), limit = NAME })
    return nil
  end
  local count, reset = tonumber(r[1]) or 0, tonumber(r[2]) or per
  if reset < 0 then reset = per end
  if count > limit then return too_many(limit, reset) end
  return nil
end

return _M
