-- scripts/services/order/payments.lua: the one interface the saga has to the payment service
-- (its internal routes, service token with scope payments). Every call is idempotent on the
-- payment side: create per order id, cancel per payment, refund per Idempotency-Key (the
-- order's own key, so that every path that refunds an order makes one refund).
--
--   local p, err, code = payments.create(order)     -- { id, status, client_secret, ... }
--   local st, err, code = payments.cancel(payment_id) -- "canceled" | "succeeded" (too late)
--   local r, err, code = payments.refund(order)     -- the refund
local svc = require "lib.svc"

local _M = {}

local function failed(res, what)
  local detail = type(res.body) == "table" and res.body.detail or nil
  return nil, "payment service answered " .. res.status .. " to " .. what .. (detail and (": " .. tostring(detail)) or ""),
    res.status == 404 and "not_found" or res.status == 409 and "conflict" or "invalid"
end

function _M.create(order)
  local res, err, code = svc.call("payment", "POST", "/internal/payments", {
    order_id = order.id, amount_cents = order.total_cents, currency = order.currency,
    customer_email = order.email, user_id = order.user_id,
  })
  if not res then return nil, err, code end
  if (res.status ~= 200 and res.status ~= 201) or type(res.body) ~= "table" or type(res.body.id) ~= "string" then
    return failed(res, "a payment")
  end
  return res.body
end

-- → "canceled" when no money can move any more, "succeeded" when the payment completed first.
function _M.cancel(payment_id)
  local res, err, code = svc.call("payment", "POST", "/internal/payments/" .. payment_id .. "/cancel")
  if not res then return nil, err, code end
  if res.status == 200 then return "canceled" end
  if res.status == 409 and type(res.body) == "table" and res.body.status == "succeeded" then return "succeeded" end
  if res.status == 404 then return "canceled" end   -- never created: nothing to cancel
  return failed(res, "a cancel")
end

-- A full refund of the order's payment; one per order whoever asks (key "refund-<order id>").
function _M.refund(order)
  local res, err, code = svc.call("payment", "POST", "/internal/payments/" .. order.payment_id .. "/refunds", {},
    { headers = { ["Idempotency-Key"] = "refund-" .. order.id } })
  if not res then return nil, err, code end
  if res.status ~= 200 and res.status ~= 201 then
    if res.status == 409 then return { already = true } end   -- refunded in full before
    return failed(res, "a refund")
  end
  return res.body
end

return _M
