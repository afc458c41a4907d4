-- spec/integration/reuseport_stop_spec.lua: SIGTERM under LISTEN_MODE=reuseport — the stopping
-- process leaves the port's socket group at once (new connections go to the process beside
-- it) and still serves what had queued on its own sockets (host/server.c, release_listener).
--   build/mercato lua spec/support/busted.lua -o TAP spec/integration/reuseport_stop_spec.lua
local cjson = require "cjson"
local socket = require "socket"
local raw = require "support.raw_http"
local server = require "support.server"

-- A copy of the host fixture whose GET /version answers `number`.
local function scripts(dir, number)
  os.execute(("rm -rf %s && mkdir -p %s && cp -r spec/fixtures/host/scripts %s/"):format(dir, dir, dir))
  local f = assert(io.open(dir .. "/scripts/services/product/version.lua", "w"))
  f:write("return { number = " .. number .. " }\n")
  f:close()
  return dir .. "/scripts"
end

local function send_version(port)
  local sock = assert(raw.connect(port, 5))
  assert(sock:send("GET /version HTTP/1.1\r\nHost: x\r\n\r\n"))
  return sock
end

local function answer(sock)
  local res, err = raw.read_response(sock)
  sock:close()
  return res and res.status == 200 and cjson.decode(res.body).version, res and res.status or err
end

describe("SIGTERM with LISTEN_MODE=reuseport", function()
  local base, procs = nil, {}
  local function start(opts)
    local srv = server.start(opts)
    procs[#procs + 1] = srv
    return srv
  end

  setup(function() base = ".run/test/reuseport-" .. server.free_port() end)
  after_each(function()
    for _, p in ipairs(procs) do if p.pid then p:stop() end end
    procs = {}
  end)
  teardown(function() os.execute("rm -rf " .. base) end)

  it("hands new connections to the process beside it while it drains", function()
    local old = start { service = "product", scripts = scripts(base .. "/old", 1),
                     env = { LISTEN_MODE = "reuseport", WORKERS = 2 } }
    local new = start { service = "product", scripts = scripts(base .. "/new", 2), port = old.port,
                     tag = "product-" .. old.port .. "-new", env = { LISTEN_MODE = "reuseport", WORKERS = 2 } }
    -- a request in flight on the old process when it stops: its body is still arriving
    local slow
    for _ = 1, 40 do
      slow = assert(raw.connect(old.port, 10))
      slow:send("GET /version HTTP/1.1\r\nHost: x\r\n\r\n")
      local res = raw.read_response(slow)
      if res and cjson.decode(res.body).version == 1 then break end
      slow:close()
      slow = nil
    end
    assert.truthy(slow, "no keep-alive connection reached the old process")
    slow:send("POST /upload HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\nContent-Length: 10\r\n\r\n12345")
    socket.sleep(0.2)
    os.execute("kill -TERM " .. old.pid)
    socket.sleep(0.2)
    for i = 1, 30 do
      local v, why = answer(send_version(old.port))
      assert.equal(2, v, "connection " .. i .. " after the stop: " .. tostring(why))
    end
    slow:send("67890")
    local res = assert(raw.read_response(slow))   -- the in-flight request still finished
    slow:close()
    assert.equal(201, res.status)
    assert.same({ bytes = 10 }, cjson.decode(res.body))
    assert.equal("close", res.headers["connection"])
    assert.equal(0, old:stop())
    assert.equal(0, new:stop())
  end)
end)
