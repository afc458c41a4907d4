-- luacheck: max line length 160
-- spec/chaos/invariants.lua: what must hold once a chaos round has settled, read from every
-- store that has a say — the order, product, payment and notification databases, the Stripe
-- stand-in (the money's truth), RabbitMQ and the SMTP sink (maildev) — for the round's buyers
-- and products only. Each check adds a line to `failures`; the counts go to the round's report.
--
--   local snap = inv.snapshot(w, round)   -- round = { users, products = { {id, initial} }, notify_kills, started }
--   local settled = inv.settled(snap)         -- true once nothing is left in flight
--   local counts, failures = inv.check(snap, round)
local cjson = require "cjson.safe"
local http = require "http"
local P = require "support.product_helpers"

local M = {}

-- The rows of a SELECT as Lua tables (json_agg: one psql round trip).
local function rows(url, sql)
  local out = P.psql(url, "SELECT coalesce(json_agg(t), '[]'::json) FROM (" .. sql .. ") t")
  return assert(cjson.decode(out), "bad JSON from psql: " .. out)
end

local function list(ids)
  local q = {}
  for i, id in ipairs(ids) do q[i] = "'" .. id .. "'" end
  return #q > 0 and table.concat(q, ",") or "NULL"
end

local function get_json(url)
  local r = http.request { method = "GET", url = url, timeout_ms = 30000 }
  assert(r and r.status == 200, "GET " .. url .. " failed")
  return cjson.decode(r.body)
end

-- Queue depths (ready + unacked) by name, from rabbitmqctl.
local function queues()
  local p = io.popen("scripts/dev/stack.sh rabbitmqctl list_queues -q --no-table-headers name messages 2>/dev/null")
  local out = {}
  for line in p:lines() do
    local name, n = line:match("^(%S+)%s+(%d+)")
    if name then out[name] = tonumber(n) end
  end
  p:close()
  return out
end

-- Everything the checks read, in one go.
function M.snapshot(w, round)
  local s = {}
  local users = list(round.users)
  s.orders = rows(w.order.db_url, ([[
    SELECT o.id, o.status, o.step, o.total_cents, o.refunded_cents, o.payment_status,
           (SELECT count(*) FROM order_status_history h WHERE h.order_id = o.id AND h.status = 'paid') AS paid_rows,
           (SELECT count(*) FROM order_status_history h WHERE h.order_id = o.id AND h.status = 'cancelled') AS cancelled_rows,
           (SELECT json_agg(json_build_object('product_id', i.product_id, 'quantity', i.quantity)) FROM order_items i
             WHERE i.order_id = o.id) AS items
      FROM orders o WHERE o.user_id IN (%s)]]):format(users))
  local ids = {}
  for i, o in ipairs(s.orders) do ids[i] = o.id end
  local pids = {}
  for i, p in ipairs(round.products) do pids[i] = p.id end
  s.inventory = rows(w.product.db_url, ([[
    SELECT i.product_id, i.stock, i.reserved,
           (SELECT json_build_object('stock', l.stock_after, 'reserved', l.reserved_after) FROM inventory_ledger l
             WHERE l.product_id = i.product_id ORDER BY l.id DESC LIMIT 1) AS ledger_last,
           (SELECT coalesce(sum(quantity) FILTER (WHERE kind = 'commit'), 0) - coalesce(sum(quantity) FILTER (WHERE kind = 'return'), 0)
              FROM inventory_ledger l WHERE l.product_id = i.product_id) AS ledger_sold
      FROM inventory i WHERE i.product_id IN (%s)]]):format(list(pids)))
  s.reservations = rows(w.product.db_url, ([[
    SELECT r.id, r.status,
           (SELECT coalesce(max(n), 0) FROM (SELECT count(*) AS n FROM inventory_ledger l
             WHERE l.reservation_id = r.id AND l.kind = 'commit' GROUP BY l.product_id) per_item) AS commits
      FROM reservations r WHERE r.id IN (%s)]]):format(list(ids)))
  s.payments = rows(w.payment.db_url, ([[
    SELECT p.id, p.order_id, p.status, p.amount_cents, p.refunded_cents, p.provider_id,
           (SELECT count(*) FROM payment_status_history h WHERE h.payment_id = p.id AND h.status = 'succeeded') AS succeeded_rows
      FROM payments p WHERE p.order_id IN (%s)]]):format(list(ids)))
  -- event id → (order, type) for the events that send e-mail, from the two outboxes
  s.events = rows(w.order.db_url, ([[SELECT id, type, payload->'data'->>'order_id' AS order_id FROM outbox
    WHERE payload->'data'->>'order_id' IN (%s)]]):format(list(ids)))
  for _, e in ipairs(rows(w.payment.db_url, ([[SELECT id, type, payload->'data'->>'order_id' AS order_id FROM outbox
    WHERE payload->'data'->>'order_id' IN (%s)]]):format(list(ids)))) do s.events[#s.events + 1] = e end
  s.unsent = {
    order = tonumber(P.psql(w.order.db_url, "SELECT count(*) FROM outbox WHERE sent_at IS NULL")),
    payment = tonumber(P.psql(w.payment.db_url, "SELECT count(*) FROM outbox WHERE sent_at IS NULL")),
    product = tonumber(P.psql(w.product.db_url, "SELECT count(*) FROM outbox WHERE sent_at IS NULL")),
    notifications = tonumber(P.psql(w.notification.db_url, "SELECT count(*) FROM notifications WHERE status = 'queued'")),
  }
  -- (the round's events only: every round's would soon pass the http binding's 8 MiB answer cap)
  s.stripe = get_json(w.standin.url .. "/_standin/events?created%5Bgte%5D=" .. math.floor(round.started or 0)).data
  s.mails = get_json(os.getenv("SMTP_API_URL"))
  s.emails_of = {}
  for _, e in ipairs(round.emails or {}) do s.emails_of[e] = true end
  s.queues = round.check_queues and queues() or nil
  s.queue_names = { w.queue, w.notify_queue }
  return s
end

-- Nothing left in flight: every order of the round paid or cancelled (or an undone checkout),
-- no reservation held, every outbox row published, every e-mail sent.
function M.settled(s)
  for _, o in ipairs(s.orders) do
    if o.step ~= "abandoned" and o.status ~= "paid" and o.status ~= "cancelled" then return false, "order " .. o.id .. " is " .. o.status .. "/" .. o.step end
  end
  for _, i in ipairs(s.inventory) do
    if i.reserved ~= 0 then return false, "product " .. i.product_id .. " has " .. i.reserved .. " reserved" end
  end
  for k, n in pairs(s.unsent) do
    if n ~= 0 then return false, n .. " unsent in " .. k end
  end
  return true
end

-- The Stripe stand-in's view: each PaymentIntent's last state, its refunds, by order id.
local function stripe_view(events)
  local pis, refunds = {}, {}
  for _, e in ipairs(events) do
    local o = e.data.object
    if o.object == "payment_intent" then pis[o.id] = o
    elseif o.object == "refund" then refunds[o.id] = o end
  end
  local by_order = {}
  for id, pi in pairs(pis) do
    local oid = pi.metadata and pi.metadata.order_id
    if oid then
      by_order[oid] = by_order[oid] or {}
      table.insert(by_order[oid], { id = id, pi = pi, refunded = 0, refunds = 0 })
    end
  end
  local refunded = {}
  for _, r in pairs(refunds) do
    if r.status == "succeeded" then
      refunded[r.payment_intent] = refunded[r.payment_intent] or { cents = 0, n = 0 }
      refunded[r.payment_intent].cents = refunded[r.payment_intent].cents + r.amount
      refunded[r.payment_intent].n = refunded[r.payment_intent].n + 1
    end
  end
  for _, list_ in pairs(by_order) do
    for _, x in ipairs(list_) do
      local r = refunded[x.id]
      if r then x.refunded, x.refunds = r.cents, r.n end
    end
  end
  return by_order
end

-- → counts, failures (a list of sentences; empty when every invariant holds)
function M.check(s, round)
  local failures = {}
  local function fail(fmt, ...) failures[#failures + 1] = fmt:format(...) end
  local c = { orders = 0, paid = 0, cancelled = 0, abandoned = 0, emails = 0, duplicate_emails = 0, refunded = 0 }

  -- 1. every order paid or cancelled; its final transition recorded exactly once
  local sold = {}
  local orders = {}
  for _, o in ipairs(s.orders) do
    orders[o.id] = o
    if o.step == "abandoned" then
      c.abandoned = c.abandoned + 1
    else
      c.orders = c.orders + 1
      if o.status == "paid" then
        c.paid = c.paid + 1
        for _, it in ipairs(o.items ~= cjson.null and o.items or {}) do sold[it.product_id] = (sold[it.product_id] or 0) + it.quantity end
      elseif o.status == "cancelled" then
        c.cancelled = c.cancelled + 1
      else
        fail("order %s is %s (step %s), neither paid nor cancelled", o.id, o.status, o.step)
      end
      if o.paid_rows > 1 then fail("order %s was marked paid %d times", o.id, o.paid_rows) end
      if o.cancelled_rows > 1 then fail("order %s was marked cancelled %d times", o.id, o.cancelled_rows) end
      if o.status == "paid" and o.paid_rows ~= 1 then fail("paid order %s has %d paid history rows", o.id, o.paid_rows) end
      if o.status == "cancelled" and o.cancelled_rows ~= 1 then fail("cancelled order %s has %d cancelled rows", o.id, o.cancelled_rows) end
    end
  end

  -- 2. stock = initial − sold; nothing reserved; the ledger agrees
  c.stock_before, c.stock_after, c.sold = 0, 0, 0
  local inv = {}
  for _, i in ipairs(s.inventory) do inv[i.product_id] = i end
  for _, p in ipairs(round.products) do
    local i = inv[p.id]
    local n = sold[p.id] or 0
    c.stock_before, c.sold = c.stock_before + p.initial, c.sold + n
    if not i then fail("product %s has no inventory row", p.id)
    else
      c.stock_after = c.stock_after + i.stock
      if i.stock ~= p.initial - n then fail("product %s: stock %d, expected initial %d − sold %d = %d", p.id, i.stock, p.initial, n, p.initial - n) end
      if i.reserved ~= 0 then fail("product %s: %d units still reserved after the round settled", p.id, i.reserved) end
      if i.ledger_sold ~= n then fail("product %s: the ledger commits %d units net, the paid orders %d", p.id, i.ledger_sold, n) end
      local last = i.ledger_last
      if last == cjson.null or last.stock ~= i.stock or last.reserved ~= i.reserved then
        fail("product %s: the ledger's last row (%s) disagrees with the inventory row (%d/%d)", p.id, cjson.encode(last), i.stock, i.reserved)
      end
    end
  end

  -- 3. no unit both reserved and sold: a paid order's reservation is committed (once); a
  --    cancelled order's is not held
  local res = {}
  for _, r in ipairs(s.reservations) do res[r.id] = r end
  for id, o in pairs(orders) do
    local r = res[id]
    if o.status == "paid" and o.step ~= "abandoned" then
      if not r or r.status ~= "committed" then fail("paid order %s: reservation %s", id, r and r.status or "missing") end
    elseif r and r.status == "reserved" then
      fail("order %s (%s/%s): its reservation is still held", id, o.status, o.step)
    end
    -- (commits: the most commit rows of any one item: an order of two products commits twice, once each)
    if r and r.commits > 1 then fail("order %s: an item of its reservation committed %d times", id, r.commits) end
  end

  -- 4. every payment matches the Stripe stand-in
  local stripe = stripe_view(s.stripe)
  local pay = {}
  for _, p in ipairs(s.payments) do
    if pay[p.order_id] then fail("order %s has two payments", p.order_id) end
    pay[p.order_id] = p
  end
  for id, o in pairs(orders) do
    local intents = stripe[id] or {}
    if #intents > 1 then fail("order %s has %d PaymentIntents at Stripe", id, #intents) end
    local x = intents[1]
    local p = pay[id]
    local charged = x and x.pi.status == "succeeded" and x.pi.amount or 0
    local kept = charged - (x and x.refunded or 0)
    if x and x.refunds > 1 then fail("order %s: %d refunds at Stripe", id, x.refunds) end
    if x and x.refunded > 0 then c.refunded = c.refunded + 1 end
    if o.status == "paid" and o.step ~= "abandoned" then
      if kept ~= o.total_cents then fail("paid order %s (%d cents): Stripe kept %d cents", id, o.total_cents, kept) end
      if not p or p.status ~= "succeeded" or p.provider_id ~= x.id then
        fail("paid order %s: payment row %s", id, p and (p.status .. " " .. tostring(p.provider_id)) or "missing")
      end
    elseif kept ~= 0 then
      fail("order %s is %s/%s but Stripe kept %d cents of it", id, o.status, o.step, kept)
    end
    if p and x and p.provider_id == x.id then
      -- (a declined card leaves the intent requires_payment_method; the row says failed)
      if (p.status == "succeeded") ~= (x.pi.status == "succeeded") then fail("order %s: payment row %s, Stripe says %s", id, p.status, x.pi.status) end
      if p.refunded_cents ~= x.refunded then fail("order %s: payment row refunded %d, Stripe %d", id, p.refunded_cents, x.refunded) end
      if p.succeeded_rows > 1 then fail("payment %s moved to succeeded %d times", p.id, p.succeeded_rows) end
    elseif p and p.provider_id ~= cjson.null and not x then
      fail("order %s: payment row names %s, unknown to Stripe", id, p.provider_id)
    end
  end

  -- 5. e-mails: each (order, kind) at most 1 + kills of the notification path; and at least one
  --    for each event that sends mail
  local event = {}
  for _, e in ipairs(s.events) do event[e.id] = e end
  local sent = {}
  for _, m in ipairs(s.mails) do
    local eid = m.headers and m.headers["x-mercato-event-id"]
    local e = eid and event[eid]
    if e then
      local k = e.order_id .. " " .. e.type
      sent[k] = (sent[k] or 0) + 1
      c.emails = c.emails + 1
    end
  end
  local allowed = 1 + (round.notify_kills or 0)
  local MAILED = { ["order.created"] = true, ["order.cancelled"] = true, ["payment.completed"] = true, ["payment.refunded"] = true }
  local seen = {}
  for _, e in ipairs(s.events) do
    local k = e.order_id .. " " .. e.type
    if MAILED[e.type] and not seen[k] then
      seen[k] = true
      local n = sent[k] or 0
      if n == 0 then fail("no e-mail for %s of order %s", e.type, e.order_id) end
      if n > 1 then c.duplicate_emails = c.duplicate_emails + n - 1 end
      if n > allowed then fail("%d e-mails for %s of order %s (allowed %d)", n, e.type, e.order_id, allowed) end
    end
  end

  -- 6. the bus drained: the round's consumer queues empty, nothing dead-lettered
  if s.queues then
    for _, q in ipairs(s.queue_names) do
      if (s.queues[q] or 0) ~= 0 then fail("queue %s still holds %d messages", q, s.queues[q]) end
      if (s.queues[q .. ".dlq"] or 0) ~= 0 then fail("dead-letter queue %s.dlq holds %d messages", q, s.queues[q .. ".dlq"]) end
    end
  end
  for k, n in pairs(s.unsent) do
    if n ~= 0 then fail("%d %s left unsent", n, k == "notifications" and "e-mails" or (k .. " outbox rows")) end
  end
  return c, failures
end

return M
