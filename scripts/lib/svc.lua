-- scripts/lib/svc.lua: calls to another mercato service with a service token (ARCHITECTURE.md,
-- "Service-to-service").
--
--   local svc = require "lib.svc"
--   local res, err, code = svc.call("product", "POST", "/internal/reservations", body, opts)
--   if err then return problem.from(code, err) end   -- "unavailable" | "timeout" | "invalid"
--   if res.status == 409 then ... res.body.insufficient ... end
--
-- The base URL comes from <NAME>_SERVICE_URL. The token is a client_credentials grant from
-- the user service (POST <USER_SERVICE_URL>/oauth/token with SERVICE_CLIENT_ID and
-- SERVICE_CLIENT_SECRET), cached per scope in this Lua state until 30 s before it expires:
-- a hot reload or another worker thread simply fetches its own.
--
-- Results: any answer of the service is `res` = { status, headers, body, raw } (body decoded
-- when the answer is JSON, else the raw string) — a 404 or 409 is for the caller to read —
-- except 502/503 (nil, err, "unavailable", res) and 504 (nil, err, "timeout", res), which say
-- the service could not do the work. Transport failures are nil, err, code from `http`.
-- A 401 is retried once with a fresh token. An "unavailable" call is retried once only for
-- idempotent methods (GET, HEAD, PUT, DELETE), never for POST or PATCH.
--
-- opts: scope (default per service, see default_scope), headers, timeout_ms,
-- connect_timeout_ms, auth = false (no token: public endpoints).
local http = require "http"
local host = require "host"
local cjson = require "cjson.safe"

local _M = {}

local EXPIRY_MARGIN = 30          -- seconds: a token this close to expiry is fetched anew
local DEFAULT_EXPIRES_IN = 300    -- when the token response has no expires_in

-- The scope each service's internal endpoints require (CONTRACT.md §6).
local default_scope = { product = "inventory", payment = "payments", user = "users" }

local idempotent = { GET = true, HEAD = true, PUT = true, DELETE = true, OPTIONS = true }

-- scope ("" for none) → { token = "...", expires_at = seconds }. A cache, never the truth.
local tokens = {}

local function env_name(service)
  return service:upper() .. "_SERVICE_URL"
end

local function base_url(service)
  local name = env_name(service)
  local url = host.env(name)
  if not url or url == "" then return nil, name .. " is not set" end
  return (url:gsub("/+$", ""))
end

local function unavailable_status(status)
  if status == 502 or status == 503 then return "unavailable" end
  if status == 504 then return "timeout" end
  return nil
end

-- Fetch a token for scope from the user service (no cache).
local function fetch_token(scope, opts)
  local base, err = base_url("user")
  if not base then return nil, err, "unavailable" end
  local id, secret = host.env("SERVICE_CLIENT_ID"), host.env("SERVICE_CLIENT_SECRET")
  if not id or id == "" or not secret or secret == "" then
    return nil, "SERVICE_CLIENT_ID and SERVICE_CLIENT_SECRET must be set for service calls", "unavailable"
  end
  local form = { grant_type = "client_credentials", client_id = id, client_secret = secret }
  if scope ~= "" then form.scope = scope end
  local res, herr, code = http.post_form(base .. "/oauth/token", form, {
    timeout_ms = opts.timeout_ms, connect_timeout_ms = opts.connect_timeout_ms,
    headers = { Accept = "application/json" },
  })
  if not res then return nil, "token request failed: " .. herr, code end
  local doc = cjson.decode(res.body)
  if res.status ~= 200 then
    local why = type(doc) == "table" and doc.error or ("status " .. res.status)
    return nil, "token request refused: " .. tostring(why), unavailable_status(res.status) or "unavailable"
  end
  if type(doc) ~= "table" or type(doc.access_token) ~= "string" or doc.access_token == "" then
    return nil, "token response has no access_token", "unavailable"
  end
  local expires_in = tonumber(doc.expires_in) or DEFAULT_EXPIRES_IN
  return { token = doc.access_token, expires_at = host.now() + expires_in }
end

local function token_for(scope, opts)
  local t = tokens[scope]
  if t and host.now() < t.expires_at - EXPIRY_MARGIN then return t.token end
  tokens[scope] = nil
  local fresh, err, code = fetch_token(scope, opts)
  if not fresh then return nil, err, code end
  tokens[scope] = fresh
  return fresh.token
end

local function decode(res)
  local ctype = res.headers["content-type"] or ""
  local out = { status = res.status, headers = res.headers, raw = res.body, body = res.body }
  if ctype:find("json", 1, true) and res.body ~= "" then
    local doc = cjson.decode(res.body)
    if doc ~= nil then out.body = doc end
  end
  return out
end

-- One attempt: returns the http result (res or nil, err, code).
local function attempt(url, method, body, headers, token, opts)
  local h = {}
  for k, v in pairs(headers) do h[k] = v end
  if token then h.Authorization = "Bearer " .. token end
  return http.request {
    method = method, url = url, headers = h, body = body,
    timeout_ms = opts.timeout_ms, connect_timeout_ms = opts.connect_timeout_ms,
  }
end

-- svc.call(service, method, path, body, opts) → res | nil, err, code[, res]
function _M.call(service, method, path, body, opts)
  if type(service) ~= "string" or not service:match("^%l+$") then
    error("svc.call: expecting a service name such as \"product\", got " .. tostring(service), 2)
  end
  if type(method) ~= "string" or not method:match("^%u+$") then
    error("svc.call: expecting an upper-case HTTP method, got " .. tostring(method), 2)
  end
  if type(path) ~= "string" or path:sub(1, 1) ~= "/" then
    error("svc.call: expecting a path starting with '/', got " .. tostring(path), 2)
  end
  if opts ~= nil and type(opts) ~= "table" then error("svc.call: opts must be a table", 2) end
  opts = opts or {}
  local headers = { Accept = "application/json" }
  if opts.headers then for k, v in pairs(opts.headers) do headers[k] = v end end
  if type(body) == "table" then
    local encoded, jerr = cjson.encode(body)
    if not encoded then error("svc.call: body cannot be encoded as JSON: " .. tostring(jerr), 2) end
    body = encoded
    headers["Content-Type"] = headers["Content-Type"] or "application/json"
  elseif body ~= nil and type(body) ~= "string" then
    error("svc.call: body must be a table, a string or nil", 2)
  end

  local base, berr = base_url(service)
  if not base then return nil, berr, "unavailable" end
  local url = base .. path
  local scope = opts.scope or default_scope[service] or ""
  local use_token = opts.auth ~= false

  local retried_auth, retried_down = false, false
  while true do
    local token
    if use_token then
      local terr, tcode
      token, terr, tcode = token_for(scope, opts)
      if not token then return nil, terr, tcode end
    end
    local res, err, code = attempt(url, method, body, headers, token, opts)
    if res and res.status == 401 and use_token and not retried_auth then
      retried_auth = true
      tokens[scope] = nil      -- revoked, rotated keys, clock skew: one fresh token
    else
      local out
      if res then
        out = decode(res)
        code = unavailable_status(res.status)
        if code then err = service .. " service answered " .. res.status end
      end
      if code == "unavailable" and idempotent[method] and not retried_down then
        retried_down = true
      elseif code then
        return nil, err, code, out
      else
        return out
      end
    end
  end
end

-- For specs: forget cached tokens.
function _M.reset_tokens()
  tokens = {}
end

return _M
