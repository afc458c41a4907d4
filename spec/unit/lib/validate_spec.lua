-- lib.validate: schemas for request bodies (CONTRACT §3 status choices), UTF-8, emails, forms.
local json = require "json"
local validate = require "lib.validate"

local function req(body, ctype)
  return {
    body = body,
    header = function(_, name) if name:lower() == "content-type" then return ctype end end,
    json = function(self)
      if self.body == "" then return nil, "request body is empty" end
      local v, err = json.decode(self.body)
      if err then return nil, "request body is not valid JSON" end
      return v
    end,
  }
end

local S = {
  email = { type = "string", required = true, format = "email" },
  name = { type = "string", min_len = 1, max_len = 5, trim = true },
  role = { type = "string", enum = { "buyer", "seller" }, refuse_status = 400 },
  age = { type = "integer", min = 0, max = 150 },
  on = { type = "boolean" },
  phone = { type = "string", nullable = true },
  addr = { type = "object", nullable = true, fields = { city = { type = "string", required = true } } },
}

describe("lib.validate", function()
  describe("utf8_len", function()
    it("counts code points of valid UTF-8", function()
      assert.equal(0, validate.utf8_len(""))
      assert.equal(5, validate.utf8_len("héllo"))
      assert.equal(1, validate.utf8_len("\240\159\152\128"))   -- U+1F600
    end)

    it("refuses invalid UTF-8: stray bytes, overlongs, surrogates, truncation, past U+10FFFF", function()
      for _, s in ipairs({ "\255", "a\128", "\192\175", "\224\128\175", "\237\160\128", "\226\130", "\244\144\128\128" }) do
        assert.is_nil(validate.utf8_len(s), ("%q"):format(s))
      end
    end)
  end)

  describe("is_email", function()
    it("accepts ordinary addresses", function()
      for _, e in ipairs({ "a@b.co", "first.last+tag@sub.example.com", "x_y-z@ex-ample.org" }) do
        assert.is_true(validate.is_email(e), e)
      end
    end)

    it("refuses what is not an address", function()
      for _, e in ipairs({ "", "a", "a@b", "@b.co", "a@", "a b@c.co", "a@b..co", ".a@b.co", "a.@b.co", "a@-b.co",
                           "a@b.c", "a\0@b.co", '"a"@b.co', "a@b.co\n" }) do
        assert.is_false(validate.is_email(e), ("%q"):format(e))
      end
    end)
  end)

  describe("object", function()
    it("returns only the schema's fields, trimmed, with nulls where allowed", function()
      local out = validate.object({ email = "a@b.co", name = "  Ann ", phone = json.null }, S)
      assert.same({ email = "a@b.co", name = "Ann", phone = json.null }, out)
    end)

    it("answers 400 for a non-object and for unknown fields", function()
      for _, doc in ipairs({ json.array({}), json.array({ 1 }), "s", 5, true }) do
        local out, status = validate.object(doc, S)
        assert.is_nil(out)
        assert.equal(400, status)
      end
      local _, status, errors = validate.object({ email = "a@b.co", is_admin = true }, S)
      assert.equal(400, status)
      assert.same({ { field = "is_admin", message = "is not an allowed field" } }, errors)
    end)

    it("answers 400 for a value refused on purpose (a role a client may not take)", function()
      local _, status, errors = validate.object({ email = "a@b.co", role = "admin" }, S)
      assert.equal(400, status)
      assert.equal("role", errors[1].field)
    end)

    it("answers 422 naming every invalid field", function()
      local _, status, errors = validate.object({ name = "toolong", age = 1.5, on = "yes", addr = {} }, S)
      assert.equal(422, status)
      local fields = {}
      for _, e in ipairs(errors) do fields[e.field] = e.message end
      assert.equal("is required", fields.email)
      assert.is_string(fields.name)
      assert.is_string(fields.age)
      assert.is_string(fields.on)
      assert.equal("is required", fields["addr.city"])
    end)

    it("checks arrays and each of their items, naming the item that fails", function()
      local A = { tags = { type = "array", max_items = 3, items = { type = "string", min_len = 1, trim = true } } }
      assert.same({ tags = { "a", "b" } }, validate.object({ tags = json.decode('[" a ", "b"]') }, A))
      assert.equal("[]", json.encode(validate.object({ tags = json.decode("[]") }, A).tags))
      local _, status, errors = validate.object({ tags = json.decode('["ok", 5, ""]') }, A)
      assert.equal(422, status)
      assert.same({
        { field = "tags[1]", message = "must be a string" },
        { field = "tags[2]", message = "must not be empty" },
      }, errors)
      for _, bad in ipairs({ '{"tags": {}}', '{"tags": "a"}', '{"tags": ["a","b","c","d"]}' }) do
        assert.equal(422, select(2, validate.object(json.decode(bad), A)), bad)
      end
    end)

    it("refuses null where it is not allowed, NUL characters and invalid UTF-8", function()
      local _, status, errors = validate.object({ email = json.null }, S)
      assert.equal(422, status)
      assert.equal("must not be null", errors[1].message)
      assert.equal(422, select(2, validate.object({ email = "a\0@b.co" }, S)))
      assert.equal(422, select(2, validate.object({ email = "a\255@b.co" }, S)))
    end)
  end)

  describe("body", function()
    it("answers 415 when the body is not declared JSON", function()
      local out, status = validate.body(req('{"email":"a@b.co"}', "text/plain"), S)
      assert.is_nil(out)
      assert.equal(415, status)
      assert.equal(415, select(2, validate.body(req('{"email":"a@b.co"}', nil), S)))
    end)

    it("accepts application/json with parameters and +json types", function()
      assert.is_table(validate.body(req('{"email":"a@b.co"}', "application/json; charset=utf-8"), S))
      assert.is_table(validate.body(req('{"email":"a@b.co"}', "application/merge-patch+json"), S))
    end)

    it("answers 400 problem+json for malformed JSON", function()
      local out, status, body, headers = validate.body(req("{", "application/json"), S)
      assert.is_nil(out)
      assert.equal(400, status)
      assert.equal(400, body.status)
      assert.equal("application/problem+json", headers["Content-Type"])
    end)

    it("treats an empty body as {} when the body is optional", function()
      assert.same({}, validate.body(req("", nil), S, { optional = true }))
    end)
  end)

  describe("form", function()
    it("decodes application/x-www-form-urlencoded", function()
      assert.same({ a = "1 2", b = "x&y", c = "" }, validate.form("a=1+2&b=x%26y&c="))
    end)

    it("reports a repeated parameter", function()
      local out, why, kind = validate.form("a=1&a=2")
      assert.is_nil(out)
      assert.equal("parameter a is repeated", why)
      assert.equal("repeated", kind)
    end)

    it("refuses names and values that are not UTF-8 once decoded, without quoting them", function()
      for _, body in ipairs { "%FF=1", "a=%C0%AF", "%ED%A0%80=1&%ED%A0%80=2", "a=1&b=%E2%82" } do
        local out, why, kind = validate.form(body)
        assert.is_nil(out, body)
        assert.equal("the form is not valid UTF-8", why)
        assert.equal("encoding", kind)
      end
      assert.same({ ["é"] = "ü" }, validate.form("%C3%A9=%C3%BC"))
    end)
  end)
end)
