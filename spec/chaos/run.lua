-- luacheck: max line length 160
-- spec/chaos/run.lua: the chaos tier (`make chaos`; a short run in `make test`). Starts the whole
-- platform (spec/chaos/world.lua), then CHAOS_ROUNDS rounds, each seeded (CHAOS_SEED + round − 1,
-- printed: `CHAOS_SEED=<that> CHAOS_ROUNDS=1` replays one): a steady purchase load through the
-- gateway (spec/chaos/load.lua), one or two SIGKILLs at random points — PostgreSQL, Redis,
-- RabbitMQ or one service process — each followed by a restart, then the load stops, the round
-- settles (the saga's clocks are short here) and every invariant is checked
-- (spec/chaos/invariants.lua). One TAP line per round; the per-round table goes to
-- .run/chaos/report.md. Exit 0 only if every round held.
--
--   build/mercato lua spec/chaos/run.lua      (the stack up and its env exported, as for a spec)
--
-- Env: CHAOS_ROUNDS (50), CHAOS_SEED (the clock), CHAOS_LOAD_S (15: load per round),
-- CHAOS_SETTLE_S (120: how long a round may take to settle), CHAOS_BUYERS (4).
package.path = "spec/?.lua;spec/?/init.lua;" .. package.path
local http = require "http"
local socket = require "socket"
local O = require "support.order_helpers"
local inv = require "chaos.invariants"
local load = require "chaos.load"
local world = require "chaos.world"

local ROUNDS = tonumber(os.getenv("CHAOS_ROUNDS") or "") or 50
local SEED = tonumber(os.getenv("CHAOS_SEED") or "") or os.time()
local LOAD_S = tonumber(os.getenv("CHAOS_LOAD_S") or "") or 15
local SETTLE_S = tonumber(os.getenv("CHAOS_SETTLE_S") or "") or 120
local BUYERS = tonumber(os.getenv("CHAOS_BUYERS") or "") or 4
local DIR = ".run/chaos"
-- Kills that can make the notification service send an accepted e-mail again (its sender's
-- transaction dies between SMTP's 250 and the commit): the service itself and its database.
local NOTIFY_PATH = { notification = true, postgres = true }

local function say(fmt, ...) io.stdout:write(string.format(fmt, ...), "\n") io.stdout:flush() end

os.execute("mkdir -p " .. DIR)
say("# chaos: %d rounds, CHAOS_SEED=%d (replay one round: CHAOS_SEED=<its seed> CHAOS_ROUNDS=1)", ROUNDS, SEED)
say("1..%d", ROUNDS)

local rows = {}
local function write_report()
  local f = assert(io.open(DIR .. "/report.md", "w"))
  f:write("# Chaos tier: per-round report\n\n",
    ("CHAOS_SEED=%d, %d rounds, %d buyers, %d s of load per round.\n\n"):format(SEED, ROUNDS, BUYERS, LOAD_S),
    "| round | seed | kills (what @ s into the load, restart s) | orders placed / paid / cancelled (checkouts undone or refused) | checkout attempts "
      .. "| stock before / after / sold | e-mails (dup) | settle s | invariants |\n",
    "| --- | --- | --- | --- | --- | --- | --- | --- | --- |\n")
  for _, r in ipairs(rows) do f:write(r, "\n") end
  f:close()
end

local function clear_mail()
  http.request { method = "DELETE", url = os.getenv("SMTP_API_URL") .. "/all", timeout_ms = 10000 }
end

local ok_w, w = pcall(world.start)
if not ok_w then
  say("not ok 1 - the platform did not start: %s", tostring(w))
  os.exit(1)
end

local failed_rounds = 0
for r = 1, ROUNDS do
  local seed = SEED + r - 1
  math.randomseed(seed)
  local t_round = socket.gettime()
  local ready, who = world.ready(w, 90)
  local failures, counts, kills, records = {}, nil, {}, {}
  if not ready then failures[#failures + 1] = who .. " was not ready at the start of the round" end

  -- (started: a second early, against the stand-in's whole-second clock)
  local round = { users = {}, emails = {}, products = {}, notify_kills = 0, check_queues = true, started = os.time() - 1 }
  local settle_s = 0
  if ready then
    clear_mail()
    local seller = O.seller(w)
    for _ = 1, 3 do
      local stock = math.random(60, 150)
      local p = O.product(w, { stock = stock, price_cents = math.random(5, 50) * 100 }, seller)
      round.products[#round.products + 1] = { id = p.id, initial = stock }
    end
    local tokens = {}
    for i = 1, BUYERS do
      local b = O.buyer(w)
      round.users[i], round.emails[i], tokens[i] = b.sub, b.email, b.token
    end
    local ids = {}
    for i, p in ipairs(round.products) do ids[i] = p.id end

    -- the load, and one or two kills at seeded points of it
    local plan = {}
    for _ = 1, math.random() < 0.3 and 2 or 1 do
      plan[#plan + 1] = { target = world.TARGETS[math.random(#world.TARGETS)], at = 1 + math.random() * (LOAD_S - 3) }
    end
    table.sort(plan, function(a, b) return a.at < b.at end)
    local h = load.start(w, { tokens = tokens, products = ids, seed = seed, dir = DIR .. "/round-" .. r })
    local t0 = socket.gettime()
    for _, k in ipairs(plan) do
      local wait = k.at - (socket.gettime() - t0)
      if wait > 0 then socket.sleep(wait) end
      local t1 = socket.gettime()
      local okk, err = world.kill(w, k.target)
      kills[#kills + 1] = ("%s @%.1f (%.1f s)"):format(k.target, t1 - t0, socket.gettime() - t1)
      if not okk then failures[#failures + 1] = "kill " .. k.target .. ": " .. tostring(err) end
      if NOTIFY_PATH[k.target] then round.notify_kills = round.notify_kills + 1 end
    end
    local rest = LOAD_S - (socket.gettime() - t0)
    if rest > 0 then socket.sleep(rest) end
    local stuck
    records, stuck = load.stop(h, 120)
    if stuck > 0 then failures[#failures + 1] = stuck .. " buyers did not finish their purchase within 120 s of the stop" end

    -- settle: until every invariant holds, or SETTLE_S has passed (then report what does not)
    local t_settle = socket.gettime()
    local last
    repeat
      local okc, snap = pcall(inv.snapshot, w, { users = round.users, products = round.products, emails = round.emails,
        started = round.started })
      if okc then
        local _, f = inv.check(snap, round)
        last = f
        if #f == 0 then break end
      else
        last = { "snapshot failed: " .. tostring(snap) }
      end
      socket.sleep(2)
    until socket.gettime() - t_settle > SETTLE_S
    settle_s = socket.gettime() - t_settle
    local okc, snap = pcall(inv.snapshot, w, round)
    if okc then
      local f
      counts, f = inv.check(snap, round)
      for _, x in ipairs(f) do failures[#failures + 1] = x end
    else
      for _, x in ipairs(last or {}) do failures[#failures + 1] = x end
      failures[#failures + 1] = "final snapshot failed: " .. tostring(snap)
    end
  end

  local attempts, created = 0, 0
  for _, rec in ipairs(records) do
    if rec.key then attempts = attempts + 1 end
    if rec.order_id then created = created + 1 end
  end
  local c = counts or { orders = 0, paid = 0, cancelled = 0, abandoned = 0, stock_before = 0, stock_after = 0, sold = 0, emails = 0, duplicate_emails = 0 }
  local summary = ("kills %s; orders %d (paid %d, cancelled %d; %d checkouts undone or refused); stock %d→%d sold %d; "
    .. "e-mails %d (dup %d); settled in %.0f s, round %.0f s")
    :format(table.concat(kills, ", "), c.orders, c.paid, c.cancelled, c.abandoned, c.stock_before, c.stock_after, c.sold,
      c.emails, c.duplicate_emails, settle_s, socket.gettime() - t_round)
  if #failures == 0 then
    say("ok %d - round %d seed %d: %s", r, r, seed, summary)
  else
    failed_rounds = failed_rounds + 1
    say("not ok %d - round %d seed %d: %s", r, r, seed, summary)
    for i, f in ipairs(failures) do
      if i > 20 then say("#   … %d more", #failures - 20) break end
      say("#   %s", f)
    end
  end
  rows[#rows + 1] = ("| %d | %d | %s | %d / %d / %d (%d) | %d (%d answered 201) | %d / %d / %d | %d (%d) | %.0f | %s |"):format(
    r, seed, table.concat(kills, ", "), c.orders, c.paid, c.cancelled, c.abandoned, attempts, created,
    c.stock_before, c.stock_after, c.sold, c.emails, c.duplicate_emails, settle_s,
    #failures == 0 and "all hold" or ("**" .. #failures .. " failed**: " .. table.concat(failures, "; "):sub(1, 400)))
  write_report()
end

world.stop(w)
say("# chaos: %d of %d rounds held every invariant; report in %s/report.md", ROUNDS - failed_rounds, ROUNDS, DIR)
os.exit(failed_rounds == 0 and 0 or 1)
