-- The user service's OpenAPI 3.1 document, served at /openapi.json, describes every route
-- routes.lua declares, with the responses the contract requires.
local cjson = require "cjson.safe"
local U = require "support.user_helpers"

describe("user service /openapi.json", function()
  local svc, doc

  setup(function()
    svc = U.start()
    local res = U.request(svc, "GET", "/openapi.json")
    assert.equal(200, res.status)
    doc = assert(cjson.decode(res.body))
  end)
  teardown(function() assert.equal(0, U.stop(svc)) end)

  it("is an OpenAPI 3.1 document", function()
    assert.matches("^3%.1%.", doc.openapi)
    assert.is_string(doc.info.title)
    assert.is_table(doc.components.securitySchemes.bearer)
  end)

  it("describes every route of routes.lua with its method", function()
    local n = 0
    for method, path in U.read("scripts/services/user/routes.lua"):gmatch('{%s*"(%u+)",%s*"([^"]+)"') do
      n = n + 1
      local item = doc.paths[path]
      assert.is_table(item, path)
      assert.is_table(item[method:lower()], method .. " " .. path)
      assert.is_table(item[method:lower()].responses, method .. " " .. path)
    end
    assert.equal(13, n)
  end)

  it("marks authenticated operations with the bearer scheme and documents 401", function()
    for _, p in ipairs({ { "/users/me", "get" }, { "/users", "get" }, { "/users/{id}", "patch" }, { "/auth/logout", "post" } }) do
      local op = doc.paths[p[1]][p[2]]
      assert.same({ { bearer = {} } }, op.security)
      assert.is_table(op.responses["401"], p[1])
    end
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
