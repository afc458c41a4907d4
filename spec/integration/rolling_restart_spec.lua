-- spec/integration/rolling_restart_spec.lua: the zero-downtime rehearsal without Kubernetes
-- (issue 16). Under steady load through the gateway, a new product process starts beside the
-- old one on the same port (LISTEN_MODE=reuseport), then the old one gets SIGTERM; over
-- ROLLING_CYCLES (10) cycles not one request may fail. The tally goes to
-- .run/test/rolling_restart.txt (and a TAP comment) for the deployment note.
--   build/mercato lua spec/support/busted.lua -o TAP spec/integration/rolling_restart_spec.lua
local socket = require "socket"
local P = require "support.product_helpers"
local server = require "support.server"

local CYCLES = tonumber(os.getenv("ROLLING_CYCLES") or "10")

local function read(path)
  local f = io.open(path)
  if not f then return "" end
  local s = f:read("*a")
  f:close()
  return s
end

local function count(s, pattern)
  local n = 0
  for _ in s:gmatch(pattern) do n = n + 1 end
  return n
end

-- Wait until a process's log says it listens (the socket has joined the port's group).
local function wait_listening(srv, timeout)
  local deadline = socket.gettime() + timeout
  while socket.gettime() < deadline do
    if srv:log():find("listening on", 1, true) then return true end
    socket.sleep(0.02)
  end
  return false
end

describe("a rolling restart on one port (LISTEN_MODE=reuseport)", function()
  local svc, gateway, env, dir, wrk_pid
  local generations = {}

  setup(function()
    dir = ".run/test/rolling-" .. server.free_port()
    os.execute("rm -rf " .. dir .. " && mkdir -p " .. dir)
    local _, pub = P.keys()
    svc = P.start { env = { LISTEN_MODE = "reuseport", WORKERS = 2 } }
    env = { DATABASE_URL = svc.db_url, REDIS_URL = os.getenv("REDIS_URL"), AMQP_URL = os.getenv("AMQP_URL") or false,
            JWT_PUBLIC_KEY_FILE = pub, ELASTICSEARCH_URL = false, LISTEN_MODE = "reuseport", WORKERS = 2 }
    local down = "http://127.0.0.1:" .. server.free_port()
    gateway = server.start { service = "gateway", env = { PRODUCT_SERVICE_URL = svc.url, RATE_LIMIT_GLOBAL = "off",
      USER_SERVICE_URL = down, ORDER_SERVICE_URL = down, PAYMENT_SERVICE_URL = down, NOTIFICATION_SERVICE_URL = down } }
  end)

  teardown(function()
    if wrk_pid then os.execute("kill -INT " .. wrk_pid .. " 2>/dev/null") end   -- a failed cycle left it running
    for _, g in ipairs(generations) do if g.pid then g:stop() end end
    if gateway then gateway:stop() end
    P.stop(svc)
  end)

  it("serves every request while " .. CYCLES .. " new processes replace the old ones", function()
    local product = P.create(svc, P.party("seller"))
    local script = dir .. "/load.lua"
    local f = assert(io.open(script, "w"))
    -- Steady, paced load (about 1.5k req/s with 16 connections), two routes of the service.
    f:write(([[
local paths = { "/products/%s", "/products?limit=5" }
local i = 0
request = function() i = i + 1; return wrk.format("GET", paths[i %% 2 + 1]) end
delay = function() return 10 end
]]):format(product.id))
    f:close()
    local report = dir .. "/wrk.txt"
    wrk_pid = io.popen(("wrk -t2 -c16 -d600s -s %s http://127.0.0.1:%d > %s 2>&1 & echo $!")
      :format(script, gateway.port, report)):read("*l")
    socket.sleep(1)

    local old, drains = svc, {}
    for cycle = 1, CYCLES do
      local new = server.start { service = "product", scripts = "scripts", env = env, port = svc.port, wait = false,
                                 tag = ("product-%d-gen%d"):format(svc.port, cycle) }
      generations[#generations + 1] = new
      assert.is_true(wait_listening(new, 20), "generation " .. cycle .. " did not start:\n" .. new:log())
      socket.sleep(0.3)   -- both serve for a moment, as two pods would
      local t0 = socket.gettime()
      local status = old:stop()
      drains[#drains + 1] = ("%.0f"):format((socket.gettime() - t0) * 1000)
      assert.equal(0, status, "the old process did not stop cleanly:\n" .. old:log())
      if old == svc then svc.pid = nil else old.pid = nil end
      old = new
      socket.sleep(0.3)
    end
    socket.sleep(0.5)
    os.execute("kill -INT " .. wrk_pid)
    wrk_pid = nil
    local text
    for _ = 1, 100 do
      text = read(report)
      if text:find("Requests/sec", 1, true) then break end
      socket.sleep(0.05)
    end
    local requests = tonumber(text:match("(%d+) requests in"))
    local non2xx = tonumber(text:match("Non%-2xx or 3xx responses: (%d+)") or "0")
    local errors = text:match("Socket errors: ([^\n]+)")
    -- Each generation served its share: the access lines in every log but the first.
    local served = {}
    for i, g in ipairs(generations) do served[i] = count(g:log(), '"path":"/products') end
    local tally = ("rolling restart: %d cycles, %s requests through the gateway, %d non-2xx, socket errors: %s; "
      .. "drain ms per cycle: %s; requests served per new generation: %s")
      :format(CYCLES, tostring(requests), non2xx, errors or "none", table.concat(drains, " "), table.concat(served, " "))
    local out = assert(io.open(".run/test/rolling_restart.txt", "w"))
    out:write(tally, "\n\n", text)
    out:close()
    print("# " .. tally)
    assert.is_true(requests ~= nil and requests > 1000, text)
    assert.equal(0, non2xx, tally .. "\n" .. text)
    assert.is_nil(errors, tally .. "\n" .. text)
    for i = 1, #served - 1 do assert.is_true(served[i] > 0, "generation " .. i .. " served nothing: " .. tally) end
  end)
end)
