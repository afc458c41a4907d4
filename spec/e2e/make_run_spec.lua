-- luacheck: max line length 150
-- `make run` (scripts/dev/run.sh) as a newcomer meets it (issue 15): the platform comes up with
-- demo data and accounts, writes a shell-quoted .run/env, the README's curl walk-through — taken
-- from the README itself, so it cannot rot — buys a product as written, Ctrl-C stops everything
-- with status 0, and a failed start exits non-zero naming what failed. The platform runs on
-- RUN_PORT_BASE (18080 unless set: engineers sharing a machine each set their own) beside the
-- specs' own servers, on the private stack `make test` started (KEEP_STACK=1: run.sh leaves it up).
local cjson = require "cjson.safe"
local http = require "http"
local socket = require "socket"

local BASE = tonumber(os.getenv("RUN_PORT_BASE") or "") or 18080

local function sh(cmd)
  local p = assert(io.popen(cmd .. " 2>&1; echo \"rc=$?\""))
  local out = p:read("*a")
  p:close()
  local rc = tonumber(out:match("rc=(%d+)%s*$"))
  return (out:gsub("rc=%d+%s*$", "")), rc
end

local function read(path)
  local f = io.open(path, "rb")
  if not f then return nil end
  local s = f:read("*a")
  f:close()
  return s
end

local function alive(pid) return select(2, sh("kill -0 " .. pid)) == 0 end

-- Start run.sh in the background. → pid, log path
local function start_run(extra_env)
  local log = ".run/test/make-run-" .. os.time() .. "-" .. math.random(1e6) .. ".log"
  os.execute("mkdir -p .run/test")
  local p = io.popen(("RUN_PORT_BASE=%d KEEP_STACK=1 %s setsid scripts/dev/run.sh > %s 2>&1 & echo $!"):format(BASE, extra_env or "", log))
  local pid = tonumber(p:read("*l"))
  p:close()
  return pid, log
end

-- Wait for run.sh to exit; → its status (via /proc: it is not our child, so poll and read the log)
local function wait_exit(pid, timeout)
  local deadline = socket.gettime() + timeout
  while alive(pid) and socket.gettime() < deadline do socket.sleep(0.1) end
  return not alive(pid)
end

