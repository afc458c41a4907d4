-- scripts/services/payment/schema.lua: what the payment service accepts (lib.validate schemas).
-- luacheck: max line length 170
local _M = {}

local UUID = "^%x%x%x%x%x%x%x%x%-%x%x%x%x%-%x%x%x%x%-%x%x%x%x%-%x%x%x%x%x%x%x%x%x%x%x%x$"
_M.MAX_AMOUNT_CENTS = 99999999   -- Stripe's own ceiling for one charge (999,999.99)

local uuid = { type = "string", pattern = UUID, pattern_message = "must be a UUID" }

-- POST /internal/payments (the order service).
_M.create = {
  order_id = { type = "string", required = true, pattern = UUID, pattern_message = "must be a UUID" },
  amount_cents = { type = "integer", required = true, min = 1, max = _M.MAX_AMOUNT_CENTS },
  currency = { type = "string", required = true, pattern = "^%l%l%l$", pattern_message = "must be a lower-case ISO 4217 code such as eur" },
  customer_email = { type = "string", format = "email", max_len = 254 },
  user_id = { type = "string", nullable = true, pattern = uuid.pattern, pattern_message = uuid.pattern_message },
}

-- POST /payments/{id}/refunds and /internal/payments/{id}/refunds: full refund by default.
_M.refund = {
  amount_cents = { type = "integer", min = 1, max = _M.MAX_AMOUNT_CENTS },
}

return _M
