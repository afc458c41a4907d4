-- The cart (CONTRACT §6): a Redis hash per user with current prices from the product service,
-- quantities 1–100 (0 removes), unknown or deleted products 404 on PUT and flagged unavailable
-- in GET /cart, one currency per cart — against real user, product and order services.
local O = require "support.order_helpers"

describe("order service: the cart", function()
  local w, buyer

  setup(function()
    w = O.start()
    buyer = O.buyer(w)
  end)
  teardown(function() O.stop(w) end)

  local function put(pid, q, who) return O.req(w.order, "PUT", "/cart/items/" .. pid, { quantity = q }, (who or buyer).token) end
  local function cart(who) return O.req(w.order, "GET", "/cart", nil, (who or buyer).token) end

  it("starts empty, adds, changes and removes items with current prices and a total", function()
    local me = O.buyer(w)
    local res = cart(me)
    assert.equal(200, res.status)
    assert.same({}, res.json.items)
    assert.equal(0, res.json.total_cents)

    local a = O.product(w, { price_cents = 1250 })
    local b = O.product(w, { price_cents = 399 })
    assert.equal(200, put(a.id, 2, me).status)
    res = put(b.id, 3, me)
    assert.equal(200, res.status)
    assert.equal(2 * 1250 + 3 * 399, res.json.total_cents)
    assert.equal("eur", res.json.currency)
    assert.equal(5, res.json.item_count)

    res = put(a.id, 1, me)
    assert.equal(1250 + 3 * 399, res.json.total_cents)
    res = put(b.id, 0, me)   -- 0 removes
    assert.equal(1, #res.json.items)
    assert.equal(a.id, res.json.items[1].product_id)
    assert.equal(1250, res.json.items[1].unit_price_cents)

    assert.equal(204, O.req(w.order, "DELETE", "/cart/items/" .. a.id, nil, me.token).status)
    assert.same({}, cart(me).json.items)
  end)

  it("refuses quantities outside 0–100 and bodies that are not {quantity}", function()
    local p = O.product(w)
    for _, q in ipairs { -1, 101, 1.5, "2" } do
      local res = put(p.id, q)
      assert.equal(422, res.status, tostring(q))
      assert.equal("application/problem+json", res.headers["content-type"])
    end
    local res = O.req(w.order, "PUT", "/cart/items/" .. p.id, { quantity = 1, price_cents = 1 }, buyer.token)
    assert.equal(400, res.status)
    res = O.req(w.order, "PUT", "/cart/items/" .. p.id, "{not json", buyer.token)
    assert.equal(400, res.status)
  end)

  it("answers 404 for an unknown or deleted product, and flags one deleted after it was added", function()
    local me = O.buyer(w)
    assert.equal(404, put("0190a0a0-0000-7000-8000-000000000000", 1, me).status)
    assert.equal(404, put("not-a-uuid", 1, me).status)
    local p = O.product(w, { price_cents = 700 })
    local keep = O.product(w, { price_cents = 100 })
    assert.equal(200, put(p.id, 1, me).status)
    assert.equal(200, put(keep.id, 2, me).status)
    assert.equal(204, O.req(w.product, "DELETE", "/products/" .. p.id, nil, p.seller.token).status)
    assert.equal(404, put(p.id, 2, me).status)
    os.execute("sleep 2.1")   -- the cart's price cache (CART_PRICE_CACHE_S = 2)
    local res = cart(me)
    assert.equal(200, res.status)
    local flagged
    for _, it in ipairs(res.json.items) do if it.product_id == p.id then flagged = it end end
    assert.is_true(flagged.unavailable)
    assert.is_false(flagged.available)
    assert.equal(200, res.json.total_cents)   -- the deleted one is not counted
  end)

  it("keeps one currency per cart (409 for another)", function()
    local me = O.buyer(w)
    local eur = O.product(w, { currency = "eur" })
    local usd = O.product(w, { currency = "usd" })
    assert.equal(200, put(eur.id, 1, me).status)
    local res = put(usd.id, 1, me)
    assert.equal(409, res.status)
    assert.matches("eur", res.json.detail)
    assert.equal(204, O.req(w.order, "DELETE", "/cart", nil, me.token).status)
    assert.equal(200, put(usd.id, 1, me).status)
  end)

  it("is per user, needs a token, and stores the cart in Redis with a 30-day TTL", function()
    local other = O.buyer(w)
    local p = O.product(w)
    assert.equal(200, put(p.id, 4, buyer).status)
    assert.same({}, cart(other).json.items)
    assert.equal(401, O.req(w.order, "GET", "/cart").status)
    local out = io.popen("redis-cli -u " .. os.getenv("REDIS_URL") .. " TTL cart:v1:" .. buyer.sub):read("*a")
    local ttl = tonumber(out:match("%-?%d+"))
    assert.is_true(ttl > 29 * 24 * 3600 and ttl <= 30 * 24 * 3600, tostring(out))
  end)
end)
