-- scripts/services/payment/routes.lua: what the payment service answers (CONTRACT §6).
-- Roles and scopes are checked in C; ownership (the payment's user_id = token sub) in the
-- handlers. The webhook is public: its Stripe-Signature is its authentication.
local roles = require "lib.roles"
local payments = require "services.payment.handlers.payments"
local refunds = require "services.payment.handlers.refunds"
local webhooks = require "services.payment.handlers.webhooks"
local reconcile = require "services.payment.handlers.reconcile"

local SMALL = 16 * 1024
local ADMIN = { "admin" }

local USERS = roles.USERS   -- a user account's own routes: a service token gets 403

return {
  { "POST", "/internal/payments",               payments.create, scope = "payments", max_body = SMALL },
  { "POST", "/internal/payments/{id}/cancel",   payments.cancel, scope = "payments", max_body = SMALL },
  -- Refunds honour Idempotency-Key in the host (lib.idempotency: replay, 422, 409); the handler
  -- keeps its pending refund per key as the recovery point of a request that died mid-way.
  { "POST", "/internal/payments/{id}/refunds",  refunds.create, scope = "payments", max_body = SMALL, idempotency = true },
  { "GET",  "/payments",                        payments.list, roles = USERS },
  { "POST", "/payments/reconcile",              reconcile.run, roles = ADMIN, max_body = SMALL },
  { "GET",  "/payments/{id}",                   payments.show, roles = USERS },
  { "POST", "/payments/{id}/refunds",           refunds.create, roles = ADMIN, max_body = SMALL, idempotency = true },
  { "POST", "/webhooks/stripe",                 webhooks.receive, max_body = 512 * 1024 },
}
