-- The host's life cycle: hot reload under load, refused reloads, graceful stop.
local cjson = require "cjson"
local socket = require "socket"
local raw = require "support.raw_http"
local server = require "support.server"

local function write(path, text)
  local f = assert(io.open(path, "w"))
  f:write(text)
  f:close()
end

local function version(port)
  local res = raw.request(port, "GET", "/version")
  return res and res.status == 200 and cjson.decode(res.body).version
end

describe("hot reload", function()
  local srv, dir

  setup(function()
    dir = ".run/test/reload-" .. server.free_port()
    os.execute("rm -rf " .. dir .. " && mkdir -p " .. dir .. " && cp -r spec/fixtures/host/scripts " .. dir .. "/")
    srv = server.start { service = "product", scripts = dir .. "/scripts", env = { HOT_RELOAD = 1 } }
  end)

  teardown(function()
    srv:stop()
    os.execute("rm -rf " .. dir)
  end)

  it("swaps a handler under load with no failed request, within a second", function()
    assert.equal(1, version(srv.port))
    local out = dir .. "/wrk.txt"
    os.execute(string.format("wrk -t2 -c16 -d3s http://127.0.0.1:%d/version > %s 2>&1 &", srv.port, out))
    socket.sleep(1)
    local t0 = socket.gettime()
    write(dir .. "/scripts/services/product/version.lua", "return { number = 2 }\n")
    local seen
    repeat
      seen = version(srv.port)
      if seen ~= 2 then socket.sleep(0.005) end
    until seen == 2 or socket.gettime() - t0 > 5
    local took = socket.gettime() - t0
    assert.equal(2, seen)
    assert.is_true(took < 1, "the new response took " .. took .. " s")
    socket.sleep(2.5)   -- let wrk finish
    local report = assert(io.open(out)):read("*a")
    local requests = tonumber(report:match("(%d+) requests in"))
    assert.is_true(requests and requests > 1000, report)
    assert.is_nil(report:match("Non%-2xx"), report)
    assert.is_nil(report:match("Socket errors"), report)
  end)

  it("keeps the old code when the new one fails its check, and says where", function()
    write(dir .. "/scripts/services/product/version.lua", "return { number = 3 \n")
    socket.sleep(0.5)
    assert.equal(2, version(srv.port))
    assert.truthy(srv:log():find("script reload refused", 1, true))
    assert.truthy(srv:log():find("services/product/version.lua:2:", 1, true))
    local m = raw.request(srv.port, "GET", "/metrics").body
    assert.matches("script_reload_errors_total 1\n", m, 1, true)
    write(dir .. "/scripts/services/product/version.lua", "return { number = 4 }\n")
    local t0 = socket.gettime()
    while version(srv.port) ~= 4 and socket.gettime() - t0 < 2 do socket.sleep(0.01) end
    assert.equal(4, version(srv.port))
  end)
end)

describe("graceful stop", function()
  it("finishes in-flight requests, then exits 0", function()
    local srv = server.start { service = "product", scripts = "spec/fixtures/host/scripts" }
    local sock = assert(raw.connect(srv.port, 10))
    sock:send("GET /slow?ms=800 HTTP/1.1\r\nHost: x\r\n\r\n")
    socket.sleep(0.2)
    os.execute("kill -TERM " .. srv.pid)
    local res = assert(raw.read_response(sock))
    sock:close()
    assert.equal(200, res.status)
    assert.same({ slept_ms = 800 }, cjson.decode(res.body))
    assert.equal("close", res.headers["connection"])
    assert.equal(0, srv:stop())
    assert.is_nil(raw.connect(srv.port, 1))
  end)

  it("exits 2 naming the valid services when SERVICE is wrong", function()
    local p = io.popen("SERVICE=inventory " .. (os.getenv("MERCATO_BIN") or "build/mercato") .. " 2>&1; echo rc=$?")
    local out = p:read("*a")
    p:close()
    assert.matches("rc=2", out)
    assert.matches("user, product, order, payment, notification, gateway", out)
  end)
end)
