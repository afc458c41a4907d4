-- Handlers waiting on Redis over HTTP: the coroutine path (cache.call/pipeline/eval park the
-- handler on the thread's async connection while the thread serves other requests).
-- REDIS_URL=redis://127.0.0.1:29379/0 build/mercato lua spec/support/busted.lua spec/integration/async_spec.lua
local cjson = require "cjson"
local socket = require "socket"
local raw = require "support.raw_http"
local server = require "support.server"

local SCRIPTS = "spec/fixtures/async/scripts"
local url = os.getenv("REDIS_URL")
local hostport = ((url or ""):match("^redis://([^/]*)") or ""):gsub("^.*@", "")
local rhost, rport = hostport:match("^([^:]+):?(%d*)$")
rport = rport ~= "" and rport or "6379"

local function redis_cli(...)
  local args = {}
  for i, a in ipairs({ ... }) do args[i] = "'" .. tostring(a):gsub("'", "'\\''") .. "'" end
  local p = assert(io.popen(("redis-cli -h %s -p %s %s 2>&1"):format(rhost, rport, table.concat(args, " "))))
  local out = p:read("*a")
  p:close()
  return (out:gsub("%s+$", ""))
end

local function json(res) return cjson.decode(res.body) end

-- A TCP server that accepts connections (in the kernel's backlog) and never answers.
local function black_hole()
  local s = assert(socket.bind("127.0.0.1", 0))
  local _, port = s:getsockname()
  return s, tonumber(port)
end

describe("handlers waiting on Redis", function()
  assert(url, "REDIS_URL must be set (scripts/dev/stack.sh env)")
  local srv
  local run = ("%d%d"):format(os.time(), math.random(1e6))

  setup(function()
    srv = server.start { service = "product", scripts = SCRIPTS, workers = 1, env = { REDIS_URL = url } }
  end)

  teardown(function()
    local keys = redis_cli("--scan", "--pattern", "spec:async:*")
    for k in keys:gmatch("[^\n]+") do redis_cli("DEL", k) end
    assert.equal(0, srv:stop())
  end)

  local function get(path, headers) return assert(raw.request(srv.port, "GET", path, { headers = headers })) end

  it("answer with what Redis returned", function()
    redis_cli("HSET", "bench:item:spec" .. run, "name", "Item", "stock", "7")
    local res = get("/redis/spec" .. run)
    assert.equal(200, res.status)
    assert.same({ name = "Item", stock = "7" }, json(res))
    redis_cli("DEL", "bench:item:spec" .. run)
  end)

  it("map pipeline replies as the blocking path does (nil → false, error → { err })", function()
    local doc = json(get("/pipeline/" .. run))
    assert.equal(5, doc.n)
    assert.same({ 0, "OK", "v", false, { err = "ERR value is not an integer or out of range" } }, doc.replies)
  end)

  it("run a script by its SHA, loading it with EVAL when the server lost it", function()
    assert.same({ "a", 7 }, json(get("/eval/" .. run .. "?v=a")).r)
    assert.same({ "b", 7 }, json(get("/eval/" .. run .. "?v=b")).r)
    assert.equal("OK", redis_cli("SCRIPT", "FLUSH"))
    assert.same({ "c", 7 }, json(get("/eval/" .. run .. "?v=c")).r)
  end)

  it("return nil, msg, code for an error reply", function()
    local doc = json(get("/error/" .. run))
    assert.same({ v = false, err = "ERR value is not an integer or out of range", code = "invalid" }, doc)
  end)

  it("still see their own request after each wait", function()
    local doc = json(get("/twice/" .. run .. "?q=z"))
    assert.same({ a = "OK", b = run, p1 = "/twice/" .. run, p2 = "/twice/" .. run, q = "z" }, doc)
  end)

  it("use the blocking path inside a coroutine of their own", function()
    assert.same({ r = "PONG" }, json(get("/wrapped")))
  end)

  it("answer 500 with a traceback logged when they raise, before or after a wait", function()
    local res = get("/misuse")
    assert.equal(500, res.status)
    local rid = res.headers["x-request-id"]
    res = get("/raise-after-wait")
    assert.equal(500, res.status)
    local rid2 = res.headers["x-request-id"]
    socket.sleep(1.2)   -- the error lines are written at once, the access lines within a second
    local log = srv:log()
    assert.matches(rid .. '","route":"/misuse","error":"[^"]*expecting a string or number, got table', log)
    assert.matches(rid2 .. '","route":"/raise%-after%-wait","error":"[^"]*raised after a wait\\nstack traceback:', log)
  end)

  it("answer 500 when a handler yields by itself", function()
    assert.equal(500, get("/yield").status)
  end)

  it("interleave 200 concurrent requests on one thread, each seeing its own values", function()
    local socks = {}
    for i = 1, 200 do
      local s = assert(raw.connect(srv.port))
      local req = ("POST /incr/c%s-%d?q=%d HTTP/1.1\r\nHost: x\r\nX-Tag: t%d\r\nX-Request-Id: rid-%d\r\n")
        :format(run, i, i, i, i) .. "Content-Length: 0\r\n\r\n"
      assert(s:send(req))
      socks[i] = s
    end
    for i = 1, 200 do
      local res = assert(raw.read_response(socks[i]))
      socks[i]:close()
      assert.equal(200, res.status)
      assert.same({ incr = 1, get = "1", q = tostring(i), tag = "t" .. i, id = "rid-" .. i }, json(res))
    end
  end)

  it("count each call's time in redis_command_duration_seconds", function()
    local function count(m) return tonumber(m:match("\nredis_command_duration_seconds_count (%d+)")) or 0 end
    local before = count(get("/metrics").body)
    for _ = 1, 3 do assert.equal(200, get("/redis/none" .. run).status) end
    local m = get("/metrics").body
    assert.matches("# TYPE redis_command_duration_seconds histogram", m, 1, true)
    assert.equal(before + 3, count(m))
    local last = tonumber(m:match('\nredis_command_duration_seconds_bucket{le="%+Inf"} (%d+)'))
    assert.equal(count(m), last)
    assert.is_true(tonumber(m:match("\nredis_command_duration_seconds_sum ([%d.e%-]+)")) > 0)
  end)

  it("reconnect after the server closed the connection", function()
    assert.equal(200, get("/redis/x").status)
    redis_cli("CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes")
    socket.sleep(0.1)
    assert.equal(200, get("/redis/x").status)
  end)
end)

describe("a handler whose Redis is away", function()
  it("gets nil, err, \"unavailable\" when nothing listens", function()
    local srv = server.start { service = "product", scripts = SCRIPTS, workers = 1,
                               env = { REDIS_URL = "redis://127.0.0.1:1" } }
    local res = assert(raw.request(srv.port, "GET", "/redis/1"))
    assert.equal(0, srv:stop())
    assert.equal(503, res.status)
    assert.equal("unavailable", json(res).code)
  end)

  it("gets nil, err, \"timeout\" at REDIS_TIMEOUT_MS while its thread serves others", function()
    local hole, port = black_hole()
    local srv = server.start { service = "product", scripts = SCRIPTS, workers = 1,
                               env = { REDIS_URL = "redis://127.0.0.1:" .. port, REDIS_TIMEOUT_MS = 600 } }
    local waiting = assert(raw.connect(srv.port))
    assert(waiting:send("GET /redis/1 HTTP/1.1\r\nHost: x\r\n\r\n"))
    local t0 = socket.gettime()
    local health = assert(raw.request(srv.port, "GET", "/health"))
    assert.equal(200, health.status)
    assert.is_true(socket.gettime() - t0 < 0.4, "the thread was blocked")
    local res = assert(raw.read_response(waiting))
    local waited = socket.gettime() - t0
    waiting:close()
    assert.equal(503, res.status)
    assert.equal("timeout", json(res).code)
    assert.is_true(waited > 0.5 and waited < 2, "waited " .. waited)
    assert.equal(0, srv:stop())
    hole:close()
  end)

  it("outlives a client that leaves while its handler waits", function()
    local hole, port = black_hole()
    local srv = server.start { service = "product", scripts = SCRIPTS, workers = 1,
                               env = { REDIS_URL = "redis://127.0.0.1:" .. port, REDIS_TIMEOUT_MS = 300 } }
    for _ = 1, 5 do
      local s = assert(raw.connect(srv.port))
      assert(s:send("GET /redis/1 HTTP/1.1\r\nHost: x\r\n\r\n"))
      s:close()
    end
    socket.sleep(0.6)
    assert.equal(200, assert(raw.request(srv.port, "GET", "/health")).status)
    assert.equal(0, srv:stop())
    hole:close()
  end)

  it("keeps the old generation for handlers parked across a hot reload", function()
    local hole, port = black_hole()
    local dir = ".run/test/async-reload-" .. server.free_port()
    os.execute("rm -rf " .. dir .. " && mkdir -p " .. dir .. " && cp -r " .. SCRIPTS .. " " .. dir .. "/")
    local srv = server.start { service = "product", scripts = dir .. "/scripts", workers = 1,
                               env = { REDIS_URL = "redis://127.0.0.1:" .. port, REDIS_TIMEOUT_MS = 1500,
                                       HOT_RELOAD = 1 } }
    local parked = {}
    for i = 1, 3 do
      parked[i] = assert(raw.connect(srv.port))
      assert(parked[i]:send("GET /redis/1 HTTP/1.1\r\nHost: x\r\n\r\n"))
    end
    socket.sleep(0.1)
    local file = dir .. "/scripts/services/product/handlers.lua"
    local src = assert(io.open(file)):read("*a")
    local f = assert(io.open(file, "w"))
    f:write((src:gsub("local GENERATION = 1", "local GENERATION = 2")))
    f:close()
    local t0 = socket.gettime()
    local function generation() return json(assert(raw.request(srv.port, "GET", "/version"))).generation end
    local seen = generation()
    while seen ~= 2 and socket.gettime() - t0 <= 1.2 do
      socket.sleep(0.02)
      seen = generation()
    end
    assert.equal(2, seen)   -- swapped while the three still wait
    for i = 1, 3 do
      local res = assert(raw.read_response(parked[i]))
      parked[i]:close()
      assert.equal(503, res.status)
      assert.equal("timeout", json(res).code)
    end
    assert.equal(2, json(assert(raw.request(srv.port, "GET", "/version"))).generation)
    assert.equal(0, srv:stop())
    -- Their access lines name their route, not "(previous generation)" (KNOWN).
    local lines = 0
    for line in srv:log():gmatch("[^\n]+") do
      if line:find('"type":"access"', 1, true) and line:find('"path":"/redis/1"', 1, true) then
        lines = lines + 1
        assert.matches('"route":"/redis/{id}"', line)
      end
    end
    assert.equal(3, lines)
    hole:close()
    os.execute("rm -rf " .. dir)
  end)

  it("is drained by a graceful stop, and cut at SHUTDOWN_TIMEOUT_MS", function()
    local hole, port = black_hole()
    local srv = server.start { service = "product", scripts = SCRIPTS, workers = 1,
                               env = { REDIS_URL = "redis://127.0.0.1:" .. port, REDIS_TIMEOUT_MS = 500 } }
    local s = assert(raw.connect(srv.port))
    assert(s:send("GET /redis/1 HTTP/1.1\r\nHost: x\r\n\r\n"))
    socket.sleep(0.1)
    os.execute("kill -TERM " .. srv.pid)
    local res = assert(raw.read_response(s))
    s:close()
    assert.equal(503, res.status)
    assert.equal("close", res.headers["connection"])
    assert.equal(0, srv:stop())

    srv = server.start { service = "product", scripts = SCRIPTS, workers = 1,
                         env = { REDIS_URL = "redis://127.0.0.1:" .. port, REDIS_TIMEOUT_MS = 5000,
                                 SHUTDOWN_TIMEOUT_MS = 200 } }
    s = assert(raw.connect(srv.port, 3))
    assert(s:send("GET /redis/1 HTTP/1.1\r\nHost: x\r\n\r\n"))
    socket.sleep(0.1)
    local t0 = socket.gettime()
    assert.equal(0, srv:stop())
    assert.is_true(socket.gettime() - t0 < 2)
    assert.is_nil(raw.read_response(s))   -- closed without an answer
    s:close()
    hole:close()
  end)
end)
