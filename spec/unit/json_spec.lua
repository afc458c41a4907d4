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

  it("takes only strict UTF-8: no overlong forms, surrogates or code points past U+10FFFF", function()
    for _, bad in ipairs { "\192\175", "\224\128\175", "\237\160\128", "\244\144\128\128", "\226\130", "a\128" } do
      assert.has_error(function() json.encode(bad) end, "json.encode: string is not valid UTF-8")
    end
    assert.equal('"\239\191\189\240\159\152\128\244\143\191\191"', json.encode("\239\191\189\240\159\152\128\244\143\191\191"))
  end)
end)

describe("json.encode of a sparse table's number keys", function()
  it("writes each key as the number it is, however large (KNOWN: 1e300 was cast to an integer first)", function()
    assert.equal('{"3":"a"}', json.encode({ [3] = "a" }))
    assert.equal('{"1.5":true}', json.encode({ [1.5] = true }))
    assert.equal('{"1e+300":1}', json.encode({ [1e300] = 1 }))
    assert.equal('{"-1e+300":1}', json.encode({ [-1e300] = 1 }))
    assert.equal('{"1.152921504606847e+18":1}', json.encode({ [2 ^ 60] = 1 }))
    assert.has_error(function() json.encode({ [math.huge] = 1 }) end, "json.encode: cannot encode NaN or infinity")
  end)
end)

describe("json.to_utf8", function()
  it("leaves UTF-8 as it is and replaces each byte that is not with U+FFFD", function()
    assert.equal("héllo", json.to_utf8("héllo"))
    assert.equal("a\239\191\189b", json.to_utf8("a\255b"))
    assert.equal("\239\191\189\239\191\189/", json.to_utf8("\192\175/"))
    assert.equal("x\239\191\189", json.to_utf8("x\226\130"):sub(1, 4))
    assert.equal('"a\239\191\189"', json.encode(json.to_utf8("a\237")))
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
      ['{"\255":1}'] = "byte 3: string is not valid UTF-8",
      ['["ok","\192\175"]'] = "byte 8: string is not valid UTF-8",
      ['"\237\160\128"'] = "byte 2: string is not valid UTF-8",
      ['"\244\144\128\128"'] = "string is not valid UTF-8",
      ['"\226\130"'] = "string is not valid UTF-8",
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
