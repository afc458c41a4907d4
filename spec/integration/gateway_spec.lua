-- spec/integration/gateway_spec.lua: SERVICE=gateway in front of fixture upstreams
-- (spec/fixtures/gateway/scripts), CONTRACT.md §5.
--   build/mercato lua spec/support/busted.lua -o TAP spec/integration/gateway_spec.lua
local http = require "http"
local cjson = require "cjson"
local host = require "host"
local h = require "support.http_helpers"

describe("the gateway", function()
  local dir, user, product, gateway

  local function get(path, opts) return http.get(gateway.url .. path, opts) end
  local function problem(res)
    assert.equal("application/problem+json", res.headers["content-type"])
    return cjson.decode(res.body)
  end

  setup(function()
    dir = h.tmpdir()
    local down = "http://127.0.0.1:" .. h.closed_port()
    user = h.start({ SERVICE = "user", SCRIPTS_DIR = h.fixtures, WORKERS = 1 }, dir)
    product = h.start({ SERVICE = "product", SCRIPTS_DIR = h.fixtures, WORKERS = 2, FIXTURE_STATE_DIR = dir }, dir)
    gateway = h.start({ SERVICE = "gateway", WORKERS = 2, GATEWAY_TIMEOUT_MS = 400,
                        USER_SERVICE_URL = user.url, PRODUCT_SERVICE_URL = product.url .. "/",
                        PAYMENT_SERVICE_URL = product.url,   -- the product fixture also echoes /webhooks
                        ORDER_SERVICE_URL = down, NOTIFICATION_SERVICE_URL = down }, dir)
  end)

  teardown(function()
    local logs = h.stop(gateway) .. h.stop(product) .. h.stop(user)
    os.execute("rm -rf " .. dir)
    assert.is_nil(h.sanitizer_report(logs))
  end)

  it("routes by the first path segment", function()
    for path, service in pairs { ["/products"] = "product", ["/products/1/images"] = "product",
                                 ["/categories/x"] = "product", ["/auth/login"] = "user",
                                 ["/users/me"] = "user", ["/.well-known/jwks.json"] = "user",
                                 ["/webhooks/stripe"] = "product" } do
      local res = get(path)
      assert.equal(200, res.status, path)
      local echo = cjson.decode(res.body)
      assert.equal(service, echo.service, path)
      assert.equal(path, echo.path)
    end
  end)

  it("answers 404 for unknown prefixes and partial segments", function()
    for _, path in ipairs { "/nope", "/productsx", "/product", "/" } do
      local res = get(path)
      assert.equal(404, res.status, path)
      assert.equal(404, problem(res).status)
    end
  end)

  it("never forwards an /internal path, under any prefix", function()
    -- the upstream would answer it directly
    assert.equal(200, http.post_json(product.url .. "/internal/reservations", {}).status)
    for _, path in ipairs { "/internal/reservations", "/products/internal/x", "/products/%69nternal/x",
                            "/orders/1/INTERNAL" } do
      local res = http.post_json(gateway.url .. path, {})
      assert.equal(404, res.status, path)
      assert.equal("Not Found", problem(res).title)
    end
  end)

  it("passes the raw path and query string unchanged", function()
    local echo = cjson.decode(get("/products/a%20b/c%2Fd?b=%2F+x&a=1&a=2&empty=").body)
    assert.equal("/products/a%20b/c%2Fd", echo.path)
    assert.equal("b=%2F+x&a=1&a=2&empty=", echo.query)
  end)

  it("passes a binary body and a signature header byte for byte", function()
    local bytes = {}
    for i = 0, 255 do bytes[#bytes + 1] = string.char(i) end
    local body = "t=1\0" .. table.concat(bytes) .. "\r\n\0end"
    local sig = "t=1700000000,v1=5257a869e7ecebeda32affa62cdca3fa51cad7e77a0e56ff536d0ce8e108d8bd,v0=abc"
    local res = http.request { method = "POST", url = gateway.url .. "/webhooks/stripe", body = body,
                               headers = { ["Stripe-Signature"] = sig,
                                           ["Content-Type"] = "application/json; charset=utf-8" } }
    assert.equal(200, res.status)
    local echo = cjson.decode(res.body)
    local hex = body:gsub(".", function(c) return string.format("%02x", c:byte()) end)
    assert.equal(#body, echo.body_len)
    assert.equal(hex, echo.body_hex)
    assert.equal(sig, echo.headers["stripe-signature"])
    assert.equal("application/json; charset=utf-8", echo.headers["content-type"])
    -- and the answer's bytes come back as the upstream sent them
    local raw = http.request { method = "POST", url = gateway.url .. "/products/raw", body = body }
    assert.equal(body, raw.body)
    assert.equal("application/octet-stream", raw.headers["content-type"])
  end)

  it("returns the upstream's status and headers", function()
    local res = get("/products/status/418")
    assert.equal(418, res.status)
    assert.equal("status", res.headers["x-fixture"])
    assert.equal(418, cjson.decode(res.body).status)
    local echo = get("/products/1")
    assert.equal("fixture=1; Path=/", echo.headers["set-cookie"])
    assert.equal("product", echo.headers["x-upstream"])
  end)

  it("forwards a client's X-Request-Id and echoes it", function()
    local res = get("/products/1", { headers = { ["X-Request-Id"] = "client-rid-42" } })
    assert.equal("client-rid-42", res.headers["x-request-id"])
    assert.equal("client-rid-42", cjson.decode(res.body).headers["x-request-id"])
  end)

  it("adds an X-Request-Id when the client sent none, the same one upstream and back", function()
    local res = get("/products/1")
    local rid = res.headers["x-request-id"]
    assert.matches("^%x+$", rid)
    assert.equal(rid, cjson.decode(res.body).headers["x-request-id"])
  end)

  it("drops hop-by-hop headers and adds X-Forwarded-*", function()
    local res = get("/products/1", { headers = {
      Connection = "keep-alive, X-Hop", ["X-Hop"] = "1", ["Keep-Alive"] = "timeout=5",
      ["Proxy-Authorization"] = "Basic x", ["X-End"] = "2", ["X-Forwarded-For"] = "203.0.113.7",
    } })
    local seen = cjson.decode(res.body).headers
    assert.is_nil(seen["x-hop"])
    assert.is_nil(seen["keep-alive"])
    assert.is_nil(seen["proxy-authorization"])
    assert.equal("2", seen["x-end"])
    assert.equal("203.0.113.7, 127.0.0.1", seen["x-forwarded-for"])
    assert.equal("http", seen["x-forwarded-proto"])
    assert.matches("^00%-%x+%-%x+%-%x%x$", seen.traceparent)
  end)

  it("answers 502 as a problem when the upstream is down", function()
    local res = get("/orders")
    assert.equal(502, res.status)
    local p = problem(res)
    assert.equal("Bad Gateway", p.title)
    assert.equal(res.headers["x-request-id"], p.request_id)
    assert.equal(502, get("/notifications/me").status)
  end)

  it("answers 504 as a problem when the upstream is too slow", function()
    local t0 = host.now()
    local res = get("/products/slow?s=1.5")
    local took = host.now() - t0
    assert.equal(504, res.status)
    assert.equal("Gateway Timeout", problem(res).title)
    assert.is_true(took < 1.2, "took " .. took)
  end)

  it("keeps a client's X-Forwarded-Proto only when the client is a trusted proxy", function()
    local seen = cjson.decode(get("/products/1", { headers = { ["X-Forwarded-Proto"] = "https" } }).body).headers
    assert.equal("https", seen["x-forwarded-proto"])   -- loopback: trusted by default (a TLS terminator)
    local gw = h.start({ SERVICE = "gateway", WORKERS = 1, TRUSTED_PROXIES = "none", PRODUCT_SERVICE_URL = product.url }, dir)
    local res = http.get(gw.url .. "/products/1", { headers = { ["X-Forwarded-Proto"] = "https" } })
    seen = cjson.decode(res.body).headers
    assert.equal("http", seen["x-forwarded-proto"])
    assert.is_nil(h.sanitizer_report(h.stop(gw)))
  end)

  it("finds an upstream by name and puts a base URL's path in front", function()
    local gw = h.start({ SERVICE = "gateway", WORKERS = 1,
                         PRODUCT_SERVICE_URL = "http://localhost:" .. product.port .. "/products/" }, dir)
    local res = http.get(gw.url .. "/products/x?y=1")
    assert.equal(200, res.status)
    local body = cjson.decode(res.body)
    assert.equal("/products/products/x", body.path)
    assert.equal("y=1", body.query)
    assert.equal("localhost:" .. product.port, body.headers.host)
    assert.is_nil(h.sanitizer_report(h.stop(gw)))
  end)

  it("answers 502 for an upstream whose name does not resolve and serves the others", function()
    local gw = h.start({ SERVICE = "gateway", WORKERS = 1, PRODUCT_SERVICE_URL = product.url,
                         ORDER_SERVICE_URL = "http://no-such-service.invalid:8083" }, dir)
    local res = http.get(gw.url .. "/orders")
    assert.equal(502, res.status)
    assert.equal("application/problem+json", res.headers["content-type"])
    assert.equal("Bad Gateway", cjson.decode(res.body).title)
    assert.not_matches("no%-such%-service", res.body)   -- upstream names stay in the log
    assert.equal(200, http.get(gw.url .. "/products/1").status)
    local log = h.stop(gw)
    assert.matches("cannot resolve no%-such%-service%.invalid for the order service", log)
    assert.is_nil(h.sanitizer_report(log))
  end)

  it("keeps its default deadline when GATEWAY_TIMEOUT_MS is not a positive number, and says so", function()
    local gw = h.start({ SERVICE = "gateway", WORKERS = 1, PRODUCT_SERVICE_URL = product.url,
                         GATEWAY_TIMEOUT_MS = "soon" }, dir)
    local res = http.get(gw.url .. "/products/slow?s=0.6")   -- within the default 15 s
    assert.equal(200, res.status)
    local log = h.stop(gw)
    assert.matches("GATEWAY_TIMEOUT_MS: expecting a positive number, got 'soon'; using 15000", log)
  end)

  -- An https upstream goes through libcurl, which verifies its certificate: a self-signed one
  -- (openssl s_server here) is refused with a 502, and one that never finishes the handshake
  -- is a 504 after GATEWAY_TIMEOUT_MS. Ports: RUN_PORT_BASE + 90/91 when set, else free ones.
  it("refuses an https upstream whose certificate it cannot verify (502) and times out a silent one (504)", function()
    local socket = require "socket"
    local base = tonumber(os.getenv("RUN_PORT_BASE"))
    local tls_port = base and base + 90 or h.closed_port()
    local crt, key = dir .. "/upstream.crt", dir .. "/upstream.key"
    assert(os.execute(("openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=127.0.0.1 -keyout %s -out %s 2>/dev/null")
      :format(key, crt)) == 0)
    -- s_server on tls_port (a new free port for each try: one a moment ago free may be taken),
    -- until it listens; its log goes into the failure message
    local tls_pid, listening
    for try = 1, 3 do
      if try > 1 then tls_port = h.closed_port() end
      local p = io.popen(("openssl s_server -quiet -www -accept 127.0.0.1:%d -cert %s -key %s </dev/null >%s/s_server.log 2>&1 & "
        .. "echo $!"):format(tls_port, crt, key, dir))
      tls_pid = p:read("*l")
      p:close()
      for _ = 1, 100 do
        local up = socket.connect("127.0.0.1", tls_port)
        if up then up:close(); listening = true; break end
        socket.sleep(0.05)
      end
      if listening then break end
      os.execute("kill " .. tls_pid .. " 2>/dev/null")
    end
    local f = io.open(dir .. "/s_server.log")
    assert(listening, "openssl s_server did not listen: " .. (f and f:read("*a") or ""))
    if f then f:close() end
    local silent = assert(socket.bind("127.0.0.1", base and base + 91 or 0))   -- accepts (kernel), never speaks
    local _, silent_port = silent:getsockname()
    local gw = h.start({ SERVICE = "gateway", WORKERS = 1, GATEWAY_TIMEOUT_MS = 400,
                         PRODUCT_SERVICE_URL = "https://127.0.0.1:" .. tls_port,
                         ORDER_SERVICE_URL = "https://127.0.0.1:" .. silent_port }, dir)
    local ok, err = pcall(function()
      local res = http.request { method = "POST", url = gw.url .. "/products", body = "{}",
                                 headers = { ["Content-Type"] = "application/json" } }
      assert.equal(502, res.status)
      assert.equal("Bad Gateway", problem(res).title)
      local t0 = host.now()
      res = http.get(gw.url .. "/orders")
      assert.equal(504, res.status)
      assert.equal("Gateway Timeout", problem(res).title)
      assert.is_true(host.now() - t0 < 2, "took " .. (host.now() - t0))
    end)
    os.execute("kill " .. tls_pid .. " 2>/dev/null")
    silent:close()
    local log = h.stop(gw)
    assert(ok, err)
    assert.matches('"upstream":"product","error":"SSL certificate problem', log, 1, true)
    assert.is_nil(h.sanitizer_report(log))
  end)

  it("carries on over new connections when an upstream restarts under its kept-alive ones", function()
    local up = h.start({ SERVICE = "product", SCRIPTS_DIR = h.fixtures, WORKERS = 1, FIXTURE_STATE_DIR = dir }, dir)
    local gw = h.start({ SERVICE = "gateway", WORKERS = 1, PRODUCT_SERVICE_URL = up.url }, dir)
    for _ = 1, 3 do assert.equal(200, http.get(gw.url .. "/products/warm").status) end
    h.stop(up)
    assert.equal(502, http.get(gw.url .. "/products/down").status)   -- nothing listens meanwhile
    up = h.start({ SERVICE = "product", SCRIPTS_DIR = h.fixtures, WORKERS = 1, FIXTURE_STATE_DIR = dir, PORT = up.port }, dir)
    for i = 1, 5 do
      assert.equal(200, http.get(gw.url .. "/products/again-" .. i).status)
      local res = http.request { method = "POST", url = gw.url .. "/products/raw", body = "b" .. i }
      assert.equal(200, res.status)
      assert.equal("b" .. i, res.body)
    end
    assert.is_nil(h.sanitizer_report(h.stop(gw) .. h.stop(up)))
  end)

  it("relays large answers whole and keeps one connection busy at a time", function()
    for _, n in ipairs { 0, 1, 70000, 3000000 } do
      local res = get("/products/big?n=" .. n)
      assert.equal(200, res.status)
      assert.equal(n, #res.body)
      assert.equal(string.rep("x", n), res.body)
    end
  end)

  it("serves its own /health", function()
    assert.equal(200, get("/health").status)
  end)
end)
