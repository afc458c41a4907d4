-- What one client (or many) can hold of a service: connections in total and per IP, buffered
-- request-body bytes, and how long a request may take to arrive.
--   build/mercato lua spec/support/busted.lua spec/integration/connection_limits_spec.lua
local cjson = require "cjson"
local socket = require "socket"
local raw = require "support.raw_http"
local server = require "support.server"

local SCRIPTS = "spec/fixtures/host/scripts"
local MiB = 1024 * 1024

local function rss_bytes(pid)
  local f = io.open("/proc/" .. pid .. "/status")
  if not f then return 0 end
  local kb = tonumber(f:read("*a"):match("VmRSS:%s*(%d+)"))
  f:close()
  return (kb or 0) * 1024
end

local function metric(srv, name)
  local res = assert(raw.request(srv.port, "GET", "/metrics"))
  return tonumber(("\n" .. res.body):match("\n" .. name:gsub("[%-%.%[%]%{%}\"]", "%%%0") .. " ([%d%.e%+]+)")) or 0
end

-- How long GET /health takes on a new connection, in seconds (nil when it was not answered).
local function health_time(port)
  local t0 = socket.gettime()
  local res = raw.request(port, "GET", "/health", { timeout = 2 })
  if not res or res.status ~= 200 then return nil end
  return socket.gettime() - t0
end

-- A connection that was closed by the server: a read returns "closed" (not "timeout").
local function closed_by_server(sock, wait)
  sock:settimeout(wait or 1)
  local _, err = sock:receive(1)
  return err == "closed"
end

local function upload_head(len, path)
  return ("POST %s HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\nContent-Length: %d\r\n\r\n")
    :format(path or "/echo", len)
end

