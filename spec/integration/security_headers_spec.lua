-- luacheck: max line length 160
-- Security headers (issue 18): every response of every service and of the gateway — built-ins,
-- handlers' answers, the host's own problems (401, 404, 405, 400), rate limits — carries
-- nosniff, Referrer-Policy, X-Frame-Options and a CSP that forbids everything; responses to
-- requests with credentials, auth responses, errors and writes are `Cache-Control: no-store`;
-- a public catalogue read stays cacheable; no Server or X-Powered-By header; HSTS only when
-- HSTS_MAX_AGE says so.
--
-- Run: set -a; . <(scripts/dev/stack.sh env); set +a
--      build/mercato lua spec/support/busted.lua -o TAP spec/integration/security_headers_spec.lua
local http = require "http"
local O = require "support.order_helpers"
local raw = require "support.raw_http"
local server = require "support.server"

local HARDENING = {
  ["x-content-type-options"] = "nosniff",
  ["referrer-policy"] = "no-referrer",
  ["x-frame-options"] = "DENY",
  ["content-security-policy"] = "default-src 'none'; frame-ancestors 'none'",
}

local function hardened(res, what)
  for name, want in pairs(HARDENING) do
    assert.equal(want, res.headers[name], what .. ": " .. name)
  end
  assert.is_nil(res.headers["server"], what .. " names its server")
  assert.is_nil(res.headers["x-powered-by"], what .. " names its framework")
  assert.is_nil(res.headers["strict-transport-security"], what .. " sends HSTS without HSTS_MAX_AGE")
end

local function call(srv, method, path, opts)
  opts = opts or {}
  local res = assert(http.request { method = method, url = srv.url .. path, headers = opts.headers, body = opts.body, timeout_ms = 20000 })
  return res
end

