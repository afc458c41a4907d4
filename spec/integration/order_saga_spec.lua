-- luacheck: max line length 160
-- The checkout saga under crashes and unruly events (issue: "never loses an order or a unit of
-- stock"): the order process SIGKILLs itself after each persisted step (ORDER_CRASH_AFTER), is
-- restarted, and the recovery job or a retry with the same Idempotency-Key drives every
-- checkout to an end; duplicated and reordered payment events change nothing twice. After each
-- run a query over both databases checks: reserved stock = the quantities of unpaid live
-- orders, sold stock = the quantities of paid orders, and the ledger balances.
package.path = "scripts/?.lua;" .. package.path
local cjson = require "cjson.safe"
local crypto = require "crypto"
local http = require "http"
local queue = require "queue"
local events = require "lib.events"
local O = require "support.order_helpers"

describe("order service: the saga under crashes and unruly events", function()
  local w, buyer, products = nil, nil, {}

  setup(function()
    w = O.start { payment = true, order_env = {
      ORDER_RECOVER_AFTER_S = "1", ORDER_RECOVERY_EVERY_S = "1", IDEMPOTENCY_LOCK_S = "1",
    } }
    buyer = O.buyer(w)
  end)
  teardown(function() O.stop(w) end)

  local function in_list(ids) return "('" .. table.concat(ids, "','") .. "')" end

  -- The books of both services agree for the spec's products.
  local function books()
    local ids = {}
    for id in pairs(products) do ids[#ids + 1] = id end
    local reserved = tonumber(O.psql(w.product, "SELECT COALESCE(SUM(reserved), 0) FROM inventory WHERE product_id IN " .. in_list(ids)))
    local sold = tonumber(O.psql(w.product, "SELECT COALESCE(SUM(quantity) FILTER (WHERE kind = 'commit'), 0) - " ..
      "COALESCE(SUM(quantity) FILTER (WHERE kind = 'return'), 0) FROM inventory_ledger WHERE product_id IN " .. in_list(ids)))
    local unpaid = tonumber(O.psql(w.order, "SELECT COALESCE(SUM(i.quantity), 0) FROM order_items i JOIN orders o ON o.id = i.order_id " ..
      "WHERE o.status = 'created' AND o.step = 'payment_pending' AND i.product_id IN " .. in_list(ids)))
    local paid = tonumber(O.psql(w.order, "SELECT COALESCE(SUM(i.quantity), 0) FROM order_items i JOIN orders o ON o.id = i.order_id " ..
      "WHERE o.status IN ('paid', 'shipped', 'delivered') AND i.product_id IN " .. in_list(ids)))
    local stock = tonumber(O.psql(w.product, "SELECT COALESCE(SUM(stock), 0) FROM inventory WHERE product_id IN " .. in_list(ids)))
    local initial = 0
    for _, n in pairs(products) do initial = initial + n end
    return { reserved = reserved, unpaid = unpaid, sold = sold, paid = paid, stock = stock, initial = initial }
  end
  local function assert_books()
    local b = books()
    assert.equal(b.unpaid, b.reserved, "reserved stock = unpaid live orders: " .. cjson.encode(b))
    assert.equal(b.paid, b.sold, "sold stock = paid orders: " .. cjson.encode(b))
    assert.equal(b.initial - b.sold - b.reserved, b.stock, "the ledger balances: " .. cjson.encode(b))
    return b
  end

  local function new_product(stock)
    local p = O.product(w, { stock = stock })
    products[p.id] = stock
    return p
  end
  local function checkout(key)
    return http.request { method = "POST", url = w.order.url .. "/orders", timeout_ms = 20000,
      body = cjson.encode { shipping_address = O.ADDRESS },
      headers = { ["Content-Type"] = "application/json", Authorization = "Bearer " .. buyer.token, ["Idempotency-Key"] = key } }
  end
  local function get(id) return O.req(w.order, "GET", "/orders/" .. id, nil, buyer.token) end

  for _, step in ipairs { "reserving", "reserved", "payment_pending" } do
    it("ends a checkout killed after step " .. step .. " paid or undone, with the books right", function()
      O.restart_order(w, { ORDER_CRASH_AFTER = step })
      local p = new_product(10)
      assert.equal(200, O.req(w.order, "PUT", "/cart/items/" .. p.id, { quantity = 2 }, buyer.token).status)
      local key = "crash-" .. step .. "-" .. crypto.hex(crypto.random(4))
      local res = checkout(key)
      assert.is_nil(res, "the process died mid-checkout")
      O.restart_order(w, { ORDER_CRASH_AFTER = false })
      local id = O.psql(w.order, "SELECT id FROM orders WHERE user_id = '" .. buyer.sub .. "' ORDER BY created_at DESC LIMIT 1")

      if step ~= "payment_pending" then
        -- no payment exists: the recovery job releases the stock and abandons the row
        assert.truthy(O.eventually(function()
          return O.psql(w.order, "SELECT step FROM orders WHERE id = '" .. id .. "'") == "abandoned"
        end, 15))
        assert.equal(0, O.inventory(w, p.id).reserved)
        assert.equal(404, get(id).status)
        assert_books()
      end

      -- the buyer retries with the same key (its lock passed): the same order, or a fresh one
      -- when the first was undone; the cart is still there when it was not checked out
      if step ~= "payment_pending" then
        assert.equal(1, #O.req(w.order, "GET", "/cart", nil, buyer.token).json.items)
      end
      os.execute("sleep 1.1")
      res = checkout(key)
      assert.equal(201, res.status, res.body)
      local o = cjson.decode(res.body)
      if step == "payment_pending" then assert.equal(id, o.id) else assert.not_equal(id, o.id) end
      assert.matches("^pi_", o.payment.client_secret)
      assert_books()
      O.pay(w, o)
      assert.truthy(O.eventually(function() return get(o.id).json.status == "paid" end, 15))
      local b = assert_books()
      assert.equal(0, b.reserved)
    end)
  end

  local function consumed()
    local res = O.req(w.order, "GET", "/metrics")
    return tonumber(res.body:match('events_consumed_total{consumer="order%-payments",outcome="processed"} (%d+)') or 0)
  end
  local function publish(etype, data)
    local ev = events.envelope(etype, data)
    assert(queue.publish(etype, cjson.encode(ev), { message_id = ev.id, type = etype, content_type = "application/json" }))
    return ev
  end

  it("changes nothing when payment events come twice or out of order", function()
    local p = new_product(5)
    assert.equal(200, O.req(w.order, "PUT", "/cart/items/" .. p.id, { quantity = 1 }, buyer.token).status)
    local res = checkout("ev-" .. crypto.hex(crypto.random(4)))
    assert.equal(201, res.status)
    local o = cjson.decode(res.body)
    O.pay(w, o)
    assert.truthy(O.eventually(function() return get(o.id).json.status == "paid" end, 15))
    local before = consumed()
    local data = { payment_id = o.payment.id, order_id = o.id, user_id = buyer.sub, email = buyer.email,
      amount_cents = o.total_cents, currency = o.currency, reason = "card_declined" }
    -- a late failure, a second completion (new event ids), and the same completion redelivered
    publish("payment.failed", data)
    local again = publish("payment.completed", data)
    assert(queue.publish("payment.completed", cjson.encode(again), { message_id = again.id, type = "payment.completed" }))
    assert.truthy(O.eventually(function() return consumed() >= before + 2 end, 15))
    local now = get(o.id).json
    assert.equal("paid", now.status)
    local hist = {}
    for i, h in ipairs(now.status_history) do hist[i] = h.status end
    assert.same({ "created", "paid" }, hist)
    assert.same({ 4, 0 }, { O.inventory(w, p.id).stock, O.inventory(w, p.id).reserved })
    -- a failure for an unpaid order cancels it once; a completion after that refunds it
    assert.equal(200, O.req(w.order, "PUT", "/cart/items/" .. p.id, { quantity = 1 }, buyer.token).status)
    local o2 = cjson.decode(checkout("ev2-" .. crypto.hex(crypto.random(4))).body)
    local d2 = { payment_id = o2.payment.id, order_id = o2.id, user_id = buyer.sub, email = buyer.email,
      amount_cents = o2.total_cents, currency = o2.currency, reason = "card_declined" }
    publish("payment.failed", d2)
    publish("payment.failed", d2)
    assert.truthy(O.eventually(function() return get(o2.id).json.status == "cancelled" end, 15))
    assert.same({ 4, 0 }, { O.inventory(w, p.id).stock, O.inventory(w, p.id).reserved })
    assert_books()
  end)
end)
