-- spec/chaos/buyer.lua: one buyer of the chaos tier's purchase load, a process of its own
-- (build/mercato lua spec/chaos/buyer.lua), started by spec/chaos/load.lua. Until the stop file
-- appears it buys through the gateway only: cart → checkout with an Idempotency-Key (retried
-- with the same key while the platform answers 5xx or not at all) → pay at the Stripe stand-in
-- (its signed webhook reaches the payment service), or a declined card, a cancel, or no payment
-- at all (the payment timeout cancels it). One JSON line per attempt to CHAOS_OUT.
--
-- Env: CHAOS_GATEWAY, CHAOS_STANDIN (URLs), CHAOS_TOKEN (the buyer's access token),
-- CHAOS_PRODUCTS (ids, comma-separated), CHAOS_SEED, CHAOS_STOP (file), CHAOS_OUT (file).
package.path = "spec/?.lua;spec/?/init.lua;" .. package.path
local cjson = require "cjson.safe"
local http = require "http"
local socket = require "socket"
local O = require "support.order_helpers"
local PAY = require "support.payment_helpers"

local GATEWAY, STANDIN = os.getenv("CHAOS_GATEWAY"), { url = os.getenv("CHAOS_STANDIN") }
local TOKEN, STOP, OUT = os.getenv("CHAOS_TOKEN"), os.getenv("CHAOS_STOP"), os.getenv("CHAOS_OUT")
local products = {}
for id in (os.getenv("CHAOS_PRODUCTS") or ""):gmatch("[^,]+") do products[#products + 1] = id end
math.randomseed(tonumber(os.getenv("CHAOS_SEED")) or os.time())

local function stopped()
  local f = io.open(STOP)
  if f then f:close() return true end
  return false
end

local out = assert(io.open(OUT, "a"))
local function record(doc)
  out:write(cjson.encode(doc), "\n")
  out:flush()
end

local function call(method, path, doc, headers)
  local h = { Authorization = "Bearer " .. TOKEN }
  for k, v in pairs(headers or {}) do h[k] = v end
  local body
  if doc ~= nil then body = cjson.encode(doc); h["Content-Type"] = "application/json" end
  local res, err = http.request { method = method, url = GATEWAY .. path, headers = h, body = body, timeout_ms = 15000 }
  if not res then return { status = 0, err = tostring(err) } end
  res.json = cjson.decode(res.body or "")
  return res
end

-- No answer, a 5xx, or our own earlier try still holding the Idempotency-Key (409 "still being
-- processed"): worth the same request again.
local function transient(res)
  if res.status == 0 or res.status >= 500 then return true end
  local detail = type(res.json) == "table" and res.json.detail
  return res.status == 409 and type(detail) == "string" and detail:find("still being processed", 1, true) ~= nil
end

-- fn() until its answer is not transient, at most `tries` times, `pause` s apart. → answer, tries
local function retried(tries, pause, fn)
  local res
  for i = 1, tries do
    res = fn()
    if not transient(res) then return res, i end
    socket.sleep(pause)
  end
  return res, tries
end

local n = 0
while not stopped() do
  n = n + 1
  local product = products[math.random(#products)]
  local qty = math.random(1, 3)
  local rec = { n = n, product_id = product, quantity = qty }
  local cart = retried(20, 0.5, function() return call("PUT", "/cart/items/" .. product, { quantity = qty }) end)
  rec.cart = cart.status
  if cart.status == 200 then
    local key = "chaos-" .. string.format("%08x%08x", math.random(0, 0x7fffffff), math.random(0, 0x7fffffff))
    rec.key = key
    local res, tries = retried(40, 0.5, function()
      return call("POST", "/orders", { shipping_address = O.ADDRESS },
        { ["Idempotency-Key"] = key })
    end)
    rec.checkout, rec.checkout_tries = res.status, tries
    if (res.status == 201 or res.status == 200) and type(res.json) == "table" then
      local order = res.json
      rec.order_id = order.id
      local r = math.random()
      local secret = type(order.payment) == "table" and order.payment.client_secret
      local pi = type(secret) == "string" and secret:match("^(pi_[%w]+)_secret")
      if r < 0.65 and pi then
        rec.action = "pay"
        rec.pay = (PAY.confirm({ standin = STANDIN }, pi, "pm_card_visa"))
      elseif r < 0.78 and pi then
        rec.action = "decline"
        rec.pay = (PAY.confirm({ standin = STANDIN }, pi, "pm_card_chargeDeclined"))
      elseif r < 0.9 then
        rec.action = "cancel"
        rec.cancel = retried(40, 0.5, function() return call("POST", "/orders/" .. order.id .. "/cancel") end).status
      else
        rec.action = "leave"   -- never paid: ORDER_PAYMENT_TIMEOUT cancels it
      end
    elseif res.status ~= 0 then
      rec.problem = type(res.json) == "table" and res.json.detail or nil
      -- not enough stock: the cart is kept, and would fail again; start afresh
      if res.status == 409 then rec.cart_cleared = retried(20, 0.5, function() return call("DELETE", "/cart") end).status end
    else
      rec.problem = res.err
    end
  end
  record(rec)
  socket.sleep(0.05 + math.random() * 0.2)
end
out:close()
