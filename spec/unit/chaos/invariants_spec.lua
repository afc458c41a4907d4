-- luacheck: max line length 160
-- spec/chaos/invariants.lua's checks on a made-up settled round: silent when all is well, and each
-- invariant fires when the one thing it guards is broken (so none of them is a check that cannot fail).
local cjson = require "cjson.safe"
local inv = require "chaos.invariants"

local P1, P2 = "p-1", "p-2"

-- A consistent round: a paid order (2 × P1), a cancelled one whose card was declined, one cancelled
-- after the money came (refunded), a checkout refused for stock; P1 started at 10, P2 at 5.
local function world()
  local s = {
    orders = {
      { id = "o-paid", status = "paid", step = "done", total_cents = 2000, refunded_cents = 0, paid_rows = 1, cancelled_rows = 0,
        items = { { product_id = P1, quantity = 2 } } },
      { id = "o-declined", status = "cancelled", step = "done", total_cents = 500, refunded_cents = 0, paid_rows = 0, cancelled_rows = 1,
        items = { { product_id = P2, quantity = 1 } } },
      { id = "o-refunded", status = "cancelled", step = "done", total_cents = 1000, refunded_cents = 1000, paid_rows = 1,
        cancelled_rows = 1, items = { { product_id = P1, quantity = 1 } } },
      { id = "o-refused", status = "created", step = "abandoned", total_cents = 0, refunded_cents = 0, paid_rows = 0, cancelled_rows = 0,
        items = cjson.null },
    },
    inventory = {
      { product_id = P1, stock = 8, reserved = 0, ledger_last = { stock = 8, reserved = 0 }, ledger_sold = 2 },
      { product_id = P2, stock = 5, reserved = 0, ledger_last = { stock = 5, reserved = 0 }, ledger_sold = 0 },
    },
    reservations = {
      { id = "o-paid", status = "committed", commits = 1 },
      { id = "o-declined", status = "released", commits = 0 },
      { id = "o-refunded", status = "released", commits = 1 },
    },
    payments = {
      { id = "pay-1", order_id = "o-paid", status = "succeeded", amount_cents = 2000, refunded_cents = 0, provider_id = "pi_1", succeeded_rows = 1 },
      { id = "pay-2", order_id = "o-declined", status = "failed", amount_cents = 500, refunded_cents = 0, provider_id = "pi_2", succeeded_rows = 0 },
      { id = "pay-3", order_id = "o-refunded", status = "succeeded", amount_cents = 1000, refunded_cents = 1000, provider_id = "pi_3",
        succeeded_rows = 1 },
    },
    stripe = {
      { data = { object = { object = "payment_intent", id = "pi_1", status = "succeeded", amount = 2000, metadata = { order_id = "o-paid" } } } },
      { data = { object = { object = "payment_intent", id = "pi_2", status = "requires_payment_method", amount = 500,
        metadata = { order_id = "o-declined" } } } },
      { data = { object = { object = "payment_intent", id = "pi_3", status = "succeeded", amount = 1000, metadata = { order_id = "o-refunded" } } } },
      { data = { object = { object = "refund", id = "re_1", status = "succeeded", amount = 1000, payment_intent = "pi_3" } } },
    },
    events = {
      { id = "e1", type = "order.created", order_id = "o-paid" }, { id = "e2", type = "payment.completed", order_id = "o-paid" },
      { id = "e3", type = "order.paid", order_id = "o-paid" },
      { id = "e4", type = "order.created", order_id = "o-declined" }, { id = "e5", type = "order.cancelled", order_id = "o-declined" },
      { id = "e6", type = "order.created", order_id = "o-refunded" }, { id = "e7", type = "payment.completed", order_id = "o-refunded" },
      { id = "e8", type = "order.cancelled", order_id = "o-refunded" }, { id = "e9", type = "payment.refunded", order_id = "o-refunded" },
    },
    mails = {},
    unsent = { order = 0, payment = 0, product = 0, notifications = 0 },
    queues = { ["order.payments.x"] = 0, ["order.payments.x.dlq"] = 0 },
    queue_names = { "order.payments.x" },
  }
  for _, e in ipairs { "e1", "e2", "e4", "e5", "e6", "e7", "e8", "e9" } do
    s.mails[#s.mails + 1] = { headers = { ["x-mercato-event-id"] = e } }
  end
  return s, { products = { { id = P1, initial = 10 }, { id = P2, initial = 5 } }, notify_kills = 0 }
end

local function order(s, id)
  for _, o in ipairs(s.orders) do if o.id == id then return o end end
end

-- The failures of check(s) after broken(s, round); asserts exactly the expected one appears.
local function fires(pattern, broken)
  local s, round = world()
  broken(s, round)
  local _, failures = inv.check(s, round)
  local text = table.concat(failures, "\n")
  assert.is_true(#failures > 0, "no invariant fired for: " .. pattern)
  assert.matches(pattern, text)
end

describe("chaos invariants", function()
  it("hold on a consistent round and count it", function()
    local s, round = world()
    local c, failures = inv.check(s, round)
    assert.same({}, failures)
    assert.equal(3, c.orders)
    assert.equal(1, c.paid)
    assert.equal(2, c.cancelled)
    assert.equal(1, c.abandoned)
    assert.equal(15, c.stock_before)
    assert.equal(13, c.stock_after)
    assert.equal(2, c.sold)
    assert.equal(8, c.emails)
    assert.truthy(inv.settled(s))
  end)

  it("fire on an order left neither paid nor cancelled", function()
    fires("neither paid nor cancelled", function(s) order(s, "o-paid").status = "created" end)
  end)

  it("fire on a transition applied twice", function()
    fires("marked paid 2 times", function(s) order(s, "o-paid").paid_rows = 2 end)
    fires("marked cancelled 2 times", function(s) order(s, "o-declined").cancelled_rows = 2 end)
  end)

  it("fire when stock is not initial minus sold", function()
    fires("stock 9, expected initial 10 − sold 2 = 8", function(s) s.inventory[1].stock = 9; s.inventory[1].ledger_last.stock = 9 end)
  end)

  it("fire when units stay reserved, or a reservation of a paid order was not committed", function()
    fires("still reserved", function(s) s.inventory[2].reserved = 1; s.inventory[2].ledger_last.reserved = 1 end)
    fires("paid order o%-paid: reservation released", function(s) s.reservations[1].status = "released" end)
    fires("its reservation is still held", function(s) s.reservations[2].status = "reserved" end)
    fires("an item of its reservation committed 2 times", function(s) s.reservations[1].commits = 2 end)
  end)

  it("fire when the ledger disagrees with the stock", function()
    fires("the ledger commits 3 units net", function(s) s.inventory[1].ledger_sold = 3 end)
    fires("the ledger's last row", function(s) s.inventory[2].ledger_last = { stock = 4, reserved = 0 } end)
  end)

  it("fire when a payment does not match the Stripe stand-in", function()
    fires("Stripe kept 0 cents", function(s) s.stripe[1].data.object.status = "requires_payment_method" end)
    fires("but Stripe kept 1000 cents", function(s) table.remove(s.stripe, 4) end)
    fires("has 2 PaymentIntents", function(s)
      s.stripe[#s.stripe + 1] = { data = { object = { object = "payment_intent", id = "pi_9", status = "canceled", amount = 2000,
        metadata = { order_id = "o-paid" } } } }
    end)
    fires("payment row failed, Stripe says succeeded", function(s) s.payments[1].status = "failed" end)
    fires("payment row refunded 0, Stripe 1000", function(s) s.payments[3].refunded_cents = 0 end)
    fires("moved to succeeded 2 times", function(s) s.payments[1].succeeded_rows = 2 end)
    fires("has two payments", function(s)
      s.payments[#s.payments + 1] = { id = "pay-9", order_id = "o-paid", status = "canceled", amount_cents = 2000, refunded_cents = 0,
        provider_id = "pi_1", succeeded_rows = 0 }
    end)
  end)

  it("fire on a missing e-mail, and on duplicates beyond one per notification-path kill", function()
    fires("no e%-mail for payment.completed of order o%-paid", function(s) table.remove(s.mails, 2) end)
    fires("2 e%-mails for order.created of order o%-paid %(allowed 1%)", function(s) s.mails[#s.mails + 1] = s.mails[1] end)
    local s, round = world()
    s.mails[#s.mails + 1] = s.mails[1]
    round.notify_kills = 1
    local c, failures = inv.check(s, round)
    assert.same({}, failures)
    assert.equal(1, c.duplicate_emails)
  end)

  it("fire on a queue not drained, a dead letter, or an unsent outbox row", function()
    fires("still holds 2 messages", function(s) s.queues["order.payments.x"] = 2 end)
    fires("dead%-letter queue order.payments.x.dlq holds 1", function(s) s.queues["order.payments.x.dlq"] = 1 end)
    fires("1 order outbox rows left unsent", function(s) s.unsent.order = 1 end)
  end)
end)
