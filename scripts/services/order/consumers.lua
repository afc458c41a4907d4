-- scripts/services/order/consumers.lua: the outbox relay (order.* events to RabbitMQ) and the
-- payment events that move the saga (inbox: each event once; redelivered until its work
-- committed; the product and payment calls inside are idempotent).
local consumer = require "lib.consumer"
local host = require "host"
local outbox = require "lib.outbox"
local saga = require "services.order.saga"

local handlers = {
  ["payment.completed"] = saga.payment_completed,
  ["payment.failed"] = saga.payment_failed,
  ["payment.refunded"] = saga.payment_refunded,
}

return {
  outbox.relay_entry(),
  consumer.define {
    name = "order-payments",
    queue = host.env("ORDER_PAYMENTS_QUEUE") or "order.payments",
    bindings = { "payment.completed", "payment.failed", "payment.refunded" },
    prefetch = 20, delivery_limit = 10,
    handle = function(event)
      local h = handlers[event.type]
      if not h or type(event.data) ~= "table" then return true end
      return h(event.data)
    end,
  },
}
