-- bench/svc/wrk/reserve.lua: POST /internal/reservations for wrk, a new reservation per request.
--   BENCH_TOKEN         a service token with scope "inventory"
--   BENCH_HOT_PRODUCTS  comma-separated product ids (the hot set every request draws from)
--   BENCH_RES_TTL       ttl_seconds of the reservations [3600: none expires during the run]
-- Each request reserves 1–3 distinct products of the hot set, 1–3 units each, under a fresh
-- reservation id: a random 80-bit prefix per wrk thread (from /dev/urandom) and a per-thread
-- counter in the last 12 hex digits, so ids never repeat within a run or across runs.
local products = {}
for id in (os.getenv("BENCH_HOT_PRODUCTS") or ""):gmatch("[^,%s]+") do products[#products + 1] = id end
assert(#products > 0, "BENCH_HOT_PRODUCTS is empty")
local ttl = tonumber(os.getenv("BENCH_RES_TTL") or "") or 3600

wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer " .. assert(os.getenv("BENCH_TOKEN"), "BENCH_TOKEN is not set")

local prefix, counter = nil, 0

function init()
  local f = assert(io.open("/dev/urandom", "rb"))
  local b = f:read(10)
  f:close()
  local hex, seed = {}, 0
  for i = 1, #b do
    hex[i] = ("%02x"):format(b:byte(i))
    seed = (seed * 251 + b:byte(i)) % 2147483647
  end
  local h = table.concat(hex)
  prefix = h:sub(1, 8) .. "-" .. h:sub(9, 12) .. "-" .. h:sub(13, 16) .. "-" .. h:sub(17, 20) .. "-"
  math.randomseed(seed)
end

local pick = {}
function request()
  counter = counter + 1
  local n = #products
  for i = 1, n do pick[i] = products[i] end
  local k = math.random(1, math.min(3, n))
  local items = {}
  for i = 1, k do   -- a partial Fisher–Yates shuffle: k distinct products
    local j = math.random(i, n)
    pick[i], pick[j] = pick[j], pick[i]
    items[i] = ('{"product_id":"%s","quantity":%d}'):format(pick[i], math.random(1, 3))
  end
  local body = ('{"reservation_id":"%s%012x","ttl_seconds":%d,"items":[%s]}')
    :format(prefix, counter, ttl, table.concat(items, ","))
  return wrk.format(nil, nil, nil, body)
end
