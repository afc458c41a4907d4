-- bench/svc/orders.lua: the order service's scenarios of `make bench` (issue 12), run by
-- bench/orders.sh inside `mercato lua` with the private stack's env: real user, product,
-- payment (with the Stripe stand-in) and order services on throw-away databases
-- (spec/support/order_helpers), then
--   cart-read    GET /cart with 5 items (one batched product read, cached 2 s per thread)
--   cart-write   PUT /cart/items/{id} (a Redis script)
--   checkout     POST /orders: the saga's synchronous part, closed loop, one buyer per connection
--                (bench/svc/checkout_load.js), BENCH_ORDERS_CHECKOUT_C connections
-- and prints a markdown table: req/s, p50, p99.
package.path = "spec/?.lua;scripts/?.lua;" .. package.path
local cjson = require "cjson.safe"
local O = require "support.order_helpers"

local DURATION = os.getenv("BENCH_ORDERS_DURATION") or "5"
local C = tonumber(os.getenv("BENCH_ORDERS_CONNECTIONS") or "") or 64
local CHECKOUT_C = tonumber(os.getenv("BENCH_ORDERS_CHECKOUT_C") or "") or 32
local CHECKOUT_S = os.getenv("BENCH_ORDERS_CHECKOUT_S") or "10"

local function sh(cmd)
  local p = assert(io.popen(cmd .. " 2>&1"))
  local out = p:read("*a")
  p:close()
  return out
end

-- wrk's --latency output → req/s, p50 ms, p99 ms
local function ms(v, unit)
  v = tonumber(v)
  if unit == "us" then return v / 1000 elseif unit == "s" then return v * 1000 end
  return v
end
local function parse_wrk(out)
  local rps = tonumber(out:match("Requests/sec:%s+([%d%.]+)"))
  local p50 = ms(out:match("50%%%s+([%d%.]+)(%a+)"))
  local p99 = ms(out:match("99%%%s+([%d%.]+)(%a+)"))
  local non2xx = tonumber(out:match("Non%-2xx or 3xx responses: (%d+)") or "0")
  return rps, p50, p99, non2xx
end

local function row(name, what, rps, p50, p99, note)
  return ("| %s | %s | %s | %s | %s | %s |"):format(name, what, rps and ("%.0f"):format(rps) or "–",
    p50 and ("%.2f ms"):format(p50) or "–", p99 and ("%.2f ms"):format(p99) or "–", note or "")
end

local w = O.start { payment = true, order_env = { WORKERS = os.getenv("BENCH_SVC_WORKERS") or "2", LOG_LEVEL = "warn" } }
local ok, err = pcall(function()
  local rows = {}
  local seller = O.seller(w)
  local products = {}
  for i = 1, 5 do products[i] = O.product(w, { stock = 1000000, price_cents = 1000 + i }, seller).id end
  local buyer = O.buyer(w)
  for _, id in ipairs(products) do
    assert(O.req(w.order, "PUT", "/cart/items/" .. id, { quantity = 2 }, buyer.token).status == 200)
  end
  local base = w.order.url
  -- warm-up, then measure
  sh(("wrk -t2 -c%d -d1s -H 'Authorization: Bearer %s' %s/cart"):format(C, buyer.token, base))
  local rps, p50, p99, bad = parse_wrk(sh(("wrk -t2 -c%d -d%ss --latency -H 'Authorization: Bearer %s' %s/cart")
    :format(C, DURATION, buyer.token, base)))
  rows[#rows + 1] = row("cart-read", "GET /cart, 5 items, c=" .. C, rps, p50, p99, bad > 0 and (bad .. " non-2xx") or "")
  local env = ("TOKEN=%s CART_PRODUCTS=%s"):format(buyer.token, table.concat(products, ","))
  rps, p50, p99, bad = parse_wrk(sh(("%s wrk -t2 -c%d -d%ss --latency -s bench/svc/wrk/cart_put.lua %s")
    :format(env, C, DURATION, base)))
  rows[#rows + 1] = row("cart-write", "PUT /cart/items/{id}, c=" .. C, rps, p50, p99, bad > 0 and (bad .. " non-2xx") or "")

  -- checkout: one buyer per connection
  local buyers = {}
  for i = 1, CHECKOUT_C do
    local b = O.buyer(w)
    buyers[i] = { token = b.token, product_id = products[(i % #products) + 1] }
  end
  local file = os.tmpname()
  local f = assert(io.open(file, "w"))
  f:write(cjson.encode(buyers))
  f:close()
  local out = sh(("node bench/svc/checkout_load.js %s %s %s"):format(base, file, CHECKOUT_S))
  os.remove(file)
  local r = cjson.decode(out:match("(%b{})%s*$") or "") or {}
  local note = {}
  for st, n in pairs(r.statuses or {}) do if st ~= "201" then note[#note + 1] = n .. "×" .. st end end
  rows[#rows + 1] = row("checkout", "POST /orders (reserve + PaymentIntent), c=" .. CHECKOUT_C, r.rps, r.p50_ms, r.p99_ms,
    (#note > 0 and table.concat(note, " ") .. "; " or "") .. "max " .. tostring(r.max_ms) .. " ms")
  print("| scenario | what | req/s | p50 | p99 | note |")
  print("|---|---|---|---|---|---|")
  for _, l in ipairs(rows) do print(l) end
end)
O.stop(w)
if not ok then error(err, 0) end
