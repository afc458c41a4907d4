-- The user service under pressure, against a real mercato: the per-IP limit of the auth
-- endpoints (RATE_LIMIT_AUTH), the per-account lock-out after failed logins, and 503 (not
-- 500) while its database refuses connections, recovering without a restart.
local crypto = require "crypto"
local U = require "support.user_helpers"

-- A client address of its own per run (the peer is loopback, a trusted proxy: the service
-- takes the address from X-Forwarded-For), so runs and other specs never share a bucket.
local run = crypto.random(2)
local function fresh_ip(host_part)
  return ("198.%d.%d.%d"):format(18 + run:byte(1) % 2, run:byte(2), host_part)
end

describe("user service limits", function()
  describe("with RATE_LIMIT_AUTH=20/min and 200 logins at once", function()
    local svc
    setup(function() svc = U.start { RATE_LIMIT_AUTH = "20/min", WORKERS = 4 } end)
    teardown(function() assert.equal(0, U.stop(svc)) end)

    it("lets exactly 20 of 200 concurrent login attempts from one IP through", function()
      local socket = require "socket"
      local raw = require "support.raw_http"
      local ip = fresh_ip(3)
      local socks = {}
      for i = 1, 200 do
        local s = assert(socket.tcp())
        s:settimeout(30)
        assert(s:connect("127.0.0.1", svc.port))
        socks[i] = s
      end
      -- every request is written before any answer is read; distinct addresses so that the
      -- per-account lock-out (5 failures) stays out of the count
      for i, s in ipairs(socks) do
        local body = ('{"email":"burst%d@example.com","password":"wrong password"}'):format(i)
        assert(s:send(table.concat({ "POST /auth/login HTTP/1.1", "Host: x", "Content-Type: application/json",
          "X-Forwarded-For: " .. ip, "Content-Length: " .. #body, "Connection: close" }, "\r\n") .. "\r\n\r\n" .. body))
      end
      local count = {}
      for _, s in ipairs(socks) do
        local res = assert(raw.read_response(s))
        s:close()
        count[res.status] = (count[res.status] or 0) + 1
      end
      assert.same({ [401] = 20, [429] = 180 }, count)
    end)
  end)

  describe("with RATE_LIMIT_AUTH=5/min", function()
    local svc
    setup(function() svc = U.start { RATE_LIMIT_AUTH = "5/min" } end)
    teardown(function() assert.equal(0, U.stop(svc)) end)

    it("answers 429 with Retry-After and RateLimit headers past 5 auth requests a minute from one IP", function()
      local ip = fresh_ip(7)
      local statuses = {}
      for i = 1, 7 do
        local res = U.post_json(svc, "/auth/login", { email = "nobody" .. i .. "@example.com", password = "x" },
          { headers = { ["X-Forwarded-For"] = ip } })
        statuses[i] = res.status
        if res.status == 429 then
          assert.matches("^%d+$", res.headers["retry-after"])
          assert.is_true(tonumber(res.headers["retry-after"]) >= 1)
          assert.is_string(res.headers["ratelimit-limit"])
          assert.equal("application/problem+json", res.headers["content-type"])
        end
      end
      assert.equal(401, statuses[1])
      assert.equal(429, statuses[7])
      -- another client is not affected
      local other = U.post_json(svc, "/auth/login", { email = "nobody@example.com", password = "x" },
        { headers = { ["X-Forwarded-For"] = fresh_ip(8) } })
      assert.equal(401, other.status)
    end)

    it("counts /oauth/token password grants against the same limit", function()
      local ip = fresh_ip(9)
      local last
      for _ = 1, 7 do
        last = U.post_form(svc, "/oauth/token", { grant_type = "password", username = "n@example.com", password = "x" },
          { headers = { ["X-Forwarded-For"] = ip } })
      end
      assert.equal(429, last.status)
    end)

    it("does not count the internal client's successful client_credentials requests", function()
      local ip = fresh_ip(10)
      for _ = 1, 8 do
        local res = U.post_form(svc, "/oauth/token", { grant_type = "client_credentials", client_id = U.CLIENT_ID,
          client_secret = U.CLIENT_SECRET }, { headers = { ["X-Forwarded-For"] = ip } })
        assert.equal(200, res.status, res.body)
      end
    end)
  end)

  describe("without the host's ratelimit binding", function()
    local limits, saved

    setup(function()
      saved = { preload = package.preload.ratelimit, loaded = package.loaded.ratelimit,
                limits = package.loaded["services.user.limits"], path = package.path }
      package.path = "scripts/?.lua;" .. package.path   -- services.* are not in this runner's snapshot
      package.loaded.ratelimit = nil
      package.preload.ratelimit = function() error("no ratelimit binding in this host") end
      package.loaded["services.user.limits"] = nil
      limits = require "services.user.limits"
    end)

    teardown(function()
      package.preload.ratelimit, package.loaded.ratelimit = saved.preload, saved.loaded
      package.loaded["services.user.limits"] = saved.limits
      package.path = saved.path
    end)

    local function fake_req(ip)
      return { remote_addr = "127.0.0.1", header = function(_, n) if n == "X-Forwarded-For" then return ip end end }
    end

    it("limits per IP on a fixed window in Redis, and leaves no route option", function()
      assert.is_nil(limits.route_option())
      local ip = fresh_ip(11)
      for _ = 1, 3 do assert.is_nil(limits.ip(fake_req(ip), { limit = "3/min", route = true })) end
      local status, body, headers = limits.ip(fake_req(ip), { limit = "3/min", route = true })
      assert.equal(429, status)
      assert.equal(429, body.status)
      assert.matches("^%d+$", headers["Retry-After"])
      assert.equal("3", headers["RateLimit-Limit"])
      assert.is_nil(limits.ip(fake_req(fresh_ip(12)), { limit = "3/min" }))
    end)

    it("parses N/s, N/min and N/hour and nothing else", function()
      assert.same({ 10, 60 }, { limits.parse("10/min") })
      assert.same({ 5, 1 }, { limits.parse("5/s") })
      assert.same({ 100, 3600 }, { limits.parse("100/hour") })
      for _, bad in ipairs({ "", "10", "0/min", "ten/min", "10/week", "-1/min" }) do assert.is_nil(limits.parse(bad), bad) end
    end)
  end)

  describe("failed logins", function()
    local svc
    setup(function() svc = U.start() end)
    teardown(function() assert.equal(0, U.stop(svc)) end)

    local function login(email, password)
      return U.post_json(svc, "/auth/login", { email = email, password = password })
    end

    it("lock an account out with 429 and Retry-After after 5 failures, even for the right password", function()
      local user = U.register(svc)
      for _ = 1, 5 do assert.equal(401, login(user.email, "wrong password").status) end
      local res = login(user.email, U.PASSWORD)
      assert.equal(429, res.status, res.body)
      assert.matches("^%d+$", res.headers["retry-after"])
      -- Its RateLimit-* headers describe the lock-out, not the per-IP limit that let it through.
      assert.equal("5", res.headers["ratelimit-limit"])
      assert.equal("0", res.headers["ratelimit-remaining"])
      assert.equal(res.headers["retry-after"], res.headers["ratelimit-reset"])
      local grant = U.post_form(svc, "/oauth/token", { grant_type = "password", username = user.email, password = U.PASSWORD })
      assert.equal(429, grant.status)
      os.execute("sleep " .. tonumber(res.headers["retry-after"]) + 0.2)
      assert.equal(200, login(user.email, U.PASSWORD).status)   -- the wait is short at first
    end)

    it("lock an unknown address out the same way, so the lock-out reveals nothing", function()
      local ghost = U.email("ghost")
      for _ = 1, 5 do assert.equal(401, login(ghost, "wrong password").status) end
      assert.equal(429, login(ghost, "wrong password").status)
    end)

    it("reset once the right password gets through", function()
      local user = U.register(svc)
      for _ = 1, 4 do login(user.email, "wrong password") end
      assert.equal(200, login(user.email, U.PASSWORD).status)
      for _ = 1, 4 do assert.equal(401, login(user.email, "wrong password").status) end
    end)
  end)

  describe("while the database refuses connections", function()
    local svc, db, root

    setup(function()
      local base = assert(os.getenv("DATABASE_URL_USER"))
      db = "mercato_user_outage_" .. tostring(os.time())
      root = base:gsub("/[^/]*$", "/postgres")
      U.psql("CREATE DATABASE " .. db, root)
      svc = U.start { DATABASE_URL = base:gsub("/[^/]*$", "/" .. db) }
    end)

    teardown(function()
      U.psql("ALTER DATABASE " .. db .. " WITH ALLOW_CONNECTIONS true", root)
      assert.equal(0, U.stop(svc))
      U.psql("DROP DATABASE IF EXISTS " .. db, root)
    end)

    it("answers 503 problems (never 500) and recovers without a restart", function()
      local s = U.session(svc)
      U.psql("ALTER DATABASE " .. db .. " WITH ALLOW_CONNECTIONS false", root)
      U.psql("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '" .. db .. "'", root)
      local checks = {
        U.post_json(svc, "/auth/register", { email = U.email(), password = U.PASSWORD, name = "A" }),
        U.post_json(svc, "/auth/login", { email = s.email, password = U.PASSWORD }),
        U.request(svc, "GET", "/users/me", { token = s.access }),
        U.post_form(svc, "/oauth/token", { grant_type = "refresh_token", refresh_token = s.refresh }),
      }
      for _, res in ipairs(checks) do
        assert.equal(503, res.status, res.body)
        assert.equal("application/problem+json", res.headers["content-type"])
        assert.is_nil(res.body:find("SELECT", 1, true))
        assert.is_nil(res.body:find("database", 1, true))
      end
      assert.equal(503, U.request(svc, "GET", "/ready").status)
      assert.equal(200, U.request(svc, "GET", "/health").status)
      U.psql("ALTER DATABASE " .. db .. " WITH ALLOW_CONNECTIONS true", root)
      local res
      for _ = 1, 40 do   -- the binding waits a moment before reconnecting after a failure
        res = U.request(svc, "GET", "/users/me", { token = s.access })
        if res.status == 200 then break end
        os.execute("sleep 0.1")
      end
      assert.equal(200, res.status, res.body)
    end)
  end)
end)
