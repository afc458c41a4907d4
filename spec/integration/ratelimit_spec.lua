-- Rate limits over real HTTP: a route's `rate_limit` under concurrency, shared by replicas
-- through Redis, falling back in-process when Redis is down, client addresses behind trusted
-- proxies, the gateway's global limit, and the `ratelimit` Lua API.
-- REDIS_URL=redis://127.0.0.1:29379/0 build/mercato lua spec/support/busted.lua -o TAP spec/integration/ratelimit_spec.lua
local cjson = require "cjson"
local socket = require "socket"
local cache = require "cache"
local raw = require "support.raw_http"
local server = require "support.server"

local FIXTURE = "spec/fixtures/ratelimit/scripts"
local REDIS_URL = os.getenv("REDIS_URL")

-- Forget every bucket the fixture uses, so runs do not see each other's state.
local function flush()
  local keys = cache.call("KEYS", "ratelimit:*")
  if type(keys) == "table" and #keys > 0 then cache.call("DEL", unpack(keys)) end
end

local function start(env, opts)
  opts = opts or {}
  local e = { REDIS_URL = REDIS_URL, RATE_LIMIT_AUTH = "20/min" }
  for k, v in pairs(env or {}) do e[k] = v end
  return server.start { service = opts.service or "user", scripts = FIXTURE, workers = opts.workers or 4, env = e }
end

-- One request from a chosen local address (127.0.0.2 is a client no proxy list trusts).
local function request(port, method, path, headers, from)
  local sock = assert(socket.tcp())
  sock:settimeout(5)
  if from then assert(sock:bind(from, 0)) end
  assert(sock:connect("127.0.0.1", port))
  local res = assert(raw.request(port, method, path, { headers = headers, sock = sock, body = method == "POST" and "" or nil }))
  sock:close()
  return res
end

