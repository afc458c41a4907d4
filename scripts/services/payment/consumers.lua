-- scripts/services/payment/consumers.lua: the outbox relay (payment.* events to RabbitMQ).
local outbox = require "lib.outbox"

return { outbox.relay_entry() }
