-- Checkout (CONTRACT §6): the saga against real user, product and payment services and the
-- luacheck: max line length 160
-- Stripe stand-in — the happy path to paid, shipped and delivered; insufficient stock, an empty
-- cart and a deleted product refused with nothing reserved and the cart kept; Idempotency-Key
-- replay, another body, 20 concurrent duplicates; cancellation before and after payment (stock
-- released or returned, money refunded); a declined card; every invalid transition 409.
local crypto = require "crypto"
local O = require "support.order_helpers"

describe("order service: checkout", function()
  local w

  setup(function() w = O.start { payment = true, order_env = { ORDER_TIMEOUT_EVERY_S = "1" } } end)
  teardown(function() O.stop(w) end)

  local function put(buyer, p, q)
    local res = O.req(w.order, "PUT", "/cart/items/" .. p.id, { quantity = q }, buyer.token)
    assert.equal(200, res.status, res.body)
  end
  local function checkout(buyer, key, address)
    local h = key and { ["Idempotency-Key"] = key } or nil
    return O.req(w.order, "POST", "/orders", { shipping_address = address or O.ADDRESS }, buyer.token, h)
  end
  local function order(id, token) return O.req(w.order, "GET", "/orders/" .. id, nil, token) end
  local function status_of(id, token)
    return function()
      local r = order(id, token)
      return r.status == 200 and r.json.status
    end
  end
  local function wait_status(id, token, want)
    return O.eventually(function() return status_of(id, token)() == want end, 15)
  end

  it("takes a cart to a paid, shipped and delivered order", function()
    local buyer, seller = O.buyer(w), O.seller(w)
    local a = O.product(w, { price_cents = 1999, stock = 5 }, seller)
    local b = O.product(w, { price_cents = 500, stock = 5 }, seller)
    put(buyer, a, 2)
    put(buyer, b, 1)
    local res = checkout(buyer, "k-" .. crypto.hex(crypto.random(6)))
    assert.equal(201, res.status, res.body)
    local o = res.json
    assert.equal("created", o.status)
    assert.equal(2 * 1999 + 500, o.total_cents)
    assert.equal("eur", o.currency)
    assert.equal(2, #o.items)
    assert.is_string(o.payment.id)
    assert.matches("^pi_.+_secret_", o.payment.client_secret)
    assert.equal("/orders/" .. o.id, res.headers["location"])
    -- the cart is cleared; the stock is held
    assert.same({}, O.req(w.order, "GET", "/cart", nil, buyer.token).json.items)
    assert.same({ 3, 2 }, { O.inventory(w, a.id).stock, O.inventory(w, a.id).reserved })

    assert.equal(200, (O.pay(w, o)))
    assert.truthy(wait_status(o.id, buyer.token, "paid"))
    local inv = O.inventory(w, a.id)
    assert.same({ 3, 0 }, { inv.stock, inv.reserved })   -- committed: sold

    -- ship and deliver: the seller of every item; a buyer cannot
    assert.equal(403, O.req(w.order, "POST", "/orders/" .. o.id .. "/ship", { carrier = "DHL", tracking_number = "1" }, buyer.token).status)
    assert.equal(409, O.req(w.order, "POST", "/orders/" .. o.id .. "/deliver", nil, seller.token).status)
    res = O.req(w.order, "POST", "/orders/" .. o.id .. "/ship", { carrier = "DHL", tracking_number = "JD0001" }, seller.token)
    assert.equal(200, res.status, res.body)
    assert.equal("shipped", res.json.status)
    assert.equal("JD0001", res.json.tracking_number)
    assert.equal(409, O.req(w.order, "POST", "/orders/" .. o.id .. "/cancel", nil, buyer.token).status)
    res = O.req(w.order, "POST", "/orders/" .. o.id .. "/deliver", nil, seller.token)
    assert.equal(200, res.status)
    local hist = {}
    for i, h in ipairs(res.json.status_history) do hist[i] = h.status end
    assert.same({ "created", "paid", "shipped", "delivered" }, hist)
    assert.equal(409, O.req(w.order, "POST", "/orders/" .. o.id .. "/ship", { carrier = "x", tracking_number = "y" }, seller.token).status)

    -- another buyer sees nothing; the admin sees it
    local other = O.buyer(w)
    assert.equal(404, order(o.id, other.token).status)
    assert.equal(0, #O.req(w.order, "GET", "/orders", nil, other.token).json.items)
    assert.equal(1, #O.req(w.order, "GET", "/orders", nil, buyer.token).json.items)
    assert.equal(200, order(o.id, O.admin(w).token).status)
  end)

  it("refuses insufficient stock with 409 and the list, reserving nothing and keeping the cart", function()
    local buyer = O.buyer(w)
    local plenty = O.product(w, { stock = 10 })
    local few = O.product(w, { stock = 1 })
    put(buyer, plenty, 3)
    put(buyer, few, 2)
    local res = checkout(buyer)
    assert.equal(409, res.status, res.body)
    assert.equal(few.id, res.json.insufficient[1].product_id)
    assert.equal(2, res.json.insufficient[1].requested)
    assert.equal(1, res.json.insufficient[1].available)
    assert.same({ 10, 0 }, { O.inventory(w, plenty.id).stock, O.inventory(w, plenty.id).reserved })
    assert.equal(2, #O.req(w.order, "GET", "/cart", nil, buyer.token).json.items)
    assert.equal(0, #O.req(w.order, "GET", "/orders", nil, buyer.token).json.items)
  end)

  it("refuses an empty cart (422) and a product deleted since it was added (409)", function()
    local buyer = O.buyer(w)
    local res = checkout(buyer)
    assert.equal(422, res.status)
    local p = O.product(w)
    put(buyer, p, 1)
    assert.equal(204, O.req(w.product, "DELETE", "/products/" .. p.id, nil, p.seller.token).status)
    res = checkout(buyer)
    assert.equal(409, res.status)
    assert.equal(0, res.json.insufficient[1].available)
    assert.equal(1, #O.req(w.order, "GET", "/cart", nil, buyer.token).json.items)
  end)

  it("validates the shipping address (422 for a bad one, 400 for unknown fields)", function()
    local buyer = O.buyer(w)
    put(buyer, O.product(w), 1)
    local bad = { name = "A", line1 = "B", city = "C", postal_code = "1", country = "Germany" }
    assert.equal(422, checkout(buyer, nil, bad).status)
    local res = O.req(w.order, "POST", "/orders", { shipping_address = O.ADDRESS, status = "paid" }, buyer.token)
    assert.equal(400, res.status)
  end)

  it("replays a checkout with the same Idempotency-Key and refuses it with another body (422)", function()
    local buyer = O.buyer(w)
    local p = O.product(w, { stock = 5 })
    put(buyer, p, 1)
    local key = "k-" .. crypto.hex(crypto.random(6))
    local first = checkout(buyer, key)
    assert.equal(201, first.status, first.body)
    local again = checkout(buyer, key)
    assert.equal(201, again.status)
    assert.equal(first.body, again.body)
    assert.equal("true", again.headers["idempotent-replayed"])
    local other = checkout(buyer, key, { name = "Other", line1 = "2 Side St", city = "Paris", postal_code = "75001", country = "FR" })
    assert.equal(422, other.status)
    assert.equal(1, #O.req(w.order, "GET", "/orders", nil, buyer.token).json.items)
    assert.equal(1, O.inventory(w, p.id).reserved)
  end)

  it("resumes the order a key made once its stored answer is gone (expired): the same order, cart full or empty", function()
    local buyer = O.buyer(w)
    local p = O.product(w, { stock = 5 })
    put(buyer, p, 1)
    local key = "k-" .. crypto.hex(crypto.random(6))
    local first = checkout(buyer, key)
    assert.equal(201, first.status, first.body)
    local function expire()
      O.psql(w.order, "UPDATE idempotency_keys SET expires_at = now() - interval '1 second' WHERE key = '" .. key .. "'")
    end
    -- the cart was checked out: the order is found by its key
    expire()
    local again = checkout(buyer, key)
    assert.equal(201, again.status, again.body)
    assert.is_nil(again.headers["idempotent-replayed"])
    assert.equal(first.json.id, again.json.id)
    -- a full cart again: the order's INSERT meets the key's order (ON CONFLICT) and resumes it
    put(buyer, p, 2)
    expire()
    again = checkout(buyer, key)
    assert.equal(201, again.status, again.body)
    assert.equal(first.json.id, again.json.id)
    assert.equal(first.json.payment.id, again.json.payment.id)
    assert.equal("1", O.psql(w.order, "SELECT count(*) FROM orders WHERE user_id = '" .. buyer.sub .. "'"))
    assert.equal(1, O.inventory(w, p.id).reserved)
    assert.equal("1", O.psql(w.order, "SELECT count(*) FROM outbox WHERE type = 'order.created' AND payload->'data'->>'order_id' = '" ..
      first.json.id .. "'"))
  end)

  it("makes one order of 20 concurrent checkouts with one key (the rest 409 or the replay)", function()
    local buyer = O.buyer(w)
    local p = O.product(w, { stock = 50 })
    put(buyer, p, 2)
    local key = "k-" .. crypto.hex(crypto.random(6))
    local body = '{"shipping_address":{"name":"A","line1":"B","city":"C","postal_code":"1","country":"DE"}}'
    local cmd = ("seq 20 | xargs -P 20 -I{} curl -s -o /dev/null -w '%%{http_code}\\n' -X POST %s/orders " ..
      "-H 'Content-Type: application/json' -H 'Authorization: Bearer %s' -H 'Idempotency-Key: %s' --data '%s'")
      :format(w.order.url, buyer.token, key, body)
    local out = io.popen(cmd):read("*a")
    local n201, n409 = select(2, out:gsub("201", "")), select(2, out:gsub("409", ""))
    assert.equal(20, n201 + n409, out)
    assert.equal(1, #O.req(w.order, "GET", "/orders", nil, buyer.token).json.items)
    assert.equal(2, O.inventory(w, p.id).reserved)
    assert.equal("1", O.psql(w.order, "SELECT count(*) FROM orders WHERE user_id = '" .. buyer.sub .. "' AND step <> 'abandoned'"))
  end)

  it("cancels an unpaid order for its buyer: stock released, the payment cancelled; then 409", function()
    local buyer = O.buyer(w)
    local p = O.product(w, { stock = 4 })
    put(buyer, p, 3)
    local o = checkout(buyer).json
    assert.equal(1, O.inventory(w, p.id).stock)
    assert.equal(404, O.req(w.order, "POST", "/orders/" .. o.id .. "/cancel", nil, O.buyer(w).token).status)
    local res = O.req(w.order, "POST", "/orders/" .. o.id .. "/cancel", nil, buyer.token)
    assert.equal(200, res.status, res.body)
    assert.equal("cancelled", res.json.status)
    assert.equal("cancelled_by_buyer", res.json.cancel_reason)
    assert.same({ 4, 0 }, { O.inventory(w, p.id).stock, O.inventory(w, p.id).reserved })
    assert.equal(409, O.req(w.order, "POST", "/orders/" .. o.id .. "/cancel", nil, buyer.token).status)
    assert.equal(409, O.req(w.order, "POST", "/orders/" .. o.id .. "/ship", { carrier = "a", tracking_number = "b" }, O.admin(w).token).status)
  end)

  it("refunds and returns the stock when a paid order is cancelled", function()
    local buyer = O.buyer(w)
    local p = O.product(w, { stock = 4, price_cents = 2500 })
    put(buyer, p, 2)
    local o = checkout(buyer).json
    O.pay(w, o)
    assert.truthy(wait_status(o.id, buyer.token, "paid"))
    assert.same({ 2, 0 }, { O.inventory(w, p.id).stock, O.inventory(w, p.id).reserved })
    local res = O.req(w.order, "POST", "/orders/" .. o.id .. "/cancel", nil, O.admin(w).token)
    assert.equal(200, res.status, res.body)
    assert.equal("cancelled", res.json.status)
    assert.equal(5000, res.json.refunded_cents)
    assert.same({ 4, 0 }, { O.inventory(w, p.id).stock, O.inventory(w, p.id).reserved })
    -- one refund at the payment service, whoever asked
    assert.equal("1", O.psql(w.payment, "SELECT count(*) FROM refunds r JOIN payments p ON p.id = r.payment_id " ..
      "WHERE p.order_id = '" .. o.id .. "'"))
  end)

  it("cancels the order and releases the stock when the card is declined", function()
    local buyer = O.buyer(w)
    local p = O.product(w, { stock = 3 })
    put(buyer, p, 1)
    local o = checkout(buyer).json
    O.pay(w, o, "pm_card_chargeDeclined")
    assert.truthy(wait_status(o.id, buyer.token, "cancelled"))
    assert.equal("payment_failed", order(o.id, buyer.token).json.cancel_reason)
    assert.same({ 3, 0 }, { O.inventory(w, p.id).stock, O.inventory(w, p.id).reserved })
  end)

  it("cancels orders not paid within ORDER_PAYMENT_TIMEOUT and releases their stock", function()
    local buyer = O.buyer(w)
    local p = O.product(w, { stock = 3 })
    put(buyer, p, 2)
    local o = checkout(buyer).json
    O.psql(w.order, "UPDATE orders SET created_at = now() - interval '31 minutes' WHERE id = '" .. o.id .. "'")
    assert.truthy(wait_status(o.id, buyer.token, "cancelled"))
    assert.equal("payment_timeout", order(o.id, buyer.token).json.cancel_reason)
    assert.same({ 3, 0 }, { O.inventory(w, p.id).stock, O.inventory(w, p.id).reserved })
  end)

  it("answers 503 when Stripe is down and undoes the checkout: stock released, cart kept", function()
    local buyer = O.buyer(w)
    local p = O.product(w, { stock = 3 })
    put(buyer, p, 1)
    local PAY = require "support.payment_helpers"
    PAY.stop_standin(w.pay.standin)
    local res = checkout(buyer, "k-" .. crypto.hex(crypto.random(6)))
    w.pay.standin = PAY.start_standin(w.payment.url .. "/webhooks/stripe", { port = w.pay.standin.port })
    assert.equal(503, res.status, res.body)
    assert.equal("application/problem+json", res.headers["content-type"])
    assert.same({ 3, 0 }, { O.inventory(w, p.id).stock, O.inventory(w, p.id).reserved })
    assert.equal(1, #O.req(w.order, "GET", "/cart", nil, buyer.token).json.items)
    assert.equal(0, #O.req(w.order, "GET", "/orders", nil, buyer.token).json.items)
    -- and a retry works once Stripe is back
    assert.equal(201, checkout(buyer).status)
  end)
end)
