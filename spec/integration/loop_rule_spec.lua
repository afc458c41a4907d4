-- spec/integration/loop_rule_spec.lua: nothing waits on an HTTP thread (ARCHITECTURE "The
-- loop rule"). An upstream that accepts connections and never answers holds up only the
-- requests that called it: through the gateway, and from a handler's http.get.
--   build/mercato lua spec/support/busted.lua -o TAP spec/integration/loop_rule_spec.lua
local http = require "http"
local host = require "host"
local socket = require "socket"
local raw = require "support.raw_http"
local h = require "support.http_helpers"

-- A listening socket nobody accepts from: the kernel completes the handshakes (backlog), the
-- requests are never read, never answered.
local function black_hole()
  local srv = assert(socket.tcp())
  assert(srv:bind("127.0.0.1", 0))
  assert(srv:listen(64))
  local _, port = srv:getsockname()
  return srv, "http://127.0.0.1:" .. port
end

-- n requests sent one at a time on connections of their own, as separate clients would; the
-- sockets are returned open (their answers are not awaited).
local function send_and_leave(port, n, method, path, body)
  local socks = {}
  for i = 1, n do
    local s = assert(raw.connect(port, 2))
    local req = method .. " " .. path .. " HTTP/1.1\r\nHost: 127.0.0.1\r\n"
    if body then req = req .. "Content-Type: application/json\r\nContent-Length: " .. #body .. "\r\n" end
    assert(s:send(req .. "\r\n" .. (body or "")))
    socks[i] = s
    h.sleep(0.02)
  end
  return socks
end

-- 100 GETs one after another must all answer 200, with a p99 under 50 ms and the slowest
-- under 500 ms (with 100 samples the p99 lets one slow answer through, so the slowest is
-- checked too: a thread held for the deadline shows there).
local function assert_unhindered(url)
  local ms, statuses = {}, {}
  for i = 1, 100 do
    local t0 = host.now()
    local res, err = http.get(url .. i, { timeout_ms = 5000 })
    ms[i] = (host.now() - t0) * 1000
    local key = res and res.status or tostring(err)
    statuses[key] = (statuses[key] or 0) + 1
  end
  table.sort(ms)
  local p99, max = ms[99], ms[100]
  print(("# 100 GETs: p99 %.1f ms, slowest %.1f ms"):format(p99, max))
  assert.same({ [200] = 100 }, statuses)
  assert.is_true(p99 < 50 and max < 500, ("p99 %.1f ms, slowest %.1f ms"):format(p99, max))
end

describe("an upstream that never answers", function()
  local dir, hole, hole_url, product, gateway
  local WORKERS = 2

  setup(function()
    dir = h.tmpdir()
    hole, hole_url = black_hole()
    product = h.start({ SERVICE = "product", SCRIPTS_DIR = h.fixtures, WORKERS = 1, FIXTURE_STATE_DIR = dir,
                        SHUTDOWN_TIMEOUT_MS = 1000 }, dir)
    gateway = h.start({ SERVICE = "gateway", WORKERS = WORKERS, GATEWAY_TIMEOUT_MS = 10000, SHUTDOWN_TIMEOUT_MS = 1000,
                        PRODUCT_SERVICE_URL = product.url, ORDER_SERVICE_URL = hole_url }, dir)
  end)

  teardown(function()
    local logs = h.stop(gateway) .. h.stop(product)
    hole:close()
    os.execute("rm -rf " .. dir)
    assert.is_nil(h.sanitizer_report(logs))
  end)

  it("holds up no other request through the gateway", function()
    local socks = send_and_leave(gateway.port, 4 * WORKERS, "GET", "/orders/stuck")
    assert_unhindered(gateway.url .. "/products/p-")
    for _, s in ipairs(socks) do s:close() end
  end)

  it("holds up no other request on the thread of a handler calling it with http.get", function()
    local body = ('{"url":"%s/never"}'):format(hole_url)
    local socks = send_and_leave(product.port, 4, "POST", "/products/relay", body)
    assert_unhindered(product.url .. "/products/p-")
    for _, s in ipairs(socks) do s:close() end
  end)

  it("holds up no other request on the thread of a handler in host.sleep", function()
    local t0 = host.now()
    local socks = send_and_leave(product.port, 4, "GET", "/products/nap?s=1")
    assert_unhindered(product.url .. "/products/p-")
    for _, s in ipairs(socks) do
      s:settimeout(5)
      assert.equal("HTTP/1.1 200 OK", s:receive("*l"))
      s:close()
    end
    local took = host.now() - t0
    assert.is_true(took >= 0.95 and took < 2, "the naps ended after " .. took .. " s")
  end)

  it("answers the callers 504 at the gateway's deadline and keeps serving", function()
    local gw = h.start({ SERVICE = "gateway", WORKERS = 1, GATEWAY_TIMEOUT_MS = 300,
                         PRODUCT_SERVICE_URL = product.url, ORDER_SERVICE_URL = hole_url }, dir)
    local socks = send_and_leave(gw.port, 3, "GET", "/orders/stuck")
    local t0 = host.now()
    local res = http.get(gw.url .. "/orders/also-stuck", { timeout_ms = 5000 })
    local took = host.now() - t0
    assert.equal(504, res.status)
    assert.is_true(took < 1, "took " .. took)
    for _, s in ipairs(socks) do
      local line = s:receive("*l")
      assert.equal("HTTP/1.1 504 Gateway Timeout", line)
      s:close()
    end
    assert.equal(200, http.get(gw.url .. "/products/after").status)
    assert.is_nil(h.sanitizer_report(h.stop(gw)))
  end)
end)

describe("a Redis that never answers a route's rate-limit check", function()
  local dir, hole, hole_url, srv

  setup(function()
    dir = h.tmpdir()
    hole, hole_url = black_hole()
    srv = h.start({ SERVICE = "user", SCRIPTS_DIR = "spec/fixtures/ratelimit/scripts", WORKERS = 1,
                    REDIS_URL = hole_url:gsub("^http", "redis") .. "/0", RATE_LIMIT_TIMEOUT_MS = 1500,
                    SHUTDOWN_TIMEOUT_MS = 1000 }, dir)
  end)

  teardown(function()
    local logs = h.stop(srv)
    hole:close()
    os.execute("rm -rf " .. dir)
    assert.is_nil(h.sanitizer_report(logs))
  end)

  it("holds up no other request on its thread, and the limited one is answered in-process at the deadline", function()
    local t0 = host.now()
    local socks = send_and_leave(srv.port, 1, "POST", "/auth/login", "{}")
    assert_unhindered(srv.url .. "/ip?n=")
    socks[1]:settimeout(5)
    assert.equal("HTTP/1.1 200 OK", socks[1]:receive("*l"))
    local took = host.now() - t0
    assert.is_true(took >= 1.4 and took < 3, "answered after " .. took .. " s")
    socks[1]:close()
  end)

  it("holds up no other request while a handler's ratelimit.check waits on it", function()
    h.sleep(1.1)   -- past the back-off of the failure above: the next check tries Redis again
    local t0 = host.now()
    local socks = send_and_leave(srv.port, 1, "GET", "/rl/check?name=spec&key=k&limit=5/min")
    assert_unhindered(srv.url .. "/ip?n=")
    socks[1]:settimeout(5)
    assert.equal("HTTP/1.1 200 OK", socks[1]:receive("*l"))
    assert.is_true(host.now() - t0 >= 1.4)
    socks[1]:close()
  end)

  it("holds up no other request while a handler's ratelimit.reset goes out to it", function()
    h.sleep(1.1)   -- past the back-off of the failure above: the reset tries Redis again
    local socks = send_and_leave(srv.port, 1, "POST", "/rl/reset?name=spec&key=k", "")
    assert_unhindered(srv.url .. "/ip?n=")
    socks[1]:settimeout(5)
    assert.equal("HTTP/1.1 204 No Content", socks[1]:receive("*l"))
    socks[1]:close()
  end)
end)
