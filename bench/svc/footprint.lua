-- bench/svc/footprint.lua: memory and start-up of every service (issue 17), run by
-- bench/footprint.sh inside `mercato lua` with the private stack's env. The whole platform
-- (user, product, order, payment with the Stripe stand-in, notification, gateway) runs on
-- throw-away databases (spec/support/order_helpers); per process it reports
--   idle       resident memory 3 s after start: RSS (what the done-when counts), its anonymous
--              part, and PSS / private (shared-library pages shared with every other process
--              of the host are counted whole in RSS, split in PSS, left out of private)
--   after-256  RSS right after a wrk run of 256 connections on one of its routes (and, for the
--              user service, 40 registrations first: argon2id's 19 MiB work area per hash), and
--              6 s later (the host trims its heap once a crowd of connections has gone)
--   first 200  the process stopped and its exact environment (/proc/PID/environ) started
--              again: exec → the first 200 of GET /health, polled every millisecond
-- and prints a markdown table.
package.path = "spec/?.lua;scripts/?.lua;" .. package.path
local socket = require "socket"
local O = require "support.order_helpers"

local WRK_S = os.getenv("BENCH_FOOTPRINT_DURATION") or "5"

local function sh(cmd)
  local p = assert(io.popen(cmd .. " 2>&1"))
  local out = p:read("*a")
  p:close()
  return out
end

local function read(path)
  local f = io.open(path)
  if not f then return nil end
  local s = f:read("*a")
  f:close()
  return s
end

-- kB figures of one process: rss, anon, pss, private
local function memory(pid)
  local st, roll = read("/proc/" .. pid .. "/status") or "", read("/proc/" .. pid .. "/smaps_rollup") or ""
  local function kb(text, key) return tonumber(text:match(key .. ":%s+(%d+) kB")) end
  return { rss = kb(st, "VmRSS"), anon = kb(st, "RssAnon"), pss = kb(roll, "Pss"),
    private = (kb(roll, "Private_Clean") or 0) + (kb(roll, "Private_Dirty") or 0) }
end
local function mb(k) return k and ("%.1f"):format(k / 1024) or "–" end

-- exec → first 200 of GET /health on port, polled every millisecond (a refused connect costs
-- microseconds); nil after 10 s.
local function first_200(env, port)
  local parts = {}
  for _, kv in ipairs(env) do parts[#parts + 1] = "'" .. kv:gsub("'", "'\\''") .. "'" end
  local log = ".run/bench/footprint-" .. port .. ".log"
  local t0 = socket.gettime()
  local p = io.popen(("env -i %s %s > %s 2>&1 & echo $!"):format(table.concat(parts, " "),
    os.getenv("MERCATO_BIN") or "build/mercato", log))
  local pid = tonumber(p:read("*l"))
  p:close()
  local deadline = t0 + 10
  while socket.gettime() < deadline do
    local c = socket.tcp()
    c:settimeout(1)
    if c:connect("127.0.0.1", port) then
      c:send("GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
      local line = c:receive("*l")
      c:close()
      if line and line:find(" 200 ", 1, true) then return socket.gettime() - t0, pid end
    else
      c:close()
    end
    socket.sleep(0.001)
  end
  return nil, pid
end

local function environ(pid)
  local raw = assert(read("/proc/" .. pid .. "/environ"), "no environ for " .. pid)
  local env = {}
  for kv in raw:gmatch("([^%z]+)") do env[#env + 1] = kv end
  return env
end

local w = O.start { payment = true, notification = true, gateway = true }
local procs = {
  { "user", w.user }, { "product", w.product }, { "order", w.order }, { "payment", w.payment },
  { "notification", w.notification }, { "gateway", w.gateway },
}
local ok, err = pcall(function()
  socket.sleep(3)
  local rows = {}
  for _, p in ipairs(procs) do rows[p[1]] = { idle = memory(p[2].pid) } end

  -- a route per service for the 256-connection run
  local seller, buyer = O.seller(w), O.buyer(w)
  local product = O.product(w, { stock = 1000 }, seller)
  assert(O.req(w.order, "PUT", "/cart/items/" .. product.id, { quantity = 1 }, buyer.token).status == 200)
  for i = 1, 40 do   -- argon2id: 40 hashes on the user service's pool
    O.req(w.user, "POST", "/auth/register", { email = ("fp%d-%d@example.com"):format(i, os.time()),
      password = "correct horse 1", name = "Footprint" })
  end
  local auth = "-H 'Authorization: Bearer " .. buyer.token .. "' "
  local routes = {
    user = auth .. w.user.url .. "/users/me",
    product = w.product.url .. "/products/" .. product.id,
    order = auth .. w.order.url .. "/cart",
    payment = w.payment.url .. "/health",
    notification = w.notification.url .. "/health",
    gateway = w.gateway.url .. "/products/" .. product.id,
  }
  -- the gateway's run first: it loads the product service too, whose own run then follows
  local runs = { procs[6], procs[1], procs[2], procs[3], procs[4], procs[5] }
  for _, p in ipairs(runs) do
    local out = sh(("wrk -t2 -c256 -d%ss %s"):format(WRK_S, routes[p[1]]))
    rows[p[1]].rps = tonumber(out:match("Requests/sec:%s+([%d%.]+)"))
    rows[p[1]].after = memory(p[2].pid)
  end
  socket.sleep(6)
  for _, p in ipairs(procs) do rows[p[1]].settled = memory(p[2].pid) end

  -- first 200: each process again, with its own environment
  for _, p in ipairs(procs) do
    local srv = p[2]
    local env = environ(srv.pid)
    srv:stop()
    local t, pid = first_200(env, srv.port)
    rows[p[1]].first = t
    srv.pid = pid   -- O.stop stops the new process
  end

  print("| service | idle RSS MB | idle anon MB | idle PSS MB | idle private MB | RSS after 256 conns MB | " ..
    "6 s later MB | route of the 256-connection run (req/s) | exec → first 200 ms |")
  print("|---|---:|---:|---:|---:|---:|---:|---|---:|")
  for _, p in ipairs(procs) do
    local r = rows[p[1]]
    print(("| %s | %s | %s | %s | %s | %s | %s | %s (%s) | %s |"):format(p[1], mb(r.idle.rss), mb(r.idle.anon),
      mb(r.idle.pss), mb(r.idle.private), mb(r.after.rss), mb(r.settled.rss),
      routes[p[1]]:gsub("^%-H '[^']+' ", ""):gsub("http://127%.0%.0%.1:%d+", ""),
      r.rps and ("%.0f"):format(r.rps) or "–", r.first and ("%.0f"):format(r.first * 1000) or "no 200 in 10 s"))
  end
end)
O.stop(w)
if not ok then error(err, 0) end
