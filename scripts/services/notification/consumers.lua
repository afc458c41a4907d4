-- scripts/services/notification/consumers.lua: the event consumer (each event → one queued
-- delivery row, rendered from its templates, in the transaction of its inbox claim; lib.consumer
-- acks after the commit) and the sender runners (services.notification.sender), which may block
-- on SMTP: runners are allowed to.
local consumer = require "lib.consumer"
local host = require "host"
local log = require "log"
local sender = require "services.notification.sender"
local smtp = require "smtp"
local store = require "services.notification.store"
local templates = require "services.notification.templates"
local events = require "lib.events"

-- The work of one event, inside the consumer's transaction. A bad recipient or an event type
-- without templates returns an error: the broker redelivers it and, past its delivery limit,
-- dead-letters it to notification.events.dlq.
local function handle(event)
  local data = event.data
  if type(data) ~= "table" then return nil, "the event has no data object", "invalid" end
  if not smtp.valid_address(data.email) then return nil, "data.email is not a deliverable address", "invalid" end
  local mail, err, code = templates.render(event)
  if not mail then return nil, err, code end
  local _, ierr, icode = store.enqueue {
    event_id = event.id, event_type = event.type, recipient = data.email,
    user_id = events.valid_uuid(data.user_id) and data.user_id or nil,
    subject = mail.subject, text = mail.text, html = mail.html, occurred_at = event.occurred_at,
    traceparent = events.valid_traceparent(event.traceparent) and event.traceparent or nil,
  }
  if ierr then return nil, ierr, icode end
  return true
end

local entries = {
  consumer.define {
    name = "notification", queue = host.env("NOTIFY_QUEUE") or "notification.events",
    bindings = templates.TYPES, prefetch = 20, delivery_limit = 5, handle = handle,
  },
}

local cfg = sender.config()
local last_warn = 0
for i = 1, cfg.senders do
  entries[#entries + 1] = {
    name = "notification-sender-" .. i,
    loop = function()
      local res, err, code = sender.send_one(cfg)
      if res == "idle" then host.sleep(cfg.poll) return end
      if not res then
        if host.now() - last_warn > 10 then
          last_warn = host.now()
          log.warn("notification sender: database unavailable; retrying", { error = tostring(err), code = code })
        end
        host.sleep(1)
      elseif res ~= "sent" then
        log.info("notification send failed", { outcome = res, error = tostring(err), code = code })
      end
    end,
  }
end

return entries
