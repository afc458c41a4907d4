-- spec/integration/notification_spec.lua: the notification service against the real stack —
-- RabbitMQ events in, e-mails out through the SMTP sink (maildev), deliveries tracked in
-- PostgreSQL, and the HTTP API over them (CONTRACT §6, §7; issue 14).
local cjson = require "cjson.safe"
local crypto = require "crypto"
local queue = require "queue"
local N = require "support.notification_helpers"

local svc
local admin = N.party("admin")

local function uuid() return crypto.uuid4() end

-- One event per type the service mails, with its data (the shapes the branches agreed on).
local function sample(etype, email, user_id)
  local o, p = uuid(), uuid()
  local data = ({
    ["user.registered"] = { user_id = user_id, email = email, name = "Ann Example", role = "buyer" },
    ["order.created"] = { order_id = o, user_id = user_id, email = email, currency = "usd", total_cents = 12999,
      items = { { product_id = uuid(), name = "Desk Lamp", quantity = 2, unit_price_cents = 4500 },
                { product_id = uuid(), name = "Mug", quantity = 1, unit_price_cents = 3999 } } },
    ["payment.completed"] = { payment_id = p, order_id = o, user_id = user_id, email = email, amount_cents = 12999,
      currency = "usd", provider_id = "pi_123" },
    ["order.shipped"] = { order_id = o, user_id = user_id, email = email, carrier = "UPS", tracking_number = "1Z999" },
    ["order.delivered"] = { order_id = o, user_id = user_id, email = email },
    ["order.cancelled"] = { order_id = o, user_id = user_id, email = email, reason = "out of stock", refunded = true },
    ["payment.refunded"] = { payment_id = p, order_id = o, user_id = user_id, email = email, refund_id = "re_1",
      amount_cents = 500, refunded_total_cents = 1500, currency = "eur" },
  })[etype]
  return N.event(etype, data), data
end

-- What each subject must say for the sample above.
local SUBJECTS = {
  ["user.registered"] = "Welcome to Mercato, Ann Example",
  ["order.created"] = "Order received: $129.99",
  ["payment.completed"] = "Payment received: $129.99",
  ["order.shipped"] = "Your order has shipped",
  ["order.delivered"] = "Your order has been delivered",
  ["order.cancelled"] = "Your order was cancelled",
  ["payment.refunded"] = "Refund issued: €5.00",
}

