-- scripts/services/order/routes.lua: what the order service answers (CONTRACT §6). Every route
-- needs a token (checked in C); ownership in the handlers. POST /orders honours
-- Idempotency-Key (the host wraps it with lib.idempotency).
local cart = require "services.order.handlers.cart"
local orders = require "services.order.handlers.orders"

local SMALL = 16 * 1024
local FULFILLERS = { "admin", "seller" }

return {
  { "GET",    "/cart",                     cart.show, auth = "required" },
  { "PUT",    "/cart/items/{product_id}",  cart.put, auth = "required", max_body = SMALL },
  { "DELETE", "/cart/items/{product_id}",  cart.remove, auth = "required" },
  { "DELETE", "/cart",                     cart.clear, auth = "required" },
  { "POST",   "/orders",                   orders.create, auth = "required", max_body = SMALL, idempotency = true },
  { "GET",    "/orders",                   orders.list, auth = "required" },
  { "GET",    "/orders/{id}",              orders.show, auth = "required" },
  { "POST",   "/orders/{id}/cancel",       orders.cancel, auth = "required", max_body = SMALL },
  { "POST",   "/orders/{id}/ship",         orders.ship, roles = FULFILLERS, max_body = SMALL },
  { "POST",   "/orders/{id}/deliver",      orders.deliver, roles = FULFILLERS, max_body = SMALL },
}
