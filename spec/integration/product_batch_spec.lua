-- GET /products?ids=a,b,c against the real stack: the cart's one-call read of the products it
-- luacheck: max line length 170
-- holds (CONTRACT §6) — the order of the ids given, the public document of GET /products/{id}
-- (stock included), absent ids simply left out, and a problem for bad lists.
--
-- Run: set -a; . <(scripts/dev/stack.sh env); set +a
--      build/mercato lua spec/support/busted.lua -o TAP spec/integration/product_batch_spec.lua
local cjson = require "cjson"
local crypto = require "crypto"
local P = require "support.product_helpers"

describe("GET /products?ids=", function()
  local svc, alice

  setup(function()
    svc = P.start()
    alice = P.party("seller")
  end)
  teardown(function() P.stop(svc) end)

  it("answers the products in the order of the ids given, each as GET /products/{id} shows it", function()
    local a, b, c = P.create(svc, alice, { stock = 3 }), P.create(svc, alice, { stock = 7 }), P.create(svc, alice)
    local res = P.get(svc, ("/products?ids=%s,%s,%s"):format(c.id, a.id, b.id))
    assert.equal(200, res.status, res.body)
    assert.equal(cjson.null, res.json.next_cursor)
    assert.equal(3, #res.json.items)
    assert.same({ c.id, a.id, b.id }, { res.json.items[1].id, res.json.items[2].id, res.json.items[3].id })
    for _, it in ipairs(res.json.items) do
      assert.same(P.get(svc, "/products/" .. it.id).json, it)
    end
    assert.equal(3, res.json.items[2].stock)
    -- cached documents (the GETs above filled the cache) are the same documents
    local again = P.get(svc, ("/products?ids=%s,%s,%s"):format(c.id, a.id, b.id))
    assert.same(res.json, again.json)
  end)

  it("leaves out ids that do not exist or are deleted, and answers each id once", function()
    local a, gone = P.create(svc, alice), P.create(svc, alice)
    assert.equal(204, P.delete(svc, "/products/" .. gone.id, { token = alice.token }).status)
    local unknown = crypto.uuid4()
    local res = P.get(svc, ("/products?ids=%s,%s,%s,%s"):format(unknown, gone.id, a.id:upper(), a.id))
    assert.equal(200, res.status, res.body)
    assert.equal(1, #res.json.items)
    assert.equal(a.id, res.json.items[1].id)
    res = P.get(svc, "/products?ids=" .. unknown)
    assert.equal(200, res.status)
    assert.matches('"items":%[%]', res.body)
  end)

  it("shows the stock after a write (the cached copy is not stale)", function()
    local a, tag = P.create(svc, alice, { stock = 4 })
    P.get(svc, "/products?ids=" .. a.id)
    local put = P.request(svc, "PUT", "/products/" .. a.id .. "/inventory", { json = { stock = 9 }, token = alice.token,
      headers = { ["If-Match"] = '"1"' } })
    assert.equal(200, put.status, put.body)
    assert.equal(9, P.get(svc, "/products?ids=" .. a.id).json.items[1].stock)
    assert.truthy(tag)
  end)

  it("takes up to 100 ids; more, an empty list or a malformed id is a 400 problem, never a 500", function()
    local ids = {}
    for i = 1, 100 do ids[i] = crypto.uuid4() end
    assert.equal(200, P.get(svc, "/products?ids=" .. table.concat(ids, ",")).status)
    ids[101] = crypto.uuid4()
    local res = P.get(svc, "/products?ids=" .. table.concat(ids, ","))
    assert.equal(400, res.status)
    assert.matches("^application/problem%+json", res.headers["content-type"])
    assert.equal("ids", res.json.errors[1].field)
    for _, bad in ipairs({ "", "not-a-uuid", crypto.uuid4() .. ",", crypto.uuid4() .. ",x", "%00", ("x"):rep(5000),
        "0191d2a8-0000-7000-8000-00000000de7g" }) do
      res = P.get(svc, "/products?ids=" .. bad)
      assert.equal(400, res.status, bad)
      assert.equal("ids", res.json.errors[1].field)
    end
  end)

  it("reads a repeated ids parameter as one list (ids=a&ids=b), the 100 bound over all of them", function()
    local a, b = P.create(svc, alice), P.create(svc, alice)
    local res = P.get(svc, ("/products?ids=%s&ids=%s"):format(b.id, a.id))
    assert.equal(200, res.status, res.body)
    assert.same({ b.id, a.id }, { res.json.items[1].id, res.json.items[2].id })
    local ids = {}
    for i = 1, 60 do ids[i] = crypto.uuid4() end
    local half = table.concat(ids, ",")
    assert.equal(400, P.get(svc, "/products?ids=" .. half .. "&ids=" .. half).status)
  end)

  it("refuses ids combined with search, filters or a cursor (400)", function()
    local id = crypto.uuid4()
    for _, extra in ipairs({ "q=lamp", "cursor=abc", "sort=price", "tag=x" }) do
      local res = P.get(svc, "/products?ids=" .. id .. "&" .. extra)
      assert.equal(400, res.status, extra)
    end
  end)
end)
