-- scripts/services/payment/provider.lua: the Stripe calls the payment service makes, through
-- the `stripe` binding (pinned version, idempotency keys, retries, error mapping in C/Lua).
local stripe = require "stripe"

local _M = {}

-- Create the PaymentIntent of payment p; the order id is the Idempotency-Key (CONTRACT §6), so
-- a repeat — a retried request, a reconciliation of a payment whose answer was lost — gets the
-- same PaymentIntent back.
function _M.create_intent(p)
  local params = {
    amount = p.amount_cents, currency = p.currency, payment_method_types = { "card" },
    metadata = { order_id = p.order_id, payment_id = p.id },
  }
  if type(p.user_id) == "string" then params.metadata.user_id = p.user_id end   -- db.null when absent
  if type(p.customer_email) == "string" and p.customer_email ~= "" then params.receipt_email = p.customer_email end
  return stripe.request("POST", "/v1/payment_intents", params, { idempotency_key = p.order_id })
end

function _M.retrieve_intent(pi) return stripe.request("GET", "/v1/payment_intents/" .. pi) end

function _M.cancel_intent(pi, payment_id)
  return stripe.request("POST", "/v1/payment_intents/" .. pi .. "/cancel", {}, { idempotency_key = "cancel-" .. payment_id })
end

-- A refund of amount (nil: the rest) for payment p, our refund row's id as metadata and key.
function _M.refund(p, refund_id, amount)
  return stripe.request("POST", "/v1/refunds", {
    payment_intent = p.provider_id, amount = amount, metadata = { refund_id = refund_id, payment_id = p.id },
  }, { idempotency_key = "refund-" .. refund_id })
end

return _M