describe("make run", function()
  local pid, log, env = nil, nil, {}

  setup(function()
    local t0 = socket.gettime()
    pid, log = start_run()
    local deadline = t0 + 180
    while socket.gettime() < deadline and not read(".run/env") do
      assert(alive(pid), "run.sh exited during start-up:\n" .. (read(log) or ""))
      socket.sleep(0.2)
    end
    assert(read(".run/env"), "no .run/env after 180 s:\n" .. (read(log) or ""))
    env.ready_s = socket.gettime() - t0
    for k, v in (read(".run/env")):gmatch("([%w_]+)='([^\n]*)'\n") do env[k] = v:gsub("'\\''", "'") end
  end)
  teardown(function()
    if pid and alive(pid) then os.execute("kill -TERM " .. pid); wait_exit(pid, 30) end
  end)

  it("is ready with every service, demo accounts and the demo catalogue, and says where in .run/env", function()
    print(("# make run: ready in %.1f s"):format(env.ready_s))
    assert.equal("http://127.0.0.1:" .. BASE, env.GATEWAY_URL)
    for _, name in ipairs { "USER", "PRODUCT", "ORDER", "PAYMENT", "NOTIFICATION" } do
      local url = assert(env[name .. "_SERVICE_URL"], name)
      assert.equal(200, http.request { method = "GET", url = url .. "/health" }.status, name)
    end
    for _, k in ipairs { "ADMIN_EMAIL", "ADMIN_PASSWORD", "SERVICE_CLIENT_ID", "SERVICE_CLIENT_SECRET", "STRIPE_WEBHOOK_SECRET",
                         "STRIPE_API_BASE", "SMTP_API_URL", "AMQP_URL", "REDIS_URL", "DATABASE_URL_ORDER", "DEMO_BUYER_EMAIL",
                         "DEMO_BUYER_PASSWORD", "DEMO_SELLER_EMAIL", "DEMO_SELLER_PASSWORD" } do
      assert.is_truthy(env[k] and env[k] ~= "", k)
    end
    for _, who in ipairs { "ADMIN", "DEMO_BUYER", "DEMO_SELLER" } do
      local res = http.request { method = "POST", url = env.GATEWAY_URL .. "/auth/login", headers = { ["Content-Type"] = "application/json" },
        body = cjson.encode { email = env[who .. "_EMAIL"], password = env[who .. "_PASSWORD"] } }
      assert.equal(200, res.status, who)
    end
    local page = cjson.decode(http.request { method = "GET", url = env.GATEWAY_URL .. "/products?limit=100" }.body)
    assert.equal(100, #page.items)
    assert.is_string(page.next_cursor)
    assert.equal(200, http.request { method = "GET", url = env.GATEWAY_URL .. "/openapi.json" }.status)
    assert.matches("mercato is running", read(log))
  end)

  it("gives the internal client's secret only to the user and order services", function()
    for _, name in ipairs { "user", "product", "order", "payment", "notification" } do
      local port = tonumber(env[name:upper() .. "_SERVICE_URL"]:match(":(%d+)$"))
      local owner = sh(("ss -Hltnp 'sport = :%d' | sed -n 's/.*pid=\\([0-9]*\\).*/\\1/p' | head -1"):format(port)):match("%d+")
      assert.is_string(owner, name)
      local environ = read("/proc/" .. owner .. "/environ") or ""
      local has = environ:find("SERVICE_CLIENT_SECRET=", 1, true) ~= nil
      assert.equal(name == "user" or name == "order", has, name)
    end
  end)

  it("writes .run/env that sources safely in sh", function()
    local out, rc = sh(". ./.run/env && printf '%s' \"$ADMIN_EMAIL\"")
    assert.equal(0, rc)
    assert.equal(env.ADMIN_EMAIL, out)
    for line in read(".run/env"):gmatch("[^\n]+") do assert.matches("^[%w_]+='.*'$", line) end
  end)

  it("runs the README's curl walk-through as written: the order is paid and its e-mails are sent", function()
    local readme = assert(read("README.md"))
    local block = readme:match("## A purchase, with curl.-```sh\n(.-)```")
    assert.is_string(block, "the README has no walk-through block")
    local f = assert(io.open(".run/test/walkthrough.sh", "w"))
    f:write("set -euo pipefail\n", block)
    f:close()
    local out, rc = sh("bash .run/test/walkthrough.sh")
    assert.equal(0, rc, out)
    assert.matches("\npaid\n", out)
    -- the e-mails go out asynchronously (a consumer, then the sender): wait for them here
    -- rather than trust the README's `sleep 2` on a loaded machine
    local email = assert(out:match('"email":"([^"]+)"'), out)
    local subjects
    for _ = 1, 150 do
      local res = http.request { method = "GET", url = env.SMTP_API_URL }
      subjects = {}
      for _, m in ipairs(cjson.decode(res and res.body or "[]") or {}) do
        if m.to and m.to[1] and m.to[1].address == email then subjects[#subjects + 1] = m.subject end
      end
      if #subjects >= 3 then break end
      socket.sleep(0.1)
    end
    local text = table.concat(subjects, " | ")
    assert.matches("Order received", text, 1, true)
    assert.matches("Payment received", text, 1, true)
  end)

  -- SIGTERM: a background job of a non-interactive shell starts with SIGINT ignored, which bash
  -- cannot trap; run.sh treats TERM as it treats Ctrl-C's INT.
  it("stops everything on Ctrl-C (here TERM) with status 0 and removes .run/env", function()
    os.execute("kill -TERM " .. pid)
    assert.is_true(wait_exit(pid, 30), "run.sh did not stop within 30 s")
    assert.matches("stopping services", read(log))
    assert.is_falsy(read(log):match("make run failed"))
    assert.is_nil(read(".run/env"))
    assert.is_nil(http.request { method = "GET", url = env.GATEWAY_URL .. "/health", timeout_ms = 1000 })
    pid = nil
  end)

  it("exits non-zero naming the service that failed to start", function()
    -- the order service's port is taken
    local blocker = assert(socket.bind("127.0.0.1", BASE + 3))
    local p, l = start_run()
    local done = wait_exit(p, 120)
    blocker:close()
    if not done then os.execute("kill -TERM " .. p); wait_exit(p, 30) end
    assert.is_true(done, "run.sh kept running with a service down")
    local text = read(l)
    assert.matches("failed to start: order", text)
    assert.matches("make run failed %(status [1-9]", text)
    assert.is_nil(read(".run/env"))
  end)
end)
