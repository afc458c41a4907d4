-- scripts/services/order/routes.lua: what the order service answers (CONTRACT §6). Every route
-- needs a user account's token (roles checked in C); ownership in the handlers. POST /orders
-- honours Idempotency-Key (the host wraps it with lib.idempotency).
local roles = require "lib.roles"
local cart = require "services.order.handlers.cart"
local orders = require "services.order.handlers.orders"

local SMALL = 16 * 1024
local FULFILLERS = { "admin", "seller" }

local USERS = roles.USERS   -- a user account's own routes: a service token gets 403

return {
  { "GET",    "/cart",                     cart.show, roles = USERS },
  { "PUT",    "/cart/items/{product_id}",  cart.put, roles = USERS, max_body = SMALL },
  { "DELETE", "/cart/items/{product_id}",  cart.remove, roles = USERS },
  { "DELETE", "/cart",                     cart.clear, roles = USERS },
  { "POST",   "/orders",                   orders.create, roles = USERS, max_body = SMALL, idempotency = true },
  { "GET",    "/orders",                   orders.list, roles = USERS },
  { "GET",    "/orders/{id}",              orders.show, roles = USERS },
  { "POST",   "/orders/{id}/cancel",       orders.cancel, roles = USERS, max_body = SMALL },
  { "POST",   "/orders/{id}/ship",         orders.ship, roles = FULFILLERS, max_body = SMALL },
  { "POST",   "/orders/{id}/deliver",      orders.deliver, roles = FULFILLERS, max_body = SMALL },
}
