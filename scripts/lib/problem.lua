-- scripts/lib/problem.lua: RFC 9457 problem details (CONTRACT §3), returned as a handler's
-- `status, body, headers`:
--
--   if not row then return problem.not_found("user", id) end
--   if err then return problem.from(code, err) end          -- 503/504/409/422/404, logged
--   return problem.validation(errors)                        -- 422 with errors[]
--
-- Bodies never carry SQL, stack traces or the binding's message: `from` logs the message and
-- answers a fixed text.
local json = require "json"
local log = require "log"

local to_utf8 = json.to_utf8

local _M = {}

local CTYPE = "application/problem+json"

local titles = {
  [400] = "Bad Request", [401] = "Unauthorized", [403] = "Forbidden", [404] = "Not Found",
  [405] = "Method Not Allowed", [409] = "Conflict", [412] = "Precondition Failed",
  [413] = "Content Too Large", [415] = "Unsupported Media Type", [422] = "Unprocessable Content",
  [428] = "Precondition Required", [429] = "Too Many Requests", [500] = "Internal Server Error",
  [503] = "Service Unavailable", [504] = "Gateway Timeout",
}
_M.titles = titles

-- A copy of v whose strings (keys too) are UTF-8: a detail or an errors[] entry may quote what
-- a client sent (a field name, an id), and the body must always encode.
local function clean(v, depth)
  local t = type(v)
  if t == "string" then return to_utf8(v) end
  if t ~= "table" or depth > 8 then return v end
  local out = setmetatable({}, getmetatable(v))   -- keeps json.array marks
  for k, x in pairs(v) do out[type(k) == "string" and to_utf8(k) or k] = clean(x, depth + 1) end
  return out
end

-- problem.new(status, detail[, extra[, headers]]) → status, body, headers. `extra` members are
-- copied into the body (errors, type, title, RFC 9457 extension members).
function _M.new(status, detail, extra, headers)
  local body = { type = "about:blank", title = titles[status] or "Error", status = status, detail = clean(detail, 0) }
  if extra then for k, v in pairs(extra) do body[type(k) == "string" and to_utf8(k) or k] = clean(v, 0) end end
  local h = { ["Content-Type"] = CTYPE }
  if headers then for k, v in pairs(headers) do h[k] = v end end
  return status, body, h
end

-- 400: malformed JSON, a body that is not an object, unknown or forbidden fields.
function _M.bad_request(detail, errors)
  return _M.new(400, detail, errors and { errors = errors } or nil)
end

-- 422: a well-formed document failing validation; errors = { { field =, message = }, ... }.
function _M.validation(errors, detail)
  return _M.new(422, detail or "The request body failed validation.", { errors = errors })
end

-- 401 with WWW-Authenticate (RFC 6750 §3).
function _M.unauthorized(detail, error_code)
  local www = "Bearer"
  if error_code then www = ('Bearer error="%s"'):format(error_code) end
  return _M.new(401, detail or "A valid bearer token is required.", nil, { ["WWW-Authenticate"] = www })
end

function _M.forbidden(detail) return _M.new(403, detail or "You are not allowed to do this.") end

function _M.not_found(what, id)
  local detail = what and (("No %s with id %s."):format(what, tostring(id))) or "Not found."
  if what and id == nil then detail = ("No such %s."):format(what) end
  return _M.new(404, detail)
end

function _M.conflict(detail) return _M.new(409, detail) end

function _M.unsupported_media_type(expected)
  return _M.new(415, "Content-Type must be " .. expected .. ".")
end

-- 429 with Retry-After (seconds) and any RateLimit-* headers given.
function _M.too_many(retry_after, headers)
  local h = { ["Retry-After"] = tostring(math.max(1, math.ceil(retry_after or 1))) }
  if headers then for k, v in pairs(headers) do h[k] = v end end
  return _M.new(429, "Too many requests; retry later.", nil, h)
end

local by_code = {
  unavailable = { 503, "A dependency is unavailable; retry shortly." },
  timeout = { 504, "A dependency did not answer in time." },
  conflict = { 409, "The request conflicts with the current state; retry." },
  invalid = { 422, "The request could not be processed with these values." },
  not_found = { 404, "Not found." },
}

-- problem.from(code, err) → the problem for a binding's `nil, err, code`. The message is
-- logged (it may name tables or hosts), never sent.
function _M.from(code, err)
  local m = by_code[code] or by_code.unavailable
  if m[1] >= 500 then
    log.warn("dependency failure", { code = tostring(code), error = tostring(err) })
  else
    log.info("request refused by a dependency", { code = tostring(code), error = tostring(err) })
  end
  local headers = m[1] == 503 and { ["Retry-After"] = "5" } or nil
  return _M.new(m[1], m[2], nil, headers)
end

return _M