-- A fragment each part must hold (from the event's data).
local function fragments(etype, data)
  if etype == "order.created" then return { "Desk Lamp", "$45.00", "$129.99", data.order_id } end
  if etype == "order.shipped" then return { "UPS", "1Z999" } end
  if etype == "order.cancelled" then return { "out of stock", "refunded" } end
  if etype == "payment.refunded" then return { "€5.00", "€15.00", "re_1" } end
  if etype == "user.registered" then return { "Ann Example" } end
  return { data.order_id }
end

local function header(mail, name)
  for k, v in pairs(mail.headers or {}) do if k:lower() == name then return v end end
end

describe("notification service", function()
  setup(function() svc = N.start() end)
  teardown(function() N.stop(svc) end)

  it("mails each event type exactly once, to its recipient, with its subject and both parts", function()
    local sent = {}
    for etype in pairs(SUBJECTS) do
      local email = N.email(etype:gsub("%.", "-"))
      local ev, data = sample(etype, email, uuid())
      N.publish(ev)
      sent[#sent + 1] = { etype = etype, email = email, ev = ev, data = data }
    end
    for _, s in ipairs(sent) do
      local mails = N.wait_mails(function(m) return m.to[1].address == s.email end, 1)
      assert.equal(1, #mails, s.etype)
      local m = mails[1]
      assert.equal(SUBJECTS[s.etype], m.subject, s.etype)
      assert.equal("no-reply@mercato.test", m.from[1].address)
      assert.equal(s.ev.id, header(m, "x-mercato-event-id"), s.etype)
      assert.matches("^<.+@mercato%.test>$", header(m, "message-id"))
      assert.truthy(m.text and #m.text > 0, s.etype .. " has no text part")
      assert.truthy(m.html and m.html:find("<p>", 1, true), s.etype .. " has no html part")
      for _, f in ipairs(fragments(s.etype, s.data)) do
        assert.truthy(m.text:find(f, 1, true), s.etype .. " text lacks " .. f)
        assert.truthy(m.html:find(f, 1, true), s.etype .. " html lacks " .. f)
      end
      local src = N.source(m)
      assert.matches("Date: %a%a%a, %d%d %a%a%a %d%d%d%d %d%d:%d%d:%d%d %+0000\r\n", src)
      assert.matches("To: " .. s.email:gsub("%p", "%%%0") .. "\r\n", src)
      assert.matches("multipart/alternative", src)
      assert.matches("text/plain; charset=utf%-8", src)
      assert.matches("text/html; charset=utf%-8", src)
    end
    -- one delivery row each, all sent
    for _, s in ipairs(sent) do
      local q = "SELECT status || '|' || attempts FROM notifications WHERE event_id = '%s'"
      assert.equal("sent|1", N.sql(svc, q:format(s.ev.id)))
    end
    -- the refund subject is UTF-8, so it travelled as an RFC 2047 word
    local refund = N.mails_to(sent[1].etype == "payment.refunded" and sent[1].email or (function()
      for _, s in ipairs(sent) do if s.etype == "payment.refunded" then return s.email end end
    end)())
    assert.matches("Subject: =%?UTF%-8%?B%?", N.source(refund[1]))
  end)

  it("sends nothing more for a duplicated event", function()
    local email = N.email("dup")
    local ev = sample("order.delivered", email, uuid())
    N.publish(ev)
    N.publish(ev)
    assert.equal(1, #N.wait_mails(function(m) return m.to[1].address == email end, 1))
    -- the second copy was consumed as a duplicate: wait until the consumer says so, then look again
    local deadline = N.now() + 10
    local dup
    repeat
      local r = N.get(svc, "/metrics")
      dup = r.body:match('events_consumed_total{consumer="notification",outcome="duplicate"} (%d+)')
      if dup and tonumber(dup) >= 1 then break end
      N.sleep(0.1)
    until N.now() > deadline
    assert.truthy(dup and tonumber(dup) >= 1, "the duplicate was never consumed")
    -- senders only send delivery rows, and the event still has exactly one (sent): no second e-mail can follow
    local q = "SELECT count(*) || '|' || min(status) FROM notifications WHERE event_id = '%s'"
    assert.equal("1|sent", N.sql(svc, q:format(ev.id)))
    assert.equal(1, #N.mails_to(email))
  end)

  it("gives an inert e-mail to a user named {{name}}<script>alert(1)</script>", function()
    local email = N.email("xss")
    local ev = N.event("user.registered", { user_id = uuid(), email = email, role = "buyer",
      name = "{{name}}<script>alert(1)</script>" })
    N.publish(ev)
    local m = N.wait_mails(function(x) return x.to[1].address == email end, 1)[1]
    assert.truthy(m, "no e-mail")
    assert.falsy(m.html:find("<script", 1, true))
    assert.truthy(m.html:find("{{name}}&lt;script&gt;alert(1)&lt;/script&gt;", 1, true))
    assert.truthy(m.text:find("{{name}}<script>alert(1)</script>", 1, true))   -- text/plain shows it as typed
    assert.equal("Welcome to Mercato, {{name}}<script>alert(1)</script>", m.subject)
  end)

  it("dead-letters a poison message: not an envelope at once, a bad recipient after its delivery limit", function()
    N.publish("this is not json", "order.created")
    local bad = N.event("order.shipped", { order_id = uuid(), email = "not an address\r\nBcc: x@evil.test",
      carrier = "UPS", tracking_number = "1" })
    N.publish(bad)
    local seen = {}
    local deadline = N.now() + 30
    while N.now() < deadline and not (seen.raw and seen.bad) do
      local m = queue.next(svc.queue .. ".dlq", 1000)
      if m then
        if m.body == "this is not json" then seen.raw = true end
        if m.message_id == bad.id then seen.bad = true end
        queue.ack(m.delivery_tag)
      end
    end
    assert.is_true(seen.raw, "the non-envelope never reached the DLQ")
    assert.is_true(seen.bad, "the event with a bad recipient never reached the DLQ")
    assert.equal("0", N.sql(svc, ("SELECT count(*) FROM notifications WHERE event_id = '%s'"):format(bad.id)))
    assert.equal(0, #N.wait_mails(function(x) return x.to[1].address:find("evil", 1, true) ~= nil end, 1, 0.5))
  end)

  describe("HTTP API", function()
    local owner, email, ev, id

    setup(function()
      owner = N.party("buyer")
      email = N.email("api")
      ev = sample("order.shipped", email, owner.sub)
      N.publish(ev)
      N.wait_mails(function(m) return m.to[1].address == email end, 1)
      id = N.sql(svc, ("SELECT id FROM notifications WHERE event_id = '%s'"):format(ev.id))
    end)

    it("lists deliveries for an admin, filtered by recipient and status", function()
      local r = N.get(svc, "/notifications?recipient=" .. email:upper(), { token = admin.token })
      assert.equal(200, r.status)
      assert.equal(1, #r.json.items)
      local n = r.json.items[1]
      assert.equal(id, n.id)
      assert.equal(email, n.recipient)
      assert.equal("sent", n.status)
      assert.equal("order.shipped", n.event_type)
      assert.equal(ev.id, n.event_id)
      assert.equal("Your order has shipped", n.subject)
      assert.equal(1, n.attempts)
      assert.equal(cjson.null, n.next_attempt_at)
      assert.truthy(n.sent_at ~= cjson.null and n.message_id ~= cjson.null)
      assert.equal(0, #N.get(svc, "/notifications?recipient=" .. email .. "&status=failed", { token = admin.token }).json.items)
      -- pages
      local p1 = N.get(svc, "/notifications?limit=2", { token = admin.token }).json
      assert.equal(2, #p1.items)
      assert.is_string(p1.next_cursor)
      local p2 = N.get(svc, "/notifications?limit=2&cursor=" .. p1.next_cursor, { token = admin.token }).json
      assert.are_not.equal(p1.items[1].id, p2.items[1].id)
      assert.is_true(p1.items[2].id > p2.items[1].id)   -- newest first
    end)

    it("answers 400, 401 and 403 as problems", function()
      local r = N.get(svc, "/notifications?status=lost", { token = admin.token })
      assert.equal(400, r.status)
      assert.equal("status", r.json.errors[1].field)
      assert.matches("application/problem%+json", r.headers["content-type"])
      assert.equal(400, N.get(svc, "/notifications?cursor=%%%", { token = admin.token }).status)
      assert.equal(400, N.get(svc, "/notifications?limit=0", { token = admin.token }).status)
      assert.equal(401, N.get(svc, "/notifications").status)
      assert.equal(401, N.get(svc, "/notifications/me").status)
      assert.equal(403, N.get(svc, "/notifications", { token = owner.token }).status)
      assert.equal(403, N.post(svc, "/notifications/" .. id .. "/retry", nil, { token = owner.token }).status)
    end)

    it("shows a user their own e-mails and hides everyone else's", function()
      local r = N.get(svc, "/notifications/me", { token = owner.token })
      assert.equal(200, r.status)
      assert.equal(1, #r.json.items)
      assert.equal(id, r.json.items[1].id)
      assert.equal(200, N.get(svc, "/notifications/" .. id, { token = owner.token }).status)
      assert.equal(200, N.get(svc, "/notifications/" .. id, { token = admin.token }).status)
      local other = N.party("buyer")
      assert.equal(0, #N.get(svc, "/notifications/me", { token = other.token }).json.items)
      assert.equal(404, N.get(svc, "/notifications/" .. id, { token = other.token }).status)
      assert.equal(404, N.get(svc, "/notifications/" .. uuid(), { token = admin.token }).status)
      assert.equal(404, N.get(svc, "/notifications/not-a-uuid", { token = admin.token }).status)
    end)

    it("retries a failed delivery for an admin, and refuses to resend a sent one", function()
      local r = N.post(svc, "/notifications/" .. id .. "/retry", nil, { token = admin.token })
      assert.equal(409, r.status)
      assert.equal("sent", r.json.status)
      assert.equal(404, N.post(svc, "/notifications/" .. uuid() .. "/retry", nil, { token = admin.token }).status)
      -- a delivery that failed (as after NOTIFY_MAX_ATTEMPTS) goes out again once retried
      local email2 = N.email("retry")
      local ev2 = sample("order.delivered", email2, owner.sub)
      N.publish(ev2)
      assert.equal(1, #N.wait_mails(function(m) return m.to[1].address == email2 end, 1))
      local id2 = N.sql(svc, ("UPDATE notifications SET status = 'failed', attempts = 8, last_error = 'smtp: down' " ..
        "WHERE event_id = '%s' RETURNING id"):format(ev2.id))
      -- the SMTP error names the mail server: its owner sees the status, only an admin the error
      assert.equal(cjson.null, N.get(svc, "/notifications/" .. id2, { token = owner.token }).json.last_error)
      assert.equal("smtp: down", N.get(svc, "/notifications/" .. id2, { token = admin.token }).json.last_error)
      r = N.post(svc, "/notifications/" .. id2 .. "/retry", nil, { token = admin.token })
      assert.equal(200, r.status)
      assert.equal("queued", r.json.status)
      assert.equal(0, r.json.attempts)
      assert.equal(2, #N.wait_mails(function(m) return m.to[1].address == email2 end, 2))
      assert.equal("sent", N.sql(svc, ("SELECT status FROM notifications WHERE id = '%s'"):format(id2)))
    end)

    it("counts sends and their latency in /metrics", function()
      local body = N.get(svc, "/metrics").body
      assert.matches('notifications_sent_total{type="order.shipped"} %d+', body)
      assert.matches("notification_send_duration_seconds_count %d+", body)
      assert.matches("notification_event_latency_seconds_count %d+", body)
    end)

    it("serves an OpenAPI document naming every route", function()
      local r = N.get(svc, "/openapi.json")
      assert.equal(200, r.status)
      assert.equal("3.1.0", r.json.openapi)
      for _, p in ipairs({ "/notifications", "/notifications/me", "/notifications/{id}", "/notifications/{id}/retry" }) do
        assert.truthy(r.json.paths[p], p)
      end
    end)
  end)
end)
