-- The product service's catalogue writes against the real stack: roles and ownership, bad
-- luacheck: max line length 170
-- input (400/415/422), ETag / If-Match / If-None-Match, soft delete, categories, the read cache.
--
-- Run: set -a; . <(scripts/dev/stack.sh env); set +a
--      build/mercato lua spec/support/busted.lua -o TAP spec/integration/product_catalogue_spec.lua
local cjson = require "cjson"
local P = require "support.product_helpers"

describe("product catalogue", function()
  local svc, alice, bob, buyer, admin

  setup(function()
    svc = P.start()
    alice, bob, buyer, admin = P.party("seller"), P.party("seller"), P.party("buyer"), P.party("admin")
  end)
  teardown(function() P.stop(svc) end)

  describe("roles", function()
    it("lets anyone browse the catalogue without a token", function()
      local p = P.create(svc, alice)
      assert.equal(200, P.get(svc, "/products").status)
      local res = P.get(svc, "/products/" .. p.id)
      assert.equal(200, res.status)
      assert.equal(p.name, res.json.name)
    end)

    it("refuses a product from an anonymous caller with 401 and from a buyer with 403", function()
      local res = P.post(svc, "/products", P.product_doc())
      assert.equal(401, res.status)
      assert.equal("Bearer", res.headers["www-authenticate"])
      res = P.post(svc, "/products", P.product_doc(), { token = buyer.token })
      assert.equal(403, res.status)
      assert.matches("^application/problem%+json", res.headers["content-type"])
    end)

    it("creates a seller's product with 201, a Location, an ETag and the seller from the token", function()
      local res = P.post(svc, "/products", P.product_doc({ tags = { " Desk ", "desk", "LAMP" } }), { token = alice.token })
      assert.equal(201, res.status)
      assert.equal("/products/" .. res.json.id, res.headers.location)
      assert.equal('"1"', res.headers.etag)
      assert.equal(alice.sub, res.json.seller_id)
      assert.equal(5, res.json.stock)
      assert.equal(1, res.json.version)
      assert.same({ "desk", "lamp" }, res.json.tags)
    end)

    it("lets an admin create products too", function()
      local res = P.post(svc, "/products", P.product_doc(), { token = admin.token })
      assert.equal(201, res.status)
      assert.equal(admin.sub, res.json.seller_id)
    end)

    it("refuses seller B's edit or delete of seller A's product with 403", function()
      local p, tag = P.create(svc, alice)
      local res = P.patch(svc, "/products/" .. p.id, { price_cents = 1 }, { token = bob.token, headers = { ["If-Match"] = tag } })
      assert.equal(403, res.status)
      res = P.delete(svc, "/products/" .. p.id, { token = bob.token })
      assert.equal(403, res.status)
      assert.equal(1999, P.get(svc, "/products/" .. p.id).json.price_cents)
    end)

    it("lets an admin edit and delete anyone's product", function()
      local p, tag = P.create(svc, alice)
      local res = P.patch(svc, "/products/" .. p.id, { price_cents = 2500 }, { token = admin.token, headers = { ["If-Match"] = tag } })
      assert.equal(200, res.status)
      assert.equal(2500, res.json.price_cents)
      assert.equal(alice.sub, res.json.seller_id)
      assert.equal(204, P.delete(svc, "/products/" .. p.id, { token = admin.token }).status)
      assert.equal(404, P.get(svc, "/products/" .. p.id).status)
    end)

    it("refuses a buyer's PATCH with 403 before looking at the product", function()
      local p, tag = P.create(svc, alice)
      local res = P.patch(svc, "/products/" .. p.id, { name = "x" }, { token = buyer.token, headers = { ["If-Match"] = tag } })
      assert.equal(403, res.status)
    end)
  end)

  describe("bad input", function()
    local function create(doc, headers)
      return P.request(svc, "POST", "/products", { token = alice.token, body = type(doc) == "string" and doc or cjson.encode(doc),
        headers = headers or { ["Content-Type"] = "application/json" } })
    end

    it("answers 400 for malformed JSON and for a body that is not an object", function()
      for _, raw in ipairs({ "{", '{"name": }', "[1,2]", '"x"', "" }) do
        local res = create(raw)
        assert.equal(400, res.status, raw)
        assert.matches("^application/problem%+json", res.headers["content-type"])
      end
    end)

    it("answers 415 for a body that is not JSON", function()
      assert.equal(415, create(P.product_doc(), { ["Content-Type"] = "text/plain" }).status)
    end)

    it("answers 400 for unknown fields and for the fields a client may never set", function()
      for _, f in ipairs({ "seller_id", "id", "version", "status", "colour" }) do
        local res = create(P.product_doc({ [f] = f == "version" and 7 or "0191d2a8-0000-7000-8000-000000000001" }))
        assert.equal(400, res.status, f)
        assert.equal(f, res.json.errors[1].field)
      end
    end)

    it("answers 422 for negative, fractional, absurd or non-numeric prices", function()
      for _, price in ipairs({ -1, 10.5, 100000001, 1e20, "12" }) do
        local res = create(P.product_doc({ price_cents = price }))
        assert.equal(422, res.status, tostring(price))
        assert.equal("price_cents", res.json.errors[1].field)
      end
      assert.equal(201, create(P.product_doc({ price_cents = 0 })).status)
      assert.equal(201, create(P.product_doc({ price_cents = 100000000 })).status)
    end)

    it("answers 422 for negative, fractional or huge stock (0 is an out-of-stock listing)", function()
      for _, stock in ipairs({ -3, 1.5, 1000001, "5" }) do
        local res = create(P.product_doc({ stock = stock }))
        assert.equal(422, res.status, tostring(stock))
        assert.equal("stock", res.json.errors[1].field)
      end
    end)

    it("answers 422 for a currency that is not a lower-case ISO 4217 code", function()
      for _, c in ipairs({ "EUR", "euro", "eu", "xyz", "", 978 }) do
        local res = create(P.product_doc({ currency = c }))
        assert.equal(422, res.status, tostring(c))
        assert.equal("currency", res.json.errors[1].field)
      end
    end)

    it("answers 422 for an empty or overlong name and for missing required fields", function()
      assert.equal("name", create(P.product_doc({ name = "   " })).json.errors[1].field)
      assert.equal(422, create(P.product_doc({ name = string.rep("n", 201) })).status)
      local res = create({ name = "Only a name" })
      assert.equal(422, res.status)
      local fields = {}
      for _, e in ipairs(res.json.errors) do fields[e.field] = e.message end
      assert.is_string(fields.price_cents)
      assert.is_string(fields.currency)
      assert.is_string(fields.stock)
    end)

    it("normalises tags and answers 422 for bad ones", function()
      local res = create(P.product_doc({ tags = { "  Outdoor  Gear ", "outdoor gear", "RED" } }))
      assert.equal(201, res.status)
      assert.same({ "outdoor gear", "red" }, res.json.tags)
      local many = {}
      for i = 1, 21 do many[i] = "t" .. i end
      for _, tags in ipairs({ "red", { 1 }, { "" }, { string.rep("x", 41) }, many, { "a,b" } }) do
        assert.equal(422, create(P.product_doc({ tags = tags })).status)
      end
    end)

    it("answers 422 for a category that does not exist", function()
      local res = create(P.product_doc({ category_id = "0191d2a8-0000-7000-8000-000000000099" }))
      assert.equal(422, res.status)
      assert.equal("category_id", res.json.errors[1].field)
    end)

    it("answers 404 for ids that are not products and 400 for bad list parameters", function()
      assert.equal(404, P.get(svc, "/products/not-a-uuid").status)
      assert.equal(404, P.get(svc, "/products/0191d2a8-0000-7000-8000-000000000099").status)
      for _, qs in ipairs({ "limit=0", "limit=x", "cursor=%21%21", "sort=cheapest", "min_price=-1", "max_price=1.5", "seller=bob" }) do
        assert.equal(400, P.get(svc, "/products?" .. qs).status, qs)
      end
    end)
  end)

  describe("preconditions", function()
    it("answers 428 to a PATCH without If-Match", function()
      local p = P.create(svc, alice)
      local res = P.patch(svc, "/products/" .. p.id, { name = "New" }, { token = alice.token })
      assert.equal(428, res.status)
      assert.matches("^application/problem%+json", res.headers["content-type"])
    end)

    it("answers 412 to a stale If-Match and 200 with the next ETag to the current one", function()
      local p, tag = P.create(svc, alice)
      assert.equal('"1"', tag)
      local res = P.patch(svc, "/products/" .. p.id, { name = "Renamed", tags = { "b", "a" } }, { token = alice.token, headers = { ["If-Match"] = tag } })
      assert.equal(200, res.status)
      assert.equal('"2"', res.headers.etag)
      assert.equal("Renamed", res.json.name)
      assert.same({ "b", "a" }, res.json.tags)
      res = P.patch(svc, "/products/" .. p.id, { name = "Lost update" }, { token = alice.token, headers = { ["If-Match"] = tag } })
      assert.equal(412, res.status)
      assert.equal("Renamed", P.get(svc, "/products/" .. p.id).json.name)
    end)

    it("answers 400 to mass assignment in a PATCH, even with a good If-Match", function()
      local p, tag = P.create(svc, alice)
      for _, f in ipairs({ "seller_id", "version", "status", "id", "stock" }) do
        local res = P.patch(svc, "/products/" .. p.id, { [f] = f == "version" and 9 or "x" }, { token = alice.token, headers = { ["If-Match"] = tag } })
        assert.equal(400, res.status, f)
      end
    end)

    it("answers 304 to If-None-Match with the current version, from the cache or not", function()
      local p, tag = P.create(svc, alice)
      local first = P.get(svc, "/products/" .. p.id)
      assert.equal(tag, first.headers.etag)
      local res = P.get(svc, "/products/" .. p.id, { headers = { ["If-None-Match"] = tag } })
      assert.equal(304, res.status)
      assert.equal(tag, res.headers.etag)
      assert.equal(200, P.get(svc, "/products/" .. p.id, { headers = { ["If-None-Match"] = '"999"' } }).status)
    end)

    it("honours If-Match on DELETE when it is sent", function()
      local p = P.create(svc, alice)
      assert.equal(412, P.delete(svc, "/products/" .. p.id, { token = alice.token, headers = { ["If-Match"] = '"7"' } }).status)
      assert.equal(204, P.delete(svc, "/products/" .. p.id, { token = alice.token, headers = { ["If-Match"] = '"1"' } }).status)
      assert.equal(404, P.delete(svc, "/products/" .. p.id, { token = alice.token }).status)
    end)
  end)

  describe("the read cache", function()
    it("serves a repeated GET from Redis and never serves a product's old version after a write", function()
      local p, tag = P.create(svc, alice)
      assert.equal("miss", P.get(svc, "/products/" .. p.id).headers["x-cache"])
      assert.equal("hit", P.get(svc, "/products/" .. p.id).headers["x-cache"])
      local res = P.patch(svc, "/products/" .. p.id, { price_cents = 4242 }, { token = alice.token, headers = { ["If-Match"] = tag } })
      assert.equal(200, res.status)
      local after = P.get(svc, "/products/" .. p.id)
      assert.equal(4242, after.json.price_cents)
      assert.equal('"2"', after.headers.etag)
      assert.equal(204, P.delete(svc, "/products/" .. p.id, { token = alice.token }).status)
      assert.equal(404, P.get(svc, "/products/" .. p.id).status)
    end)
  end)

  describe("events", function()
    it("writes product.created, product.updated and product.deleted to the outbox with each change", function()
      local p, tag = P.create(svc, alice)
      P.patch(svc, "/products/" .. p.id, { name = "Evented" }, { token = alice.token, headers = { ["If-Match"] = tag } })
      P.delete(svc, "/products/" .. p.id, { token = alice.token })
      local types = P.psql(svc.db_url, ("SELECT string_agg(type, ',' ORDER BY created_at) FROM outbox WHERE payload->'data'->>'product_id' = '%s'"):format(p.id))
      assert.equal("product.created,product.updated,product.deleted", types)
    end)
  end)

  describe("categories", function()
    it("lets only admins write categories, with unique slugs and a tree", function()
      local doc = { slug = "garden-" .. os.time(), name = "Garden" }
      assert.equal(401, P.post(svc, "/categories", doc).status)
      assert.equal(403, P.post(svc, "/categories", doc, { token = alice.token }).status)
      local res = P.post(svc, "/categories", doc, { token = admin.token })
      assert.equal(201, res.status)
      local parent = res.json
      assert.equal("/categories/" .. parent.id, res.headers.location)
      assert.equal(409, P.post(svc, "/categories", doc, { token = admin.token }).status)
      res = P.post(svc, "/categories", { slug = doc.slug .. "-tools", name = "Tools", parent_id = parent.id }, { token = admin.token })
      assert.equal(201, res.status)
      local child = res.json
      assert.equal(parent.id, child.parent_id)
      assert.equal(422, P.post(svc, "/categories", { slug = "Bad Slug", name = "x" }, { token = admin.token }).status)
      assert.equal(422, P.post(svc, "/categories", { slug = "orphan", name = "x", parent_id = "0191d2a8-0000-7000-8000-000000000099" }, { token = admin.token }).status)
      -- a move under its own child would make a cycle
      assert.equal(422, P.patch(svc, "/categories/" .. parent.id, { parent_id = child.id }, { token = admin.token }).status)
      res = P.patch(svc, "/categories/" .. child.id, { name = "Garden Tools" }, { token = admin.token })
      assert.equal(200, res.status)
      assert.equal("Garden Tools", res.json.name)
      assert.equal(403, P.patch(svc, "/categories/" .. child.id, { name = "x" }, { token = alice.token }).status)
      -- products filed under the child are found through the parent, and by the category's name
      local p = P.create(svc, alice, { name = "Pruning Shears", category_id = child.id })
      local list = P.get(svc, "/products?category=" .. doc.slug)
      assert.equal(1, #list.json.items)
      assert.equal(p.id, list.json.items[1].id)
      list = P.get(svc, "/products?q=garden+tools")
      assert.equal(p.id, list.json.items[1].id)
      -- a category in use cannot be deleted
      assert.equal(409, P.delete(svc, "/categories/" .. child.id, { token = admin.token }).status)
      assert.equal(409, P.delete(svc, "/categories/" .. parent.id, { token = admin.token }).status)
      P.delete(svc, "/products/" .. p.id, { token = alice.token })
      assert.equal(204, P.delete(svc, "/categories/" .. child.id, { token = admin.token }).status)
      assert.equal(404, P.get(svc, "/categories/" .. child.id).status)
      assert.equal(200, P.get(svc, "/categories/" .. doc.slug).status)
    end)
  end)
end)
