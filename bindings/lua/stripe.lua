-- stripe: the request half of the Stripe binding, over the C primitives of bindings/stripe.c
-- (compiled into the binary). Lua because a handler parks inside it twice — on the `http`
-- transfer and on the back-off nap (`host.sleep`) — and a coroutine cannot yield through C.
--
--   stripe.request(method, path, params, opts) → decoded object, or nil, message, code, error
--   opts: idempotency_key (POST; a random one when absent, the same for every retry),
--         api_key (default STRIPE_API_KEY, alias STRIPE_TEST_KEY), api_base (default
--         STRIPE_API_BASE or https://api.stripe.com), timeout_ms (per attempt, default
--         STRIPE_TIMEOUT_MS or 10000), max_retries (default STRIPE_MAX_RETRIES or 2)
--   error: Stripe's error object plus status, request_id and should_retry; code is the
--   binding vocabulary — invalid (400/402), not_found (404), conflict (409, after its retries),
--   unavailable (network, 401/403, 429, 5xx), timeout (no answer in time).
local C = ...
local crypto = require "crypto"
local host = require "host"
local http = require "http"
local json = require "cjson.safe"

local tonumber, type = tonumber, type

local stripe = {
  api_version = C.api_version,
  form = C.form,
  verify_webhook = C.verify_webhook,
  should_retry = C.should_retry,
  backoff = C.backoff,
  error_code = C.error_code,
}

local DEFAULT_BASE = "https://api.stripe.com"

local function env_or(name, dflt)
  local v = host.env(name)
  if v == nil or v == "" then return dflt end
  return v
end

-- The API key the service runs with (STRIPE_API_KEY, else STRIPE_TEST_KEY), or nil.
function stripe.api_key()
  return env_or("STRIPE_API_KEY", env_or("STRIPE_TEST_KEY", nil))
end

local function failure_of(res)
  local doc = json.decode(res.body or "")
  local e = type(doc) == "table" and type(doc.error) == "table" and doc.error or {}
  e.status = res.status
  e.request_id = res.headers["request-id"]
  local code = C.error_code(res.status)
  if res.status == 504 then code = "timeout" end
  local msg = type(e.message) == "string" and e.message or ("Stripe answered " .. res.status)
  return msg, code, e
end

-- One request with its retries. Misuse (a bad method or path) raises.
function stripe.request(method, path, params, opts)
  if method ~= "GET" and method ~= "POST" and method ~= "DELETE" then
    error("stripe.request: method must be GET, POST or DELETE, got " .. tostring(method), 2)
  end
  if type(path) ~= "string" or path:sub(1, 1) ~= "/" then
    error("stripe.request: expecting a path such as /v1/payment_intents, got " .. tostring(path), 2)
  end
  opts = opts or {}
  local key = opts.api_key or stripe.api_key()
  if not key then return nil, "STRIPE_API_KEY is not set", "unavailable", {} end
  local base = (opts.api_base or env_or("STRIPE_API_BASE", DEFAULT_BASE)):gsub("/+$", "")
  local form = params and C.form(params) or ""
  local headers = {
    Authorization = "Bearer " .. key,
    ["Stripe-Version"] = C.api_version,
    Accept = "application/json",
  }
  local url, body = base .. path, nil
  if method == "POST" then
    body = form
    headers["Content-Type"] = "application/x-www-form-urlencoded"
    headers["Idempotency-Key"] = opts.idempotency_key or crypto.uuid4()
  elseif form ~= "" then
    url = url .. "?" .. form
  end
  local max_retries = opts.max_retries or tonumber(env_or("STRIPE_MAX_RETRIES", "2")) or 2
  local timeout_ms = opts.timeout_ms or tonumber(env_or("STRIPE_TIMEOUT_MS", "10000")) or 10000
  local attempt = 0
  while true do
    local res, err, code = http.request {
      method = method, url = url, headers = headers, body = body,
      timeout_ms = timeout_ms, connect_timeout_ms = 2000,
    }
    if res and res.status >= 200 and res.status < 300 then
      local doc = json.decode(res.body)
      if type(doc) ~= "table" then
        return nil, "Stripe answered a body that is not JSON", "unavailable", { status = res.status }
      end
      return doc
    end
    local retry = C.should_retry(res and res.status or 0, res and res.headers["stripe-should-retry"])
    if not retry or attempt >= max_retries then
      if not res then return nil, err, code, { should_retry = retry } end
      local msg, ecode, e = failure_of(res)
      e.should_retry = retry
      return nil, msg, ecode, e
    end
    attempt = attempt + 1
    host.sleep(C.backoff(attempt))
  end
end

return stripe
