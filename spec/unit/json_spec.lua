-- The json binding: exact numbers, arrays that stay arrays, strict parsing, clear errors.
local json = require "json"

describe("json.encode", function()
  it("keeps empty arrays as [] when marked, and tables as objects otherwise", function()
    assert.equal("[]", json.encode(json.array {}))
    assert.equal("[]", json.encode(json.empty_array))
    assert.equal("{}", json.encode({}))
    assert.equal("[1,2,3]", json.encode({ 1, 2, 3 }))
    assert.equal('{"a":[]}', json.encode({ a = json.array() }))
  end)

  it("writes integers exactly and decimals in their shortest form", function()
    assert.equal("123456789012345", json.encode(123456789012345))
    assert.equal("9007199254740992", json.encode(2 ^ 53))
    assert.equal("0.1", json.encode(0.1))
    assert.equal("-0.5", json.encode(-0.5))
    assert.equal("1e+300", json.encode(1e300))
  end)

  it("escapes strings and encodes null", function()
    assert.equal('"a\\"b\\\\c\\n\\u0000"', json.encode('a"b\\c\n\0'))
    assert.equal('"héllo"', json.encode("héllo"))
    assert.equal('{"x":null}', json.encode({ x = json.null }))
  end)

  it("raises on what JSON cannot represent", function()
    assert.has_error(function() json.encode(0 / 0) end, "json.encode: cannot encode NaN or infinity")
    assert.has_error(function() json.encode("\255") end, "json.encode: string is not valid UTF-8")
    assert.has_error(function() json.encode({ f = print }) end)
    local t = {}
    t.t = t
    assert.has_error(function() json.encode(t) end, "json.encode: nested too deep (or a cycle)")
  end)
end)

describe("json.decode", function()
  it("round-trips arrays, objects, null and unicode escapes", function()
    for _, doc in ipairs { '[]', '{"a":[]}', '[1,2,{"b":null}]', '{"n":-1500}' } do
      assert.equal(doc, json.encode(assert(json.decode(doc))))
    end
    assert.equal("é😀", json.decode('"\\u00e9\\ud83d\\ude00"'))
    assert.equal(json.null, json.decode("null"))
  end)

  it("refuses malformed documents with the byte and the reason", function()
    local cases = {
      ['{"a":1,}'] = "byte 8: expecting a member name",
      ['[1 2]'] = "byte 4: expecting ',' or ']'",
      ['nul'] = "byte 1: unexpected character",
      ['"\\ud800"'] = "lone surrogate",
      ['1 2'] = "trailing characters",
      [''] = "unexpected end of input",
      [string.rep("[", 100) .. string.rep("]", 100)] = "nested too deep",
    }
    for doc, why in pairs(cases) do
      local v, err, code = json.decode(doc)
      assert.is_nil(v)
      assert.equal("invalid", code)
      assert.truthy(err:find(why, 1, true), doc .. " → " .. err)
    end
  end)
end)
