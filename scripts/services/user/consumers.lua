-- scripts/services/user/consumers.lua: the user service consumes no events; it only relays
-- its outbox (user.registered) to RabbitMQ.
local outbox = require "lib.outbox"

return { outbox.relay_entry() }
