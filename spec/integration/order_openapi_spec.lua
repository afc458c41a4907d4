-- The order service's OpenAPI 3.1 document, served at /openapi.json, describes every route
-- routes.lua declares (the same set of method + path), and every $ref resolves.
local cjson = require "cjson.safe"
local O = require "support.order_helpers"
local U = require "support.user_helpers"

describe("order service /openapi.json", function()
  local w, doc

  setup(function()
    w = O.start()
    local res = O.req(w.order, "GET", "/openapi.json")
    assert.equal(200, res.status)
    doc = assert(cjson.decode(res.body))
  end)
  teardown(function() O.stop(w) end)

  it("is an OpenAPI 3.1 document with every route and nothing else", function()
    assert.matches("^3%.1%.", doc.openapi)
    local routes, documented = {}, {}
    for method, path in U.read("scripts/services/order/routes.lua"):gmatch('{%s*"(%u+)",%s*"([^"]+)"') do
      routes[method:lower() .. " " .. path] = true
    end
    for path, item in pairs(doc.paths) do
      for m, o in pairs(item) do
        if m ~= "parameters" then
          documented[m .. " " .. path] = true
          assert.is_table(o.responses, m .. " " .. path)
        end
      end
    end
    assert.same(routes, documented)
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
