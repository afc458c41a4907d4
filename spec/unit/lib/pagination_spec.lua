-- lib.pagination: limits, opaque cursors and the {items, next_cursor} shape of CONTRACT §3.
local json = require "json"
local pagination = require "lib.pagination"

describe("lib.pagination", function()
  it("defaults to 20 and caps at 100", function()
    assert.equal(20, pagination.params({}).limit)
    assert.equal(20, pagination.params({ limit = "" }).limit)
    assert.equal(7, pagination.params({ limit = "7" }).limit)
    assert.equal(100, pagination.params({ limit = "5000" }).limit)
  end)

  it("answers 400 for a limit that is not a positive integer", function()
    for _, l in ipairs({ "0", "-1", "1.5", "ten", "1e3", " 5" }) do
      local page, status, body = pagination.params({ limit = l })
      assert.is_nil(page, l)
      assert.equal(400, status)
      assert.equal("limit", body.errors[1].field)
    end
  end)

  it("round-trips a cursor and refuses forged ones with 400", function()
    local c = pagination.encode({ id = "abc", t = 5 })
    assert.matches("^[%w_-]+$", c)
    assert.same({ id = "abc", t = 5 }, pagination.params({ cursor = c }).after)
    for _, bad in ipairs({ "!!", "e30=", pagination.encode(json.array({ 1 })), "bm90IGpzb24", string.rep("A", 2000) }) do
      local page, status = pagination.params({ cursor = bad })
      assert.is_nil(page, bad)
      assert.equal(400, status)
    end
  end)

  it("builds a page with a cursor when a further row was fetched, and null otherwise", function()
    local rows = { { id = 1 }, { id = 2 }, { id = 3 } }
    local page = pagination.result(rows, 2, function(r) return { id = r.id } end)
    assert.equal(2, #page.items)
    assert.same({ id = 2 }, pagination.decode(page.next_cursor))
    local last = pagination.result({ { id = 3 } }, 2, function(r) return { id = r.id } end)
    assert.equal(json.null, last.next_cursor)
    local empty = json.encode(pagination.result({}, 2, function() end))
    assert.matches('"items":%[%]', empty)   -- an empty page is still a JSON array
    assert.matches('"next_cursor":null', empty)
  end)

  it("shapes items with map", function()
    local page = pagination.result({ { id = 1, secret = "x" } }, 5, nil, function(r) return { id = r.id } end)
    assert.same({ id = 1 }, page.items[1])
  end)
end)
