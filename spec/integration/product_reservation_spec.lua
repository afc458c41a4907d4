-- The reservations checkout needs, against the real product service and stack: only active
-- luacheck: max line length 170
-- products can be reserved, the answer snapshots each item's name, price, currency and seller
-- (the replay answers the same snapshot), one currency per reservation, and every stock move
-- (reserve, release, commit, expiry) drops the product's cached read.
--
-- Run: set -a; . <(scripts/dev/stack.sh env); set +a
--      build/mercato lua spec/support/busted.lua -o TAP spec/integration/product_reservation_spec.lua
local crypto = require "crypto"
local socket = require "socket"
local P = require "support.product_helpers"

describe("reservations for checkout", function()
  local svc, alice, order_svc

  setup(function()
    svc = P.start { env = { RESERVATION_EXPIRY_EVERY_S = "1", PRODUCT_CACHE_TTL = "300" } }
    alice = P.party("seller")
    order_svc = P.token("service", "order-service", { scope = "inventory" })
  end)
  teardown(function() P.stop(svc) end)

  local function reserve(items, extra)
    local doc = { reservation_id = crypto.uuid4(), items = items }
    for k, v in pairs(extra or {}) do doc[k] = v end
    return P.post(svc, "/internal/reservations", doc, { token = order_svc }), doc
  end

  local function stock(id) return P.psql(svc.db_url, ("SELECT stock || '/' || reserved FROM inventory WHERE product_id = '%s'"):format(id)) end

  describe("only active products", function()
    it("refuses a deleted product in the 409 insufficient list with available 0, reserving nothing", function()
      local live, gone = P.create(svc, alice, { stock = 5 }), P.create(svc, alice, { stock = 5 })
      assert.equal(204, P.delete(svc, "/products/" .. gone.id, { token = alice.token }).status)
      local res = reserve({ { product_id = live.id, quantity = 1 }, { product_id = gone.id, quantity = 2 } })
      assert.equal(409, res.status, res.body)
      assert.equal(1, #res.json.insufficient)
      assert.same({ product_id = gone.id, requested = 2, available = 0 }, res.json.insufficient[1])
      assert.equal("5/0", stock(live.id))
      assert.equal("5/0", stock(gone.id))
    end)
  end)

  describe("the answer", function()
    it("snapshots name, unit price, currency and seller of each item; a replay answers the same snapshot after a price edit", function()
      local a, tag = P.create(svc, alice, { name = "Snapshot Lamp", price_cents = 1250, stock = 5 })
      local b = P.create(svc, alice, { name = "Snapshot Bulb", price_cents = 300, stock = 9 })
      local res, doc = reserve({ { product_id = a.id, quantity = 2 }, { product_id = b.id, quantity = 3 } })
      assert.equal(201, res.status, res.body)
      assert.equal(doc.reservation_id, res.json.reservation_id)
      assert.equal("reserved", res.json.status)
      local by = {}
      for _, it in ipairs(res.json.items) do by[it.product_id] = it end
      assert.same({ product_id = a.id, quantity = 2, name = "Snapshot Lamp", unit_price_cents = 1250, currency = "eur", seller_id = alice.sub }, by[a.id])
      assert.same({ product_id = b.id, quantity = 3, name = "Snapshot Bulb", unit_price_cents = 300, currency = "eur", seller_id = alice.sub }, by[b.id])
      assert.equal(2, #res.json.items)
      local edit = P.patch(svc, "/products/" .. a.id, { price_cents = 9999, name = "Renamed" }, { token = alice.token, headers = { ["If-Match"] = tag } })
      assert.equal(200, edit.status, edit.body)
      local again = P.post(svc, "/internal/reservations", doc, { token = order_svc })
      assert.equal(200, again.status, again.body)
      assert.same(res.json, again.json)
    end)

    it("refuses items in different currencies with a 422 problem, reserving nothing", function()
      local e, u = P.create(svc, alice, { currency = "eur", stock = 5 }), P.create(svc, alice, { currency = "usd", stock = 5 })
      local res = reserve({ { product_id = e.id, quantity = 1 }, { product_id = u.id, quantity = 1 } })
      assert.equal(422, res.status, res.body)
      assert.matches("^application/problem%+json", res.headers["content-type"])
      assert.equal("5/0", stock(e.id))
      assert.equal("5/0", stock(u.id))
      -- also when one of them is short: the currencies are the first thing wrong
      res = reserve({ { product_id = e.id, quantity = 1 }, { product_id = u.id, quantity = 50 } })
      assert.equal(422, res.status, res.body)
    end)

    it("keeps the 409 shape { insufficient: [{ product_id, requested, available }] }", function()
      local a = P.create(svc, alice, { stock = 2 })
      local res = reserve({ { product_id = a.id, quantity = 3 } })
      assert.equal(409, res.status)
      assert.same({ { product_id = a.id, requested = 3, available = 2 } }, res.json.insufficient)
    end)
  end)

  describe("the cached read", function()
    it("shows the stock back after a reservation expires (not the cached value)", function()
      local a = P.create(svc, alice, { stock = 6 })
      local res = reserve({ { product_id = a.id, quantity = 4 } }, { ttl_seconds = 1 })
      assert.equal(201, res.status, res.body)
      assert.equal(2, P.get(svc, "/products/" .. a.id).json.stock)
      assert.equal("hit", P.get(svc, "/products/" .. a.id).headers["x-cache"])
      local deadline, got = socket.gettime() + 10
      repeat
        socket.sleep(0.25)
        got = stock(a.id)
      until got == "6/0" or socket.gettime() > deadline
      assert.equal("6/0", got)
      local after = P.get(svc, "/products/" .. a.id)
      assert.equal(6, after.json.stock)
    end)

    it("drops the cached read on reserve, release and commit", function()
      local a = P.create(svc, alice, { stock = 6 })
      P.get(svc, "/products/" .. a.id)
      local res, doc = reserve({ { product_id = a.id, quantity = 1 } })
      assert.equal(201, res.status)
      assert.equal("miss", P.get(svc, "/products/" .. a.id).headers["x-cache"])
      local c = P.post(svc, "/internal/reservations/" .. doc.reservation_id .. "/commit", {}, { token = order_svc })
      assert.equal(200, c.status, c.body)
      assert.equal("miss", P.get(svc, "/products/" .. a.id).headers["x-cache"])
      assert.equal(204, P.delete(svc, "/internal/reservations/" .. doc.reservation_id, { token = order_svc }).status)
      local after = P.get(svc, "/products/" .. a.id)
      assert.equal("miss", after.headers["x-cache"])
      assert.equal(6, after.json.stock)
    end)
  end)
end)
