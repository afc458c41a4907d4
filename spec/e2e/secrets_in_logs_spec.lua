-- luacheck: max line length 160
-- Secrets never appear in logs (CONTRACT §2, issue 18): a whole `make run` (scripts/dev/run.sh)
-- at LOG_LEVEL=debug, a purchase (paid through the Stripe stand-in's signed webhook), a failed
-- login, a refresh (and the reuse of the spent refresh token), a client_credentials grant, a
-- refund, a forged webhook, a password change and a logout — and then
-- every line of every log the run produced (each service, the gateway, the seed, and what
-- PostgreSQL, Redis, RabbitMQ and the SMTP sink appended meanwhile; the Stripe stand-in's log is a
-- test tool's, left out) is searched for every secret of the run: passwords (right and wrong),
-- access and refresh tokens, the JWT private key, the OAuth client secret, STRIPE_API_KEY, the
-- webhook signing secret, the AMQP password in its URL, the device cookie and the PaymentIntent
-- client_secret. The platform runs on RUN_PORT_BASE + 50 (the private stack stays up).
local cjson = require "cjson.safe"
local crypto = require "crypto"
local http = require "http"
local socket = require "socket"

local BASE = (tonumber(os.getenv("RUN_PORT_BASE") or "") or 18080) + 50
local RUN_DIR = os.getenv("RUN_DIR") or ".run"
local LOGS = RUN_DIR .. "/logs"
local CANARY = "canary-" .. crypto.hex(crypto.random(8))
local CLIENT_IP = ("10.%d.%d.%d"):format(crypto.random(1):byte(), crypto.random(1):byte(), 1 + crypto.random(1):byte() % 250)

local function sh(cmd)
  local p = assert(io.popen(cmd .. " 2>&1; echo \"rc=$?\""))
  local out = p:read("*a")
  p:close()
  return (out:gsub("rc=%d+%s*$", "")), tonumber(out:match("rc=(%d+)%s*$"))
end

local function read(path)
  local f = io.open(path, "rb")
  if not f then return nil end
  local s = f:read("*a")
  f:close()
  return s
end

local function alive(pid) return select(2, sh("kill -0 " .. pid)) == 0 end

-- Logs of the stack that the run appends to (their size now: only what comes after is the run's).
local STACK_LOGS = { "postgres.log", "redis.log", "rabbitmq.log", "maildev.log", "rabbitmq/mercato@localhost.log" }
-- Logs the run writes afresh (run.sh truncates them on start).
local RUN_LOGS = { "user.log", "product.log", "order.log", "payment.log", "notification.log", "gateway.log", "seed.log" }

describe("secrets in the logs of a whole run", function()
  local pid, console, env = nil, nil, {}
  local offsets = {}
  local secrets = {}   -- { name = value }
  local driven = false

  local function secret(name, value)
    assert(type(value) == "string" and #value >= 8, "secret " .. name .. " is missing or too short to search for: " .. tostring(value))
    secrets[name] = value
    return value
  end

  local function call(method, path, opts)
    opts = opts or {}
    -- one client address of its own (the gateway trusts 127.0.0.1 as a proxy): other specs' failed
    -- logins from 127.0.0.1 on the same Redis can have locked that address out
    local h = { ["X-Forwarded-For"] = CLIENT_IP }
    for k, v in pairs(opts.headers or {}) do h[k] = v end
    if opts.token then h.Authorization = "Bearer " .. opts.token end
    local body = opts.body
    if opts.json then body = cjson.encode(opts.json); h["Content-Type"] = "application/json" end
    if opts.form then body = opts.form; h["Content-Type"] = "application/x-www-form-urlencoded" end
    local res = assert(http.request { method = method, url = env.GATEWAY_URL .. path, headers = h, body = body, timeout_ms = 20000 })
    res.json = cjson.decode(res.body or "")
    return res
  end

  setup(function()
    for _, name in ipairs(STACK_LOGS) do
      local f = io.open(LOGS .. "/" .. name, "rb")
      offsets[name] = f and f:seek("end") or 0
      if f then f:close() end
    end
    console = ".run/test/secrets-run-" .. os.time() .. ".log"
    os.execute("mkdir -p .run/test")
    -- LOGIN_IP_FAILURES: every spec logs in from 127.0.0.1 on one Redis; the per-IP lock would join them up
    local p = io.popen(("LOG_LEVEL=debug RATE_LIMIT_AUTH=1000/min LOGIN_IP_FAILURES=100000 RUN_PORT_BASE=%d KEEP_STACK=1 " ..
      "setsid scripts/dev/run.sh > %s 2>&1 & echo $!"):format(BASE, console))
    pid = tonumber(p:read("*l"))
    p:close()
    local deadline = socket.gettime() + 180
    while socket.gettime() < deadline and not read(RUN_DIR .. "/env") do
      assert(alive(pid), "run.sh exited during start-up:\n" .. (read(console) or ""))
      socket.sleep(0.2)
    end
    local text = assert(read(RUN_DIR .. "/env"), "no .run/env after 180 s:\n" .. (read(console) or ""))
    for k, v in text:gmatch("([%w_]+)='([^\n]*)'\n") do env[k] = v:gsub("'\\''", "'") end
    assert.equal("http://127.0.0.1:" .. BASE, env.GATEWAY_URL)
  end)

  teardown(function()
    if pid and alive(pid) then
      os.execute("kill -TERM " .. pid)
      local deadline = socket.gettime() + 30
      while alive(pid) and socket.gettime() < deadline do socket.sleep(0.1) end
    end
  end)

  it("drives the platform through every path that handles a secret", function()
    secret("ADMIN_PASSWORD", env.ADMIN_PASSWORD)
    secret("DEMO_BUYER_PASSWORD", env.DEMO_BUYER_PASSWORD)
    secret("DEMO_SELLER_PASSWORD", env.DEMO_SELLER_PASSWORD)
    secret("SERVICE_CLIENT_SECRET", env.SERVICE_CLIENT_SECRET)
    secret("STRIPE_WEBHOOK_SECRET", env.STRIPE_WEBHOOK_SECRET)
    secret("STRIPE_API_KEY", env.STRIPE_API_KEY)
    secret("AMQP user:password in its URL", assert(env.AMQP_URL:match("//([^/@]+:[^/@]+@)"), env.AMQP_URL))
    -- the JWT private key: every line of its PEM body
    local pem = assert(read(RUN_DIR .. "/secrets/jwt-dev.pem"))
    local n = 0
    for line in pem:gmatch("[^\n]+") do
      if not line:find("-----", 1, true) then n = n + 1; secret("JWT private key line " .. n, line) end
    end

    -- a buyer of our own: register, a failed login, a login (device cookie), refresh twice, reuse
    local email, password = "secret-" .. crypto.hex(crypto.random(5)) .. "@example.com", secret("new user password", "Pw-" .. crypto.hex(crypto.random(9)))
    assert.equal(201, call("POST", "/auth/register", { json = { email = email, password = password, name = "Secret Keeper" } }).status)
    local wrong = secret("wrong password", "Wrong-" .. crypto.hex(crypto.random(8)))
    assert.equal(401, call("POST", "/auth/login", { json = { email = email, password = wrong } }).status)
    local login = call("POST", "/auth/login", { json = { email = email, password = password } })
    assert.equal(200, login.status, login.body)
    local access = secret("buyer access token", login.json.access_token)
    local refresh1 = secret("refresh token (spent)", login.json.refresh_token)
    secret("device cookie", assert((login.headers["set-cookie"] or ""):match("mercato_device=([^;]+)"), "no device cookie"))
    local r2 = call("POST", "/oauth/token", { form = "grant_type=refresh_token&refresh_token=" .. refresh1 })
    assert.equal(200, r2.status, r2.body)
    secret("refreshed access token", r2.json.access_token)
    local refresh2 = secret("refresh token (rotated)", r2.json.refresh_token)
    assert.equal(400, call("POST", "/oauth/token", { form = "grant_type=refresh_token&refresh_token=" .. refresh1 }).status)   -- reuse
    secret("refresh token of the password grant",
      call("POST", "/oauth/token", { form = "grant_type=password&username=" .. email .. "&password=" .. password }).json.refresh_token)
    -- the services' OAuth client, right and wrong
    local cc = call("POST", "/oauth/token", { form = "grant_type=client_credentials&client_id=" .. env.SERVICE_CLIENT_ID ..
      "&client_secret=" .. env.SERVICE_CLIENT_SECRET })
    assert.equal(200, cc.status, cc.body)
    secret("service access token", cc.json.access_token)
    assert.equal(401, call("POST", "/oauth/token", { form = "grant_type=client_credentials&client_id=" .. env.SERVICE_CLIENT_ID ..
      "&client_secret=" .. secret("wrong client secret", "cs-" .. crypto.hex(crypto.random(10))) }).status)

    -- a purchase of our own, paid, then refunded by the admin
    local page = call("GET", "/products?limit=1").json
    assert.equal(200, call("PUT", "/cart/items/" .. page.items[1].id, { token = access, json = { quantity = 1 } }).status)
    local order = call("POST", "/orders", { token = access, json = { shipping_address = { name = "S K", line1 = "1 Main St", city = "Berlin",
      postal_code = "10115", country = "DE" } }, headers = { ["Idempotency-Key"] = crypto.uuid4() } })
    assert.equal(201, order.status, order.body)
    secret("PaymentIntent client_secret", order.json.payment.client_secret)
    local pay_out, pay_rc = sh("scripts/dev/pay " .. order.json.id .. " succeed")
    assert.equal(0, pay_rc, pay_out)
    local admin = call("POST", "/auth/login", { json = { email = env.ADMIN_EMAIL, password = env.ADMIN_PASSWORD } })
    local admin_token = secret("admin access token", admin.json.access_token)
    local refund = call("POST", "/payments/" .. order.json.payment.id .. "/refunds", { token = admin_token, json = {} })
    assert.is_true(refund.status == 200 or refund.status == 201, refund.body)

    -- a webhook with a forged signature, a bad bearer token, a password change, a logout
    local forged = call("POST", "/webhooks/stripe", { body = '{"id":"evt_forged","type":"payment_intent.succeeded"}',
      headers = { ["Content-Type"] = "application/json", ["Stripe-Signature"] = "t=" .. os.time() .. ",v1=" .. string.rep("ab", 32) } })
    assert.equal(400, forged.status)
    assert.equal(401, call("GET", "/users/me", { token = access .. "x" }).status)
    local newpw = secret("changed password", "New-" .. crypto.hex(crypto.random(9)))
    local pw = call("POST", "/users/me/password", { token = access, json = { current_password = password, new_password = newpw } })
    assert.is_true(pw.status < 300, pw.status .. " " .. pw.body)
    local out_res = call("POST", "/auth/logout", { token = access, json = { refresh_token = refresh2 } })
    assert.is_true(out_res.status < 300, out_res.status .. " " .. out_res.body)
    -- the canary: a value that is logged on purpose (a request path, in the access lines), which
    -- the search below must find, or it proves nothing
    assert.equal(404, call("GET", "/products/" .. CANARY).status)
    socket.sleep(2)   -- access lines are flushed at least every second
    driven = true
  end)

  it("finds none of them in any line of any log the run produced", function()
    assert.is_true(driven, "the run was not driven to the end (the previous test failed)")
    local files, lines, canaries = 0, 0, 0
    local hits = {}
    local function search(name, text)
      files = files + 1
      for line in text:gmatch("[^\n]+") do
        lines = lines + 1
        if line:find(CANARY, 1, true) then canaries = canaries + 1 end
        for what, value in pairs(secrets) do
          if line:find(value, 1, true) then hits[#hits + 1] = name .. ": " .. what .. " in: " .. line:sub(1, 300) end
        end
      end
    end
    for _, name in ipairs(RUN_LOGS) do
      local text = read(LOGS .. "/" .. name)
      if name ~= "seed.log" then assert.is_string(text, name) end
      if text then search(name, text) end
    end
    for _, name in ipairs(STACK_LOGS) do
      local f = io.open(LOGS .. "/" .. name, "rb")
      if f then
        f:seek("set", offsets[name])
        search(name .. " (this run's part)", f:read("*a"))
        f:close()
      end
    end
    -- the run logged at debug level, so the search saw the most it ever would
    local all = {}
    for _, name in ipairs(RUN_LOGS) do all[#all + 1] = read(LOGS .. "/" .. name) or "" end
    assert.matches('"level":"debug"', table.concat(all))
    local count = 0
    for _ in pairs(secrets) do count = count + 1 end
    print(("# searched %d lines of %d logs for %d secrets"):format(lines, files, count))
    assert.is_true(canaries >= 2, "the search did not see the canary in the gateway's and the product service's access lines")
    assert.same({}, hits)
  end)
end)