describe("a service under 2,000 idle connections and 200 slow uploads", function()
  local BUDGET = 16 * MiB

  it("keeps answering /health within 100 ms, its RSS under the body budget plus 50 MB", function()
    local srv = server.start { service = "product", scripts = SCRIPTS, workers = 2,
                               env = { BODY_BUFFER_BUDGET = "16m", REQUEST_READ_TIMEOUT_MS = 60000 } }
    local socks = {}
    finally(function()
      for _, s in ipairs(socks) do s:close() end
      srv:stop()
    end)
    local base_rss = rss_bytes(srv.pid)
    for i = 1, 2000 do socks[i] = assert(raw.connect(srv.port, 5)) end
    local uploads = {}
    local chunk = string.rep("u", 64 * 1024)
    for i = 1, 200 do
      local s = assert(raw.connect(srv.port, 5))
      socks[#socks + 1] = s
      uploads[i] = s
      assert(s:send(upload_head(MiB)))
    end
    -- Each upload sends 384 KiB at once (75 MiB in all, past the 16 MiB budget), then trickles.
    for _ = 1, 6 do
      for _, s in ipairs(uploads) do assert(s:send(chunk)) end
    end
    local times, max_rss = {}, 0
    for round = 1, 20 do
      for _, s in ipairs(uploads) do
        s:settimeout(0)
        s:send("t")   -- a byte each round: slow, never finished
      end
      local t = health_time(srv.port)
      times[#times + 1] = t or 99
      max_rss = math.max(max_rss, rss_bytes(srv.pid))
      if round < 20 then socket.sleep(0.1) end
    end
    table.sort(times)
    print(("# base RSS %.1f MiB, max RSS %.1f MiB (budget %d MiB), /health median %.1f ms, max %.1f ms")
      :format(base_rss / MiB, max_rss / MiB, BUDGET / MiB, times[10] * 1000, times[#times] * 1000))
    local open = metric(srv, "http_connections")
    print(("# %d connections open"):format(open))
    assert.is_true(times[#times] < 0.1, ("/health took %.0f ms"):format(times[#times] * 1000))
    assert.is_true(max_rss < BUDGET + 50 * MiB, ("RSS reached %.1f MiB"):format(max_rss / MiB))
    assert.is_true(open >= 2200, "only " .. open .. " connections were open")
    assert.is_true(metric(srv, "http_body_buffer_bytes") <= BUDGET)
    assert.is_true(metric(srv, "http_body_budget_refusals_total") > 0)
  end)
end)

describe("the body buffer budget", function()
  it("answers 503 past BODY_BUFFER_BUDGET, and serves bodies again once it is free", function()
    local srv = server.start { service = "product", scripts = SCRIPTS, workers = 1, env = { BODY_BUFFER_BUDGET = "100k" } }
    finally(function() srv:stop() end)
    local holder = assert(raw.connect(srv.port))
    assert(holder:send(upload_head(80 * 1024) .. string.rep("h", 70 * 1024)))
    socket.sleep(0.2)   -- 70 KiB buffered of 100: the next 40 KiB do not fit
    local res = assert(raw.request(srv.port, "POST", "/echo", { body = string.rep("b", 40 * 1024) }))
    assert.equal(503, res.status)
    assert.equal("application/problem+json", res.headers["content-type"])
    assert.equal(503, cjson.decode(res.body).status)
    assert.is_truthy(res.headers["retry-after"])
    assert(holder:send(string.rep("h", 10 * 1024)))   -- finishes: the held upload is answered
    assert.equal(200, assert(raw.read_response(holder)).status)
    holder:close()
    res = assert(raw.request(srv.port, "POST", "/echo", { body = string.rep("b", 40 * 1024) }))
    assert.equal(200, res.status)
    assert.equal(0, metric(srv, "http_body_buffer_bytes"))
    assert.equal(0, srv:stop())
  end)
end)

describe("a request that takes too long to arrive", function()
  it("is cut at REQUEST_READ_TIMEOUT_MS, trickling or silent, headers or body", function()
    local srv = server.start { service = "product", scripts = SCRIPTS, workers = 1, env = { REQUEST_READ_TIMEOUT_MS = 1000 } }
    finally(function() srv:stop() end)
    local trickle = assert(raw.connect(srv.port))
    local silent = assert(raw.connect(srv.port))
    local headers = assert(raw.connect(srv.port))
    local t0 = socket.gettime()
    assert(trickle:send(upload_head(1000) .. "abc"))
    assert(silent:send(upload_head(1000) .. "abc"))
    assert(headers:send("GET /hello HTTP/1.1\r\nHost: x\r\n"))
    local cut = {}
    while socket.gettime() - t0 < 3 and #cut < 3 do
      trickle:settimeout(0)
      trickle:send("t")
      headers:send("X-Slow: 1\r\n")
      for name, s in pairs { trickle = trickle, silent = silent, headers = headers } do
        if not cut[name] and closed_by_server(s, 0.05) then cut[name] = socket.gettime() - t0; cut[#cut + 1] = name end
      end
      socket.sleep(0.1)
    end
    for _, name in ipairs { "trickle", "silent", "headers" } do
      assert.is_truthy(cut[name], name .. " was not cut")
      assert.is_true(cut[name] > 0.9 and cut[name] < 2.5, name .. " cut after " .. tostring(cut[name]))
    end
    assert.is_true(metric(srv, "http_read_timeouts_total") >= 3)
    assert.equal(200, assert(raw.request(srv.port, "GET", "/hello")).status)   -- a prompt one is served
    assert.equal(0, srv:stop())
  end)
end)

describe("connection limits", function()
  it("close connections past MAX_CONNECTIONS, and take new ones once others left", function()
    local srv = server.start { service = "product", scripts = SCRIPTS, workers = 2, env = { MAX_CONNECTIONS = 40 } }
    local socks = {}
    finally(function() for _, s in ipairs(socks) do s:close() end srv:stop() end)
    socket.sleep(0.2)   -- server.start's own probe connection is closed
    for i = 1, 40 do socks[i] = assert(raw.connect(srv.port)) end
    socket.sleep(0.2)
    local extra = assert(raw.connect(srv.port))
    assert.is_true(closed_by_server(extra))
    extra:close()
    for i = 1, 5 do socks[i]:close() end
    socket.sleep(0.2)
    assert.equal(200, assert(raw.request(srv.port, "GET", "/hello")).status)
    assert.is_true(metric(srv, 'http_connections_refused_total{reason="total"}') >= 1)
  end)

  it("close a client's connections past MAX_CONNECTIONS_PER_IP, unless it is a trusted proxy", function()
    local srv = server.start { service = "product", scripts = SCRIPTS, workers = 2,
                               env = { MAX_CONNECTIONS_PER_IP = 10, TRUSTED_PROXIES = "192.0.2.1" } }
    local socks = {}
    finally(function() for _, s in ipairs(socks) do s:close() end srv:stop() end)
    socket.sleep(0.2)   -- server.start's own probe connection is closed
    for i = 1, 10 do socks[i] = assert(raw.connect(srv.port)) end
    socket.sleep(0.2)
    local extra = assert(raw.connect(srv.port))
    assert.is_true(closed_by_server(extra))
    extra:close()
    for i = 1, 3 do socks[i]:close() end   -- room for the two requests below
    socket.sleep(0.2)
    assert.equal(200, assert(raw.request(srv.port, "GET", "/hello")).status)
    assert.is_true(metric(srv, 'http_connections_refused_total{reason="per_ip"}') >= 1)
    assert.equal(0, srv:stop())

    -- Loopback is a trusted proxy by default (the gateway): its connections are not counted per IP.
    local proxied = server.start { service = "product", scripts = SCRIPTS, workers = 2, env = { MAX_CONNECTIONS_PER_IP = 10 } }
    finally(function() proxied:stop() end)
    for i = 11, 30 do socks[i] = assert(raw.connect(proxied.port)) end
    assert.equal(200, assert(raw.request(proxied.port, "GET", "/hello")).status)
  end)
end)
