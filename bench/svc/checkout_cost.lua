-- bench/svc/checkout_cost.lua: what one checkout costs each service's database (issue 17), run by
-- luacheck: max line length 170
-- bench/checkout_cost.sh inside `mercato lua` with the private stack's env (PostgreSQL with
-- pg_stat_statements). Real user, product, payment (Stripe stand-in) and order services on
-- throw-away databases (spec/support/order_helpers), buyers with full carts made first; then
--   1. a quiet window (nothing but the services' own timers: outbox relays, jobs): its rate
--      of statements and commits per database is the background, subtracted below;
--   2. N checkouts (POST /orders with an Idempotency-Key), one after the other;
-- and prints, per service, SQL statements and transactions (xact_commit of pg_stat_database)
-- per checkout, and the statements each checkout ran most often (pg_stat_statements calls).
-- Statements are pg_stat_statements' calls, BEGIN and COMMIT included (one round trip each).
-- The relay's pass that publishes order.created is part of a checkout's cost: it is counted.
package.path = "spec/?.lua;scripts/?.lua;" .. package.path
local cjson = require "cjson.safe"
local crypto = require "crypto"
local O = require "support.order_helpers"
local P = require "support.product_helpers"

local N = tonumber(os.getenv("CHECKOUT_COST_N") or "") or 50
local ITEMS = tonumber(os.getenv("CHECKOUT_COST_ITEMS") or "") or 2
local TOP = tonumber(os.getenv("CHECKOUT_COST_TOP") or "") or 10
local IDLE_S = tonumber(os.getenv("CHECKOUT_COST_IDLE_S") or "") or 10
-- An idle backend reports its counters to pg_stat_database up to 10 s late (PGSTAT_IDLE_INTERVAL).
local SETTLE_S = tonumber(os.getenv("CHECKOUT_COST_SETTLE_S") or "") or 11
local WARMUP = 2
local SERVICES = { "order", "payment", "product", "user" }

local function now()
  local f = assert(io.popen("date +%s.%N"))
  local t = tonumber(f:read("*l"))
  f:close()
  return t
end

local function admin_sql(sql) return P.psql(P.db_url("postgres"), sql) end

local loaded = admin_sql("SELECT count(*) FROM pg_extension WHERE extname = 'pg_stat_statements'")
if loaded ~= "1" then
  error("pg_stat_statements is not there: start the stack with PG_STAT_STATEMENTS=1 (scripts/dev/stack.sh)", 0)
end

-- One reading: per database name, commits, rollbacks and { [queryid] = { calls, query } }.
local function snapshot(dbs)
  local names = {}
  for _, d in pairs(dbs) do names[#names + 1] = "'" .. d .. "'" end
  local list = table.concat(names, ",")
  local s = { at = now(), db = {} }
  for line in admin_sql("SELECT datname, xact_commit, xact_rollback FROM pg_stat_database WHERE datname IN (" .. list .. ")")
      :gmatch("[^\n]+") do
    local name, c, r = line:match("^([^|]+)|(%d+)|(%d+)$")
    s.db[name] = { commits = tonumber(c), rollbacks = tonumber(r), q = {} }
  end
  local out = admin_sql("SELECT d.datname, s.queryid, s.calls, left(regexp_replace(s.query, '\\s+', ' ', 'g'), 150) " ..
    "FROM pg_stat_statements s JOIN pg_database d ON d.oid = s.dbid WHERE d.datname IN (" .. list .. ")")
  for line in out:gmatch("[^\n]+") do
    local name, id, calls, query = line:match("^([^|]+)|([^|]+)|(%d+)|(.*)$")
    if name and s.db[name] then
      local q = s.db[name].q
      -- one queryid may appear under several users: add them up
      local e = q[id] or { calls = 0, query = query }
      e.calls = e.calls + tonumber(calls)
      q[id] = e
    end
  end
  return s
end

-- b - a per database: { commits, rollbacks, statements, q = { [id] = { calls, query } } }, per second of (b - a).
local function delta(a, b, name)
  local da, db_ = a.db[name], b.db[name]
  local d = { commits = db_.commits - da.commits, rollbacks = db_.rollbacks - da.rollbacks, statements = 0, q = {},
    seconds = b.at - a.at }
  for id, e in pairs(db_.q) do
    local calls = e.calls - (da.q[id] and da.q[id].calls or 0)
    if calls > 0 then d.q[id] = { calls = calls, query = e.query }; d.statements = d.statements + calls end
  end
  return d
end

-- The run's delta less the background's rate over the run's duration, per checkout.
local function per_checkout(run, idle, n)
  local k = run.seconds / idle.seconds
  local out = {
    statements = (run.statements - idle.statements * k) / n,
    commits = (run.commits - idle.commits * k) / n,
    rollbacks = (run.rollbacks - idle.rollbacks * k) / n,
    raw_statements = run.statements / n, raw_commits = run.commits / n, q = {},
  }
  for id, e in pairs(run.q) do
    local calls = (e.calls - (idle.q[id] and idle.q[id].calls or 0) * k) / n
    if calls >= 0.05 then out.q[#out.q + 1] = { calls = calls, query = e.query } end
  end
  table.sort(out.q, function(x, y) return x.calls > y.calls end)
  return out
end

local w = O.start {
  payment = true,
  order_env = { WORKERS = "2", LOG_LEVEL = "warn", ORDER_RECOVERY_EVERY_S = "3600", ORDER_TIMEOUT_EVERY_S = "3600" },
  env = { payment = { LOG_LEVEL = "warn", RECONCILE_EVERY_S = "3600" }, product = { LOG_LEVEL = "warn" } },
}
local ok, err = pcall(function()
  local dbs = {}
  for _, s in ipairs(SERVICES) do dbs[s] = w[s].db_name end
  local seller = O.seller(w)
  local products = {}
  for i = 1, ITEMS do products[i] = O.product(w, { stock = 1000000, price_cents = 1000 + i }, seller).id end
  local buyers = {}
  for i = 1, N + WARMUP do
    local b = O.buyer(w)
    for _, id in ipairs(products) do
      local r = O.req(w.order, "PUT", "/cart/items/" .. id, { quantity = 1 }, b.token)
      assert(r.status == 200, "cart: " .. r.status)
    end
    buyers[i] = b
  end
  local function checkout(b)
    local r = O.req(w.order, "POST", "/orders", { shipping_address = O.ADDRESS }, b.token,
      { ["Idempotency-Key"] = crypto.hex(crypto.random(8)) })
    assert(r.status == 201, "checkout: " .. r.status .. " " .. tostring(r.body))
  end
  for i = 1, WARMUP do checkout(buyers[i]) end
  io.stderr:write(("checkout_cost: %d buyers ready; %d s settle, %d s quiet window, then %d checkouts\n")
    :format(#buyers, SETTLE_S, IDLE_S, N))
  os.execute("sleep " .. SETTLE_S)
  local s0 = snapshot(dbs)
  os.execute("sleep " .. IDLE_S)
  local s1 = snapshot(dbs)
  local t0 = now()
  for i = WARMUP + 1, WARMUP + N do checkout(buyers[i]) end
  local took = now() - t0
  os.execute("sleep " .. SETTLE_S)
  local s2 = snapshot(dbs)

  print(("## Database work per checkout (%d checkouts of %d items, one at a time, %.1f ms each on average)")
    :format(N, ITEMS, took * 1000 / N))
  print("")
  print("| service | statements | transactions (commits) | rollbacks | raw statements | raw commits |")
  print("|---|---|---|---|---|---|")
  local results = {}
  for _, s in ipairs(SERVICES) do
    local r = per_checkout(delta(s1, s2, dbs[s]), delta(s0, s1, dbs[s]), N)
    results[s] = r
    print(("| %s | %.1f | %.1f | %.1f | %.1f | %.1f |"):format(s, r.statements, r.commits, r.rollbacks, r.raw_statements,
      r.raw_commits))
  end
  print("")
  print(("(raw: before subtracting the background of a %d s quiet window, scaled to the run's %.1f s)")
    :format(IDLE_S, s2.at - s1.at))
  for _, s in ipairs { "order", "payment" } do
    print("")
    print("### " .. s .. ": statements by calls per checkout")
    print("")
    print("| calls | statement |")
    print("|---|---|")
    for i = 1, math.min(TOP, #results[s].q) do
      local e = results[s].q[i]
      print(("| %.2f | `%s` |"):format(e.calls, (e.query:gsub("|", "\\|"))))
    end
  end
  io.stdout:write(cjson.encode({ n = N, items = ITEMS, order = { statements = results.order.statements, commits = results.order.commits },
    payment = { statements = results.payment.statements, commits = results.payment.commits } }) .. "\n")
end)
O.stop(w)
if not ok then error(err, 0) end
