-- spec/integration/payment_openapi_spec.lua: the payment service's OpenAPI 3.1 document, served
-- at /openapi.json, describes every route routes.lua declares, with its security and problems.
local cjson = require "cjson.safe"
local PAY = require "support.payment_helpers"

describe("payment service /openapi.json", function()
  local env, doc

  setup(function()
    env = PAY.start()
    local res = PAY.get(env.svc, "/openapi.json")
    assert.equal(200, res.status)
    doc = assert(cjson.decode(res.body))
  end)
  teardown(function() PAY.stop(env) end)

  it("describes every route of routes.lua with its method, bearer security and 401", function()
    local f = assert(io.open("scripts/services/payment/routes.lua"))
    local src = f:read("*a")
    f:close()
    local n = 0
    for method, path in src:gmatch('{%s*"(%u+)",%s*"([^"]+)"') do
      n = n + 1
      local op = doc.paths[path] and doc.paths[path][method:lower()]
      assert.is_table(op, method .. " " .. path)
      assert.is_table(op.responses, method .. " " .. path)
      if path ~= "/webhooks/stripe" then
        assert.same({ { bearer = {} } }, op.security)
        assert.is_table(op.responses["401"], path)
      else
        assert.is_table(op.responses["400"])
      end
    end
    assert.equal(8, n)
  end)

  it("resolves every $ref inside the document", function()
    local function walk(v)
      if type(v) ~= "table" then return end
      for k, x in pairs(v) do
        if k == "$ref" then
          local node = doc
          for part in x:gsub("^#/", ""):gmatch("[^/]+") do node = node and node[part] end
          assert.is_table(node, x)
        else
          walk(x)
        end
      end
    end
    walk(doc)
  end)
end)