describe("security headers", function()
  local w, buyer, product

  setup(function()
    w = O.start { payment = true, notification = true, gateway = true }
    buyer = O.buyer(w)
    product = O.product(w)
  end)
  teardown(function() O.stop(w) end)

  local function services()
    return { user = w.user, product = w.product, order = w.order, payment = w.payment, notification = w.notification, gateway = w.gateway }
  end

  -- A route of each service that needs a token (the gateway routes it to its service).
  local PROTECTED = {
    user = { "GET", "/users/me" }, product = { "POST", "/products" }, order = { "GET", "/cart" },
    payment = { "GET", "/payments?order_id=00000000-0000-4000-8000-000000000000" },
    notification = { "GET", "/notifications/me" }, gateway = { "GET", "/cart" },
  }

  -- A path each service answers, but not to DELETE.
  local WRONG_METHOD = {
    user = "/auth/login", product = "/tags", order = "/orders", payment = "/webhooks/stripe",
    notification = "/notifications/me", gateway = "/tags",
  }

  it("are on every built-in answer of every service and the gateway", function()
    for name, srv in pairs(services()) do
      for _, path in ipairs { "/health", "/ready", "/metrics", "/openapi.json" } do
        hardened(call(srv, "GET", path), name .. " GET " .. path)
      end
    end
  end)

  it("are on the host's own problems: 404, 405, 401 without a token and with a bad one — all no-store", function()
    for name, srv in pairs(services()) do
      local res = call(srv, "GET", "/no/such/route")
      assert.equal(404, res.status, name)
      hardened(res, name .. " 404")
      assert.equal("no-store", res.headers["cache-control"], name .. " 404")
      res = call(srv, "DELETE", WRONG_METHOD[name])
      assert.equal(405, res.status, name)
      hardened(res, name .. " 405")
      assert.equal("no-store", res.headers["cache-control"], name .. " 405")
      res = call(srv, PROTECTED[name][1], PROTECTED[name][2])
      assert.equal(401, res.status, name)
      hardened(res, name .. " 401")
      assert.equal("no-store", res.headers["cache-control"], name .. " 401")
      res = call(srv, PROTECTED[name][1], PROTECTED[name][2], { headers = { Authorization = "Bearer not.a.token" } })
      assert.equal(401, res.status, name)
      hardened(res, name .. " 401 bad token")
      assert.equal("no-store", res.headers["cache-control"], name .. " 401 bad token")
    end
  end)

  it("are on authenticated answers, which are never stored by a cache", function()
    for name, srv in pairs(services()) do
      local res = call(srv, PROTECTED[name][1], PROTECTED[name][2], { headers = { Authorization = "Bearer " .. buyer.token } })
      assert.is_true(res.status < 500, name .. " " .. res.status)
      hardened(res, name .. " authenticated " .. PROTECTED[name][2])
      assert.equal("no-store", res.headers["cache-control"], name .. " authenticated " .. PROTECTED[name][2])
    end
  end)

  it("are on auth responses (login, failed login, token, register, validation problem), all no-store", function()
    for _, srv in ipairs { w.user, w.gateway } do
      local json = { ["Content-Type"] = "application/json" }
      local cases = {
        { "POST", "/auth/login", '{"email":"' .. buyer.email .. '","password":"correct horse 1"}', 200 },
        { "POST", "/auth/login", '{"email":"' .. buyer.email .. '","password":"wrong horse 12"}', 401 },
        { "POST", "/auth/register", '{"email":"x' .. os.time() .. math.random(1e6) .. '@example.com","password":"correct horse 1","name":"H"}', 201 },
        { "POST", "/auth/register", "{not json", 400 },
        { "POST", "/oauth/token", "grant_type=client_credentials&client_id=nobody&client_secret=wrong", 401,
          { ["Content-Type"] = "application/x-www-form-urlencoded" } },
      }
      for _, c in ipairs(cases) do
        local res = call(srv, c[1], c[2], { headers = c[5] or json, body = c[3] })
        assert.equal(c[4], res.status, c[2] .. " " .. res.body)
        hardened(res, c[1] .. " " .. c[2] .. " " .. c[4])
        assert.equal("no-store", res.headers["cache-control"], c[2] .. " " .. c[4])
      end
    end
  end)

  it("leave a public catalogue read cacheable, and mark the same read with a token no-store", function()
    for _, srv in ipairs { w.product, w.gateway } do
      local res = call(srv, "GET", "/products/" .. product.id)
      assert.equal(200, res.status)
      hardened(res, "public GET /products/{id}")
      assert.is_nil(res.headers["cache-control"])
      assert.is_string(res.headers["etag"])
      res = call(srv, "GET", "/products?limit=1")
      assert.equal(200, res.status)
      hardened(res, "public GET /products")
      res = call(srv, "GET", "/products/" .. product.id, { headers = { Authorization = "Bearer " .. buyer.token } })
      assert.equal(200, res.status)
      assert.equal("no-store", res.headers["cache-control"])
    end
  end)

  it("are on a write's answer and its problems", function()
    local res = O.req(w.order, "PUT", "/cart/items/" .. product.id, { quantity = 1 }, buyer.token)
    assert.equal(200, res.status, res.body)
    hardened(res, "PUT /cart/items")
    assert.equal("no-store", res.headers["cache-control"])
    res = O.req(w.order, "PUT", "/cart/items/" .. product.id, { quantity = "many" }, buyer.token)
    assert.equal(422, res.status, res.body)
    hardened(res, "422 PUT /cart/items")
    res = O.req(w.payment, "POST", "/webhooks/stripe", { id = "evt_x" }, nil, { ["Stripe-Signature"] = "t=1,v1=00" })
    assert.equal(400, res.status, res.body)
    hardened(res, "400 POST /webhooks/stripe")
    assert.equal("no-store", res.headers["cache-control"])
  end)

  it("are on the gateway's own 404 for /internal paths and its 502 when an upstream is down", function()
    local res = call(w.gateway, "GET", "/internal/reservations")
    assert.equal(404, res.status)
    hardened(res, "gateway /internal 404")
    local g = server.start { service = "gateway", scripts = "scripts", env = {
      USER_SERVICE_URL = "http://127.0.0.1:" .. server.free_port(), PRODUCT_SERVICE_URL = w.product.url,
      ORDER_SERVICE_URL = w.order.url, PAYMENT_SERVICE_URL = w.payment.url, NOTIFICATION_SERVICE_URL = w.notification.url,
      RATE_LIMIT_GLOBAL = "off", REDIS_URL = os.getenv("REDIS_URL") } }
    finally(function() g:stop() end)
    res = assert(raw.request(g.port, "GET", "/users/me"))
    assert.equal(502, res.status)
    hardened(res, "gateway 502")
    assert.equal("no-store", res.headers["cache-control"])
  end)

  it("include Strict-Transport-Security only when HSTS_MAX_AGE is set", function()
    local srv = server.start { service = "product", scripts = "spec/fixtures/host/scripts", workers = 1, env = { HSTS_MAX_AGE = "31536000" } }
    finally(function() srv:stop() end)
    local res = assert(raw.request(srv.port, "GET", "/health"))
    assert.equal("max-age=31536000; includeSubDomains", res.headers["strict-transport-security"])
    assert.equal("nosniff", res.headers["x-content-type-options"])
    local bad = server.start { service = "product", scripts = "spec/fixtures/host/scripts", workers = 1, wait = false,
      env = { HSTS_MAX_AGE = "forever" } }
    local st
    for _ = 1, 100 do
      st = io.open(bad.status_path) and tonumber(io.open(bad.status_path):read("*a"))
      if st then break end
      os.execute("sleep 0.1")
    end
    assert.equal(1, st)
    assert.matches("HSTS_MAX_AGE", bad:log())
  end)
end)
