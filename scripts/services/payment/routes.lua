-- scripts/services/payment/routes.lua: what the payment service answers (CONTRACT §6).
-- Roles and scopes are checked in C; ownership (the payment's user_id = token sub) in the
-- handlers. The webhook is public: its Stripe-Signature is its authentication.
local payments = require "services.payment.handlers.payments"
local refunds = require "services.payment.handlers.refunds"
local webhooks = require "services.payment.handlers.webhooks"
local reconcile = require "services.payment.handlers.reconcile"

local SMALL = 16 * 1024
local ADMIN = { "admin" }

return {
  { "POST", "/internal/payments",               payments.create, scope = "payments", max_body = SMALL },
  { "POST", "/internal/payments/{id}/cancel",   payments.cancel, scope = "payments", max_body = SMALL },
  -- When the host's `idempotency = true` route flag lands, the two refund routes take it and
  -- handlers/refunds.lua keeps only the amount check (see its header).
  { "POST", "/internal/payments/{id}/refunds",  refunds.create, scope = "payments", max_body = SMALL },
  { "GET",  "/payments",                        payments.list, auth = "required" },
  { "POST", "/payments/reconcile",              reconcile.run, roles = ADMIN, max_body = SMALL },
  { "GET",  "/payments/{id}",                   payments.show, auth = "required" },
  { "POST", "/payments/{id}/refunds",           refunds.create, roles = ADMIN, max_body = SMALL },
  { "POST", "/webhooks/stripe",                 webhooks.receive, max_body = 512 * 1024 },
}
