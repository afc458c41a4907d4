-- bench/svc/events.lua: the payment and notification scenarios of `make bench` (issues 13, 14),
-- luacheck: max line length 160
-- run by bench/events.sh (after bench/svc/relay.lua) inside `mercato lua` with the private stack's env, against the real
-- services on throw-away databases (spec/support/order_helpers):
--   verify_webhook   stripe.verify_webhook in C, one thread, a 2 KB payload → verifications/s
--   webhook          POST /webhooks/stripe, one signed event redelivered (wrk, c=64) → req/s, p50, p99
--   e-mail burst     1,000 events published at once → occurred_at to accepted by SMTP, p50/p99
-- Prints markdown tables.
package.path = "spec/?.lua;scripts/?.lua;" .. package.path
local cjson = require "cjson.safe"
local crypto = require "crypto"
local host = require "host"
local stripe = require "stripe"
local N = require "support.notification_helpers"

local PAY = require "support.payment_helpers"

local C = tonumber(os.getenv("BENCH_ORDERS_CONNECTIONS") or "") or 64
local DURATION = os.getenv("BENCH_ORDERS_DURATION") or "5"
local BURST = tonumber(os.getenv("BENCH_EVENTS_BURST") or "") or 1000

local function sh(cmd)
  local p = assert(io.popen(cmd .. " 2>&1"))
  local out = p:read("*a")
  p:close()
  return out
end
local function ms(v, unit)
  v = tonumber(v)
  if unit == "us" then return v / 1000 elseif unit == "s" then return v * 1000 end
  return v
end

local function signed(payload, secret, t)
  t = t or os.time()
  return ("t=%d,v1=%s"):format(t, crypto.hex(crypto.hmac_sha256(secret, t .. "." .. payload)))
end

print("| scenario | what | rate | p50 | p99 | note |")
print("|---|---|---|---|---|---|")

-- verify_webhook in C
do
  local payload = cjson.encode { id = "evt_bench", type = "payment_intent.succeeded", pad = ("x"):rep(2000) }
  local header = signed(payload, PAY.SECRET)
  assert(stripe.verify_webhook(payload, header, PAY.SECRET, 300))
  local n, t0 = 0, host.now()
  repeat
    for _ = 1, 1000 do stripe.verify_webhook(payload, header, PAY.SECRET, 300) end
    n = n + 1000
  until host.now() - t0 >= 2
  print(("| verify_webhook | stripe.verify_webhook in C, 2 KB payload, one thread | %.0f /s | – | – | %d calls |")
    :format(n / (host.now() - t0), n))
end

-- POST /webhooks/stripe, the redelivery path
local pay = PAY.start { standin = { duplicate_rate = 0 }, env = { LOG_LEVEL = "warn" } }
local ok, err = pcall(function()
  local body = cjson.encode { id = "evt_bench_" .. crypto.hex(crypto.random(6)), object = "event",
    type = "payment_intent.created", created = os.time(), data = { object = { id = "pi_bench", object = "payment_intent" } } }
  local sig = signed(body, PAY.SECRET)
  local first = PAY.request(pay.svc, "POST", "/webhooks/stripe",
    { body = body, headers = { ["Content-Type"] = "application/json", ["Stripe-Signature"] = sig } })
  assert(first.status < 300, "webhook: " .. first.status .. " " .. tostring(first.body))
  local env = ("WEBHOOK_BODY=%s WEBHOOK_SIGNATURE=%s"):format(PAY.q(body), PAY.q(sig))
  sh(("%s wrk -t2 -c%d -d1s -s bench/svc/wrk/webhook.lua %s/webhooks/stripe"):format(env, C, pay.svc.url))
  local out = sh(("%s wrk -t2 -c%d -d%ss --latency -s bench/svc/wrk/webhook.lua %s/webhooks/stripe")
    :format(env, C, DURATION, pay.svc.url))
  local bad = tonumber(out:match("Non%-2xx or 3xx responses: (%d+)") or "0")
  print(("| webhook | POST /webhooks/stripe, one signed event redelivered, c=%d | %s req/s | %.2f ms | %.2f ms | %s |")
    :format(C, out:match("Requests/sec:%s+([%d%.]+)") or "?", ms(out:match("50%%%s+([%d%.]+)(%a+)")) or -1,
      ms(out:match("99%%%s+([%d%.]+)(%a+)")) or -1, bad > 0 and (bad .. " non-2xx") or "all 2xx"))
end)
PAY.stop(pay)
if not ok then error(err, 0) end

-- 1,000 events at once → e-mails accepted by the SMTP sink
local srv = N.start { env = { LOG_LEVEL = "warn" } }
ok, err = pcall(function()
  local t0 = host.now()
  for i = 1, BURST do
    N.publish(N.event("user.registered", { user_id = crypto.uuid4(), email = N.email("burst" .. i), name = "Burst " .. i,
      role = "buyer" }))
  end
  local published = host.now() - t0
  local sent = 0
  for _ = 1, 600 do
    sent = tonumber(N.sql(srv, "SELECT count(*) FROM notifications WHERE status = 'sent'")) or 0
    if sent >= BURST then break end
    os.execute("sleep 0.2")
  end
  local row = N.sql(srv, "SELECT round((percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM sent_at - occurred_at)) * 1000)::numeric, 1), " ..
    "round((percentile_cont(0.99) WITHIN GROUP (ORDER BY extract(epoch FROM sent_at - occurred_at)) * 1000)::numeric, 1) " ..
    "FROM notifications WHERE status = 'sent'")
  local p50, p99 = row:match("([%d%.]+)|([%d%.]+)")
  print(("| e-mail burst | %d user.registered at once → accepted by SMTP (maildev), one sender | %d sent | %s ms | %s ms | published in %.1f s |")
    :format(BURST, sent, p50 or "?", p99 or "?", published))
end)
N.stop(srv)
if not ok then error(err, 0) end

