-- scripts/lib/events.lua: the event envelope of CONTRACT §7 — built by lib.outbox, read by
-- lib.consumer.
--
--   { id = uuid v7, type = "order.created", version = 1, occurred_at = "2026-11-24T16:00:00.123Z",
--     source = "order", correlation_id = uuid, traceparent = "00-<trace>-<span>-01", data = {...} }
--
-- The type is also the routing key and the AMQP `type`; the id is the AMQP `message_id`.
-- `events.context` is the event a consumer is handling right now (set by lib.consumer), so an
-- outbox.add inside a handler carries its correlation_id and trace on without being told.
local crypto = require "crypto"
local host = require "host"
local json = require "json"

local floor, format, type, tonumber = math.floor, string.format, type, tonumber

local _M = { VERSION = 1 }

-- The event being handled by this Lua state's consumer (a cache of one call, never the truth).
_M.context = nil

-- Routing-key-safe: dot-separated words of letters, digits, '_' and '-' (no AMQP wildcards).
local TYPE = "^[%w_%-]+%.[%w_%-%.]*[%w_%-]$"
local TRACEPARENT = "^00%-(%x+)%-(%x+)%-%x%x$"

_M.valid_uuid = require("lib.uuid").valid

function _M.valid_type(s) return type(s) == "string" and #s <= 255 and s:match(TYPE) ~= nil and not s:find("..", 1, true) end

-- A version-00 traceparent with a 32-digit trace id and a 16-digit parent id, not all zeros.
function _M.valid_traceparent(s)
  if type(s) ~= "string" or #s ~= 55 then return false end
  local trace, span = s:match(TRACEPARENT)
  return trace ~= nil and #trace == 32 and #span == 16 and trace:find("[^0]") ~= nil and span:find("[^0]") ~= nil
end

-- A fresh span under trace (32 hex digits), or a fresh trace when trace is nil.
function _M.traceparent(trace)
  local bytes = assert(crypto.random(trace and 8 or 24))
  local hex = crypto.hex(bytes)
  if trace then return format("00-%s-%s-01", trace, hex) end
  return format("00-%s-%s-01", hex:sub(1, 32), hex:sub(33, 48))
end

-- seconds since the epoch (a number) → "2026-11-24T16:00:00.123Z"
function _M.rfc3339(t)
  local s = floor(t)
  local ms = floor((t - s) * 1000 + 0.5)
  if ms >= 1000 then s, ms = s + 1, ms - 1000 end
  return os.date("!%Y-%m-%dT%H:%M:%S", s) .. format(".%03dZ", ms)
end

-- Days from 1970-01-01 to y-m-d (proleptic Gregorian; H. Hinnant's days_from_civil).
local function days_from_civil(y, m, d)
  if m <= 2 then y = y - 1 end
  local era = floor(y / 400)
  local yoe = y - era * 400
  local mp = (m + 9) % 12
  local doy = floor((153 * mp + 2) / 5) + d - 1
  local doe = yoe * 365 + floor(yoe / 4) - floor(yoe / 100) + doy
  return era * 146097 + doe - 719468
end

-- "2026-11-24T16:00:00.123Z" / "...+02:00" → seconds since the epoch, or nil.
function _M.parse_time(s)
  if type(s) ~= "string" then return nil end
  local y, mo, d, h, mi, sec, rest = s:match("^(%d%d%d%d)%-(%d%d)%-(%d%d)[Tt ](%d%d):(%d%d):(%d%d)(.*)$")
  if not y then return nil end
  local frac, zone = rest:match("^(%.%d+)(.*)$")
  zone = zone or rest
  local t = days_from_civil(tonumber(y), tonumber(mo), tonumber(d)) * 86400 + tonumber(h) * 3600
    + tonumber(mi) * 60 + tonumber(sec) + (frac and tonumber(frac) or 0)
  if zone == "Z" or zone == "z" then return t end
  local sign, zh, zm = zone:match("^([%+%-])(%d%d):(%d%d)$")
  if not sign then return nil end
  local off = tonumber(zh) * 3600 + tonumber(zm) * 60
  return sign == "+" and t - off or t + off
end

-- The traceparent of the request this thread serves, if it sent a valid one (nil elsewhere).
local function request_traceparent()
  local ok, creq = pcall(require, "mercato.request")
  if not ok then return nil end
  local got, v = pcall(creq.header, "traceparent")
  if got and _M.valid_traceparent(v) then return v end
  return nil
end

-- The envelope for a new event. opts: correlation_id, traceparent, occurred_at (seconds),
-- id (tests). Correlation and trace default to the event being handled, then to the
-- request's traceparent (a new span of its trace), then to fresh ones. Raises on misuse.
function _M.envelope(etype, data, opts)
  if not _M.valid_type(etype) then
    error("events: type must look like 'order.created' (a routing key without wildcards), got " .. tostring(etype), 3)
  end
  if type(data) ~= "table" then error("events: data must be a table, got " .. type(data), 3) end
  opts = opts or {}
  local ctx = _M.context
  local tp = opts.traceparent
  if tp ~= nil and not _M.valid_traceparent(tp) then error("events: opts.traceparent is not a version-00 traceparent", 3) end
  if not tp and ctx and _M.valid_traceparent(ctx.traceparent) then
    tp = _M.traceparent(ctx.traceparent:sub(4, 35))
  end
  if not tp then
    local parent = request_traceparent()
    tp = parent and _M.traceparent(parent:sub(4, 35)) or _M.traceparent()
  end
  local cid = opts.correlation_id or (ctx and ctx.correlation_id) or crypto.uuid7()
  if type(cid) ~= "string" or #cid == 0 or #cid > 255 then error("events: correlation_id must be a short string", 3) end
  return {
    id = opts.id or crypto.uuid7(),
    type = etype,
    version = _M.VERSION,
    occurred_at = _M.rfc3339(opts.occurred_at or host.now()),
    source = host.service ~= "" and host.service or "unknown",
    correlation_id = cid,
    traceparent = tp,
    data = data,
  }
end

function _M.encode(envelope) return json.encode(envelope) end

-- body (a message's bytes) → the envelope, or nil and why it is not one.
function _M.decode(body)
  local ev, err = json.decode(body)
  if err then return nil, "body is not JSON: " .. err end
  if type(ev) ~= "table" then return nil, "body is not a JSON object" end
  if not _M.valid_uuid(ev.id) then return nil, "envelope id is not a UUID" end
  if not _M.valid_type(ev.type) then return nil, "envelope type is missing or malformed" end
  if type(ev.version) ~= "number" then return nil, "envelope version is not a number" end
  if not _M.parse_time(ev.occurred_at) then return nil, "envelope occurred_at is not an RFC 3339 time" end
  if type(ev.data) ~= "table" then return nil, "envelope data is not an object" end
  return ev
end

return _M