-- n requests in flight at once: every socket connected and its request sent before any
-- answer is read. Returns the responses and the count per status.
local function burst(port, n, path, headers)
  local socks = {}
  for i = 1, n do
    local s = assert(socket.tcp())
    s:settimeout(10)
    assert(s:connect("127.0.0.1", port))
    socks[i] = s
  end
  local lines = { "POST " .. path .. " HTTP/1.1", "Host: x", "Content-Length: 0", "Connection: close" }
  for k, v in pairs(headers or {}) do lines[#lines + 1] = k .. ": " .. v end
  local req = table.concat(lines, "\r\n") .. "\r\n\r\n"
  for _, s in ipairs(socks) do assert(s:send(req)) end
  local out, count = {}, {}
  for i, s in ipairs(socks) do
    out[i] = assert(raw.read_response(s))
    s:close()
    count[out[i].status] = (count[out[i].status] or 0) + 1
  end
  return out, count
end

local function metric(port, line)
  local body = assert(raw.request(port, "GET", "/metrics")).body
  local pattern = "\n" .. line:gsub("[%(%)%.%%%+%-%*%?%[%]%^%$]", "%%%0") .. " (%S+)"
  return tonumber(body:match(pattern))
end

describe("rate limits", function()
  assert(REDIS_URL, "REDIS_URL must be set (scripts/dev/stack.sh env)")

  describe("on a route, with Redis", function()
    local a, b

    setup(function()
      flush()
      a = start()
      b = start()
    end)

    teardown(function()
      assert.equal(0, a:stop())
      assert.equal(0, b:stop())
      flush()
    end)

    before_each(flush)

    it("lets exactly 20 of 200 concurrent requests from one client through", function()
      local res, count = burst(a.port, 200, "/auth/login")
      assert.equal(20, count[200])
      assert.equal(180, count[429])
      for _, r in ipairs(res) do
        assert.equal("20", r.headers["ratelimit-limit"])
        assert.matches("^%d+$", r.headers["ratelimit-remaining"])
        assert.matches("^%d+$", r.headers["ratelimit-reset"])
      end
    end)

    it("answers 429 as a problem with Retry-After and RateLimit-* headers", function()
      burst(a.port, 20, "/auth/login")
      local r = request(a.port, "POST", "/auth/login")
      assert.equal(429, r.status)
      assert.equal("application/problem+json", r.headers["content-type"])
      local p = cjson.decode(r.body)
      assert.equal(429, p.status)
      assert.equal("Too Many Requests", p.title)
      assert.equal(r.headers["x-request-id"], p.request_id)
      local retry = tonumber(r.headers["retry-after"])
      assert.is_true(retry >= 1 and retry <= 3)   -- 20/min: one every 3 s
      assert.equal("20", r.headers["ratelimit-limit"])
      assert.equal("0", r.headers["ratelimit-remaining"])
      assert.is_true(tonumber(r.headers["ratelimit-reset"]) >= 57)
      assert.is_true(metric(a.port, 'rate_limit_rejections_total{name="auth"}') >= 1)
    end)

    it("gives allowed answers the headers too, and leaves unlimited routes alone", function()
      local r = request(a.port, "POST", "/auth/login")
      assert.equal(200, r.status)
      assert.equal("20", r.headers["ratelimit-limit"])
      assert.equal("19", r.headers["ratelimit-remaining"])
      assert.equal("3", r.headers["ratelimit-reset"])
      assert.is_nil(request(a.port, "GET", "/ip").headers["ratelimit-limit"])
    end)

    it("holds one limit across two replicas sharing Redis", function()
      local _, ca = burst(a.port, 15, "/auth/login")
      local _, cb = burst(b.port, 15, "/auth/login")
      assert.equal(15, ca[200])
      assert.equal(5, cb[200])
      assert.equal(10, cb[429])
    end)

    it("takes the client from X-Forwarded-For when the peer is a trusted proxy", function()
      local r = cjson.decode(request(a.port, "GET", "/ip", { ["X-Forwarded-For"] = "198.51.100.1, 203.0.113.9" }).body)
      assert.equal("203.0.113.9", r.client_ip)   -- the right-most hop not trusted
      r = cjson.decode(request(a.port, "GET", "/ip", { ["X-Forwarded-For"] = "198.51.100.1, 127.0.0.5" }).body)
      assert.equal("198.51.100.1", r.client_ip)
      r = cjson.decode(request(a.port, "GET", "/ip", { ["X-Forwarded-For"] = "not-an-ip, 127.0.0.5" }).body)
      assert.equal("127.0.0.5", r.client_ip)
      -- one client exhausted; another behind the same proxy is not
      local _, c1 = burst(a.port, 25, "/auth/login", { ["X-Forwarded-For"] = "198.51.100.20" })
      assert.equal(20, c1[200])
      local _, c2 = burst(a.port, 5, "/auth/login", { ["X-Forwarded-For"] = "198.51.100.21" })
      assert.equal(5, c2[200])
    end)

    it("ignores X-Forwarded-For from a peer that is not a trusted proxy", function()
      local r = cjson.decode(request(a.port, "GET", "/ip", { ["X-Forwarded-For"] = "198.51.100.1" }, "127.0.0.2").body)
      assert.equal("198.51.100.1", r.client_ip)   -- 127.0.0.0/8 is trusted by default
      local c = start({ TRUSTED_PROXIES = "10.0.0.0/8" }, { workers = 2 })
      finally(function() c:stop() end)
      r = cjson.decode(request(c.port, "GET", "/ip", { ["X-Forwarded-For"] = "198.51.100.1" }).body)
      assert.equal("127.0.0.1", r.client_ip)
      local ok = 0
      for i = 1, 22 do   -- a new spoofed address per request gets no fresh bucket
        local res = request(c.port, "POST", "/auth/login", { ["X-Forwarded-For"] = "198.51.100." .. i })
        if res.status == 200 then ok = ok + 1 end
      end
      assert.equal(0, c:stop())
      assert.equal(20, ok)
    end)

    it("limits by token subject after auth, and by IP for a caller without a token", function()
      for _ = 1, 3 do assert.equal(200, request(a.port, "GET", "/me").status) end
      local r = request(a.port, "GET", "/me")
      assert.equal(429, r.status)
      assert.equal("3", r.headers["ratelimit-limit"])
    end)

    it("lets a handler's own 429 headers win over the route's", function()
      assert.equal(200, request(a.port, "POST", "/locked?account=x").status)
      local r = request(a.port, "POST", "/locked?account=x")
      assert.equal(429, r.status)
      assert.equal("1", r.headers["ratelimit-limit"])   -- the lock-out's, not the route's 100
      assert.equal("3600", r.headers["retry-after"])
    end)

    it("offers ratelimit.check with cost and peek, and reset, to Lua", function()
      local function check(q)
        return cjson.decode(request(a.port, "GET", "/rl/check?name=acct&key=u%40x.io&limit=3%2Fmin" .. (q or "")).body)
      end
      local p = check("&peek=1")
      assert.is_true(p.allowed)
      assert.equal(2, p.info.remaining)
      assert.equal("redis", p.info.backend)
      assert.equal(1, check("&cost=2").info.remaining)   -- the peek stored nothing
      assert.equal(0, check().info.remaining)
      local d = check("&peek=1")
      assert.is_false(d.allowed)
      assert.equal(20, d.info.retry_after)
      assert.equal(204, request(a.port, "POST", "/rl/reset?name=acct&key=u%40x.io").status)
      assert.is_true(check().allowed)
      local m = cjson.decode(request(a.port, "GET", "/misuse").body)
      assert.is_false(m.ok)
      assert.matches("expecting a name", m.err)
      assert.is_false(m.ok2)
    end)
  end)

  describe("without Redis", function()
    it("falls back to an in-process limit, logs it once and counts it", function()
      local srv = start({ REDIS_URL = "redis://127.0.0.1:" .. server.free_port() .. "/0" })
      finally(function() srv:stop() end)
      local res, count = burst(srv.port, 200, "/auth/login")
      assert.equal(20, count[200])
      assert.equal(180, count[429])
      assert.is_not_nil(res[1].headers["ratelimit-limit"])
      assert.equal(1, metric(srv.port, "rate_limit_fallbacks_total"))
      local log = srv:log()
      assert.equal(0, srv:stop())
      local _, n = log:gsub("Redis is unavailable", "")
      assert.equal(1, n)
    end)

    it("limits in-process when REDIS_URL is unset", function()
      local srv = start({ REDIS_URL = false })
      finally(function() srv:stop() end)
      local _, count = burst(srv.port, 50, "/auth/login")
      assert.equal(0, srv:stop())
      assert.equal(20, count[200])
    end)
  end)

  describe("at the gateway", function()
    local user, gw

    setup(function()
      flush()
      user = start({ TRUSTED_PROXIES = "127.0.0.1/32", RATE_LIMIT_AUTH = "100/min" }, { workers = 2 })
      gw = start({ TRUSTED_PROXIES = "127.0.0.1/32", RATE_LIMIT_GLOBAL = "8/min",
                   USER_SERVICE_URL = "http://127.0.0.1:" .. user.port }, { service = "gateway", workers = 2 })
    end)

    teardown(function()
      assert.equal(0, gw:stop())
      assert.equal(0, user:stop())
      flush()
    end)

    it("forwards the real client in X-Forwarded-For and applies the global per-IP limit", function()
      -- from 127.0.0.2 (untrusted): a spoofed X-Forwarded-For reaches the service but loses
      local r = request(gw.port, "GET", "/users/ip", { ["X-Forwarded-For"] = "6.6.6.6" }, "127.0.0.2")
      assert.equal(200, r.status)
      assert.equal("127.0.0.2", cjson.decode(r.body).client_ip)
      assert.equal("8", r.headers["ratelimit-limit"])
      assert.equal("7", r.headers["ratelimit-remaining"])
      -- the service's own policy wins on its limited route
      r = request(gw.port, "POST", "/auth/login", nil, "127.0.0.2")
      assert.equal("100", r.headers["ratelimit-limit"])
      local statuses = {}
      for i = 1, 8 do
        statuses[i] = request(gw.port, "GET", "/users/ip", { ["X-Forwarded-For"] = "7.7.7." .. i }, "127.0.0.2").status
      end
      assert.same({ 200, 200, 200, 200, 200, 200, 429, 429 }, statuses)
      r = request(gw.port, "GET", "/users/ip", nil, "127.0.0.2")
      assert.equal(429, r.status)
      assert.equal("application/problem+json", r.headers["content-type"])
      assert.is_true(tonumber(r.headers["retry-after"]) >= 1)
      assert.is_true(metric(gw.port, 'rate_limit_rejections_total{name="global"}') >= 3)
      -- another client is unaffected
      assert.equal(200, request(gw.port, "GET", "/users/ip", nil, "127.0.0.3").status)
    end)
  end)
end)
