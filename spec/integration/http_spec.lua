-- spec/integration/http_spec.lua: the http binding and lib.svc against real mercato instances
-- serving fixture scripts (spec/fixtures/gateway/scripts).
--   build/mercato lua spec/support/busted.lua -o TAP spec/integration/http_spec.lua
local http = require "http"
local cjson = require "cjson"
local host = require "host"
local h = require "support.http_helpers"

local CLIENT_ID, CLIENT_SECRET = "svc-test", "s3cr3t"

describe("http and svc against live services", function()
  local dir, user, product, closed

  setup(function()
    dir = h.tmpdir()
    closed = h.closed_port()
    user = h.start({ SERVICE = "user", SCRIPTS_DIR = h.fixtures, WORKERS = 1,
                     SERVICE_CLIENT_ID = CLIENT_ID, SERVICE_CLIENT_SECRET = CLIENT_SECRET }, dir)
    product = h.start({ SERVICE = "product", SCRIPTS_DIR = h.fixtures, WORKERS = 2, FIXTURE_STATE_DIR = dir,
                        USER_SERVICE_URL = user.url, SERVICE_CLIENT_ID = CLIENT_ID,
                        SERVICE_CLIENT_SECRET = CLIENT_SECRET }, dir)
    h.setenv("USER_SERVICE_URL", user.url)
    h.setenv("PRODUCT_SERVICE_URL", product.url)
    h.setenv("ORDER_SERVICE_URL", nil)
    h.setenv("SERVICE_CLIENT_ID", CLIENT_ID)
    h.setenv("SERVICE_CLIENT_SECRET", CLIENT_SECRET)
  end)

  teardown(function()
    local logs = h.stop(product) .. h.stop(user)
    os.execute("rm -rf " .. dir)
    assert.is_nil(h.sanitizer_report(logs))
  end)

  describe("http.request", function()
    it("returns the status, lower-cased headers and the body of a GET", function()
      local res, err = http.get(product.url .. "/products/abc?x=1&y=%2F")
      assert.is_nil(err)
      assert.equal(200, res.status)
      assert.equal("product", res.headers["x-upstream"])
      assert.matches("^application/json", res.headers["content-type"])
      local echo = cjson.decode(res.body)
      assert.equal("GET", echo.method)
      assert.equal("/products/abc", echo.path)
      assert.equal("x=1&y=%2F", echo.query)
    end)

    it("sends the method, headers and body byte for byte", function()
      local body = "a\0b\255\r\n"
      local res = http.request { method = "POST", url = product.url .. "/products/raw-echo", body = body,
                                 headers = { ["X-Custom"] = "v 1", ["Content-Type"] = "application/octet-stream" } }
      local echo = cjson.decode(res.body)
      assert.equal("POST", echo.method)
      assert.equal("610062ff0d0a", echo.body_hex)
      assert.equal("v 1", echo.headers["x-custom"])
      assert.equal("application/octet-stream", echo.headers["content-type"])
      assert.is_nil(echo.headers.expect)
    end)

    it("sends PUT, PATCH and DELETE", function()
      for _, m in ipairs { "PUT", "PATCH", "DELETE" } do
        local res = http.request { method = m, url = product.url .. "/products/1" }
        assert.equal(m, cjson.decode(res.body).method)
      end
    end)

    it("post_json encodes the table and sets Content-Type", function()
      local res = http.post_json(product.url .. "/products", { name = "x", n = 2 })
      local echo = cjson.decode(res.body)
      assert.equal("application/json", echo.headers["content-type"])
      assert.same({ name = "x", n = 2 }, cjson.decode(echo.body))
    end)

    it("post_form escapes keys and values", function()
      local res = http.post_form(product.url .. "/products", { q = "a b&c=d", ["k y"] = "é" })
      local echo = cjson.decode(res.body)
      assert.equal("application/x-www-form-urlencoded", echo.headers["content-type"])
      assert.equal("k%20y=%C3%A9&q=a%20b%26c%3Dd", echo.body)
    end)

    it("treats any HTTP status as a response", function()
      local res, err = http.get(product.url .. "/products/status/409")
      assert.is_nil(err)
      assert.equal(409, res.status)
      assert.equal("status", res.headers["x-fixture"])
    end)

    it("returns nil, err, 'unavailable' when the connection is refused", function()
      local res, err, code = http.get("http://127.0.0.1:" .. closed .. "/")
      assert.is_nil(res)
      assert.is_string(err)
      assert.equal("unavailable", code)
    end)

    it("returns nil, err, 'timeout' at the deadline", function()
      local t0 = host.now()
      local res, err, code = http.get(product.url .. "/products/slow?s=1.5", { timeout_ms = 300 })
      local took = host.now() - t0
      assert.is_nil(res)
      assert.is_string(err)
      assert.equal("timeout", code)
      assert.is_true(took >= 0.25 and took < 1.2, "took " .. took)
    end)

    it("refuses a response past max_response_bytes", function()
      local res, err, code = http.get(product.url .. "/products/big?n=5000", { max_response_bytes = 1000 })
      assert.is_nil(res)
      assert.equal("response too large", err)
      assert.equal("unavailable", code)
      assert.equal(5000, #http.get(product.url .. "/products/big?n=5000").body)
    end)

    it("adds no request id or trace outside of a request", function()
      local echo = cjson.decode(http.get(product.url .. "/products/x").body)
      assert.is_nil(echo.headers["traceparent"])
      assert.is_nil(echo.headers["x-request-id"])
    end)

    it("forwards X-Request-Id and the incoming trace from a handler", function()
      local incoming = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
      local res = http.post_json(product.url .. "/products/relay", { url = user.url .. "/auth/echo", method = "GET" },
                                 { headers = { ["X-Request-Id"] = "spec-rid-1", traceparent = incoming } })
      local relayed = cjson.decode(res.body)
      assert.equal(200, relayed.status)
      local seen = cjson.decode(relayed.body).headers
      assert.equal("spec-rid-1", seen["x-request-id"])
      local trace, span, flags = seen.traceparent:match("^00%-(%x+)%-(%x+)%-(%x%x)$")
      assert.equal("4bf92f3577b34da6a3ce929d0e0e4736", trace)
      assert.equal(16, #span)
      assert.not_equal("00f067aa0ba902b7", span)
      assert.equal("01", flags)
    end)

    it("starts a trace from the request id when none came in", function()
      local res = http.post_json(product.url .. "/products/relay", { url = user.url .. "/auth/echo", method = "GET" },
                                 { headers = { ["X-Request-Id"] = "0123456789abcdef0123456789abcdef" } })
      local seen = cjson.decode(cjson.decode(res.body).body).headers
      assert.matches("^00%-0123456789abcdef0123456789abcdef%-%x+%-01$", seen.traceparent)
    end)
  end)

  describe("svc.call", function()
    local svc = require "lib.svc"

    local function stats() return cjson.decode(http.get(user.url .. "/oauth/stats").body) end

    before_each(function() svc.reset_tokens() end)

    it("calls with a client_credentials token and caches it", function()
      local before = stats().issued
      local res, err = svc.call("product", "GET", "/products/a", nil)
      assert.is_nil(err)
      assert.equal(200, res.status)
      assert.equal("GET", res.body.method)   -- decoded JSON
      local token = res.body.headers.authorization
      assert.equal("Bearer tok-" .. (before + 1), token)
      local s = stats()
      assert.equal("application/x-www-form-urlencoded", s.last.content_type)
      assert.equal("client_id=svc-test&client_secret=s3cr3t&grant_type=client_credentials&scope=inventory", s.last.body)
      res = svc.call("product", "POST", "/products/b", { x = 1 })
      assert.equal(token, res.body.headers.authorization)
      assert.equal('{"x":1}', res.body.body)
      assert.equal("application/json", res.body.headers["content-type"])
      assert.equal(before + 1, stats().issued)
    end)

    it("fetches a new token when the cached one is within 30 s of expiry", function()
      local before = stats().issued
      svc.call("product", "GET", "/products/a", nil, { scope = "short" })
      svc.call("product", "GET", "/products/a", nil, { scope = "short" })
      assert.equal(before + 2, stats().issued)
    end)

    it("retries a 401 once with a fresh token", function()
      local first = svc.call("product", "GET", "/products/a").body.headers.authorization
      local rejected = first:match("Bearer (.*)")
      local res = svc.call("product", "GET", "/products/reject/" .. rejected)
      assert.equal(200, res.status)
      assert.not_equal(first, res.body.headers.authorization)
    end)

    it("retries an idempotent call once when the service is unavailable", function()
      local res, err = svc.call("product", "GET", "/products/flaky/get1")
      assert.is_nil(err)
      assert.equal(2, res.body.hits)
    end)

    it("does not retry a POST", function()
      local res, err, code, answer = svc.call("product", "POST", "/products/flaky/post1", {})
      assert.is_nil(res)
      assert.equal("product service answered 503", err)
      assert.equal("unavailable", code)
      assert.equal(503, answer.status)
      local again = svc.call("product", "POST", "/products/flaky/post1", {})
      assert.equal(2, again.body.hits)   -- the first call hit once, not twice
    end)

    it("says which variable is missing for an unconfigured service", function()
      local res, err, code = svc.call("order", "GET", "/orders")
      assert.is_nil(res)
      assert.equal("ORDER_SERVICE_URL is not set", err)
      assert.equal("unavailable", code)
    end)

    it("returns unavailable when the token endpoint is down", function()
      h.setenv("USER_SERVICE_URL", "http://127.0.0.1:" .. closed)
      local res, err, code = svc.call("product", "GET", "/products/a")
      h.setenv("USER_SERVICE_URL", user.url)
      assert.is_nil(res)
      assert.matches("^token request failed", err)
      assert.equal("unavailable", code)
    end)

    it("returns unavailable when the client is refused", function()
      h.setenv("SERVICE_CLIENT_SECRET", "wrong")
      local res, err, code = svc.call("product", "GET", "/products/a")
      h.setenv("SERVICE_CLIENT_SECRET", CLIENT_SECRET)
      assert.is_nil(res)
      assert.equal("token request refused: invalid_client", err)
      assert.equal("unavailable", code)
    end)

    it("raises on misuse", function()
      assert.has_error(function() svc.call("Product!", "GET", "/x") end)
      assert.has_error(function() svc.call("product", "get", "/x") end)
      assert.has_error(function() svc.call("product", "GET", "x") end)
      assert.has_error(function() svc.call("product", "POST", "/x", 42) end)
    end)

    it("works from a handler, forwarding the request id", function()
      local res = http.post_json(product.url .. "/products/svc",
                                 { service = "user", method = "GET", path = "/auth/whoami" },
                                 { headers = { ["X-Request-Id"] = "spec-rid-2" } })
      local out = cjson.decode(res.body)
      assert.is_nil(out.err)
      assert.equal(200, out.status)
      assert.equal("spec-rid-2", out.body.headers["x-request-id"])
      assert.matches("^Bearer tok%-%d+$", out.body.headers.authorization)
    end)
  end)
end)
