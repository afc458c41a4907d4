-- HTTP semantics of the product service against the real stack (the product area's known
-- luacheck: max line length 170
-- defects): If-Match compared strongly and as a list (RFC 9110 §13.1.1), image upload checking
-- the product and its owner before the content type, bad cursors as 400, and one stock bound
-- for create and inventory PUT.
--
-- Run: set -a; . <(scripts/dev/stack.sh env); set +a
--      build/mercato lua spec/support/busted.lua -o TAP spec/integration/product_http_spec.lua
local crypto = require "crypto"
local P = require "support.product_helpers"

describe("product HTTP semantics", function()
  local svc, alice, bob

  setup(function()
    svc = P.start()
    alice, bob = P.party("seller"), P.party("seller")
  end)
  teardown(function() P.stop(svc) end)

  local function put_stock(id, stock, if_match, party)
    return P.request(svc, "PUT", "/products/" .. id .. "/inventory", { json = { stock = stock }, token = (party or alice).token,
      headers = { ["If-Match"] = if_match } })
  end

  describe("If-Match", function()
    it("refuses a weak or a bare version on PUT …/inventory with 412 and the current ETag", function()
      local p = P.create(svc, alice)
      for _, v in ipairs({ 'W/"1"', "1", "W/1", '"1', "" }) do
        local res = put_stock(p.id, 3, v)
        if v == "" then assert.equal(428, res.status) else
          assert.equal(412, res.status, v)
          assert.equal('"1"', res.headers.etag)
          assert.matches("^application/problem%+json", res.headers["content-type"])
        end
      end
      assert.equal(5, P.get(svc, "/products/" .. p.id .. "/inventory").json.stock)
      local res = put_stock(p.id, 3, '"1"')
      assert.equal(200, res.status, res.body)
      assert.equal('"2"', res.headers.etag)
    end)

    it("accepts a list naming the current version on PUT …/inventory and on PATCH /products/{id}", function()
      local p = P.create(svc, alice)
      local res = put_stock(p.id, 4, '"7", "1"')
      assert.equal(200, res.status, res.body)
      assert.equal(412, put_stock(p.id, 4, '"7", "8"').status)
      assert.equal(200, put_stock(p.id, 6, "*").status)
      res = P.patch(svc, "/products/" .. p.id, { name = "Listed" }, { token = alice.token, headers = { ["If-Match"] = '"5", "1"' } })
      assert.equal(200, res.status, res.body)
      assert.equal('"2"', res.headers.etag)
      res = P.patch(svc, "/products/" .. p.id, { name = "Stale" }, { token = alice.token, headers = { ["If-Match"] = '"1", "3"' } })
      assert.equal(412, res.status)
      assert.equal('"2"', res.headers.etag)
      res = P.patch(svc, "/products/" .. p.id, { name = "Weak" }, { token = alice.token, headers = { ["If-Match"] = 'W/"2"' } })
      assert.equal(412, res.status)
    end)
  end)

  describe("image upload", function()
    it("answers 404 for an unknown product and 403 for another seller's before looking at the content type", function()
      local p = P.create(svc, alice)
      local opts = function(party) return { token = party.token, body = "not an image", headers = { ["Content-Type"] = "text/plain" } } end
      assert.equal(404, P.request(svc, "POST", "/products/" .. crypto.uuid4() .. "/images", opts(alice)).status)
      assert.equal(403, P.request(svc, "POST", "/products/" .. p.id .. "/images", opts(bob)).status)
      assert.equal(415, P.request(svc, "POST", "/products/" .. p.id .. "/images", opts(alice)).status)
    end)
  end)

  describe("cursors", function()
    local function cursor(t) return crypto.base64url_encode(require("cjson").encode(t)) end

    it("answers 400, not 422, to a PostgreSQL cursor with huge numbers", function()
      local id = crypto.uuid4()
      for _, c in ipairs({ { o = "pg:price", p = 1e300, id = id }, { o = "pg:newest", t = 1e300, id = id },
          { o = "pg:newest", t = -1e19, id = id }, { o = "pg:relevance", s = 1e30, id = id }, { o = "pg:-price", p = 2 ^ 63, id = id } }) do
        local sort = c.o:sub(4)
        local q = sort == "relevance" and "&q=lamp" or ""
        local res = P.get(svc, "/products?sort=" .. sort .. q .. "&cursor=" .. cursor(c))
        assert.equal(400, res.status, c.o .. " " .. res.body)
        assert.equal("cursor", res.json.errors[1].field)
      end
      local res = P.get(svc, "/tags?cursor=" .. cursor({ c = 1e300, t = "x" }))
      assert.equal(400, res.status, res.body)
    end)
  end)

  describe("a deleted product", function()
    it("is 404 to everyone but its owner and admins, who see it with status deleted (CONTRACT §6)", function()
      local p = P.create(svc, alice)
      assert.equal(200, P.get(svc, "/products/" .. p.id).status)   -- cached now
      assert.equal(204, P.delete(svc, "/products/" .. p.id, { token = alice.token }).status)
      assert.equal(404, P.get(svc, "/products/" .. p.id).status)
      assert.equal(404, P.get(svc, "/products/" .. p.id, { token = bob.token }).status)
      assert.equal(404, P.get(svc, "/products/" .. p.id, { token = P.party("buyer").token }).status)
      for _, party in ipairs({ alice, P.party("admin") }) do
        local res = P.get(svc, "/products/" .. p.id, { token = party.token })
        assert.equal(200, res.status, res.body)
        assert.equal("deleted", res.json.status)
        assert.equal(p.id, res.json.id)
        assert.equal("private, no-store", res.headers["cache-control"])
      end
      -- an active product reads the same with or without a token
      local live = P.create(svc, alice)
      assert.same(P.get(svc, "/products/" .. live.id).json, P.get(svc, "/products/" .. live.id, { token = bob.token }).json)
    end)
  end)

  describe("stock bounds", function()
    it("lets create and inventory PUT agree: 0 allowed at create, the same upper bound for both", function()
      local res = P.post(svc, "/products", P.product_doc({ stock = 0 }), { token = alice.token })
      assert.equal(201, res.status, res.body)
      assert.equal(0, res.json.stock)
      local p = res.json
      assert.equal(201, P.post(svc, "/products", P.product_doc({ stock = 1000000 }), { token = alice.token }).status)
      assert.equal(422, P.post(svc, "/products", P.product_doc({ stock = 1000001 }), { token = alice.token }).status)
      assert.equal(200, put_stock(p.id, 1000000, '"1"').status)
      res = put_stock(p.id, 1000001, '"2"')
      assert.equal(422, res.status, res.body)
      assert.equal("stock", res.json.errors[1].field)
      assert.equal(422, put_stock(p.id, -1, '"2"').status)
    end)
  end)
end)
