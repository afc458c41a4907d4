-- Product search and browse (PostgreSQL back end) on the seeded demo catalogue (228 products):
-- typos, prefixes, several words, accents, category (with sub-categories) and tag filters,
-- price and seller filters, the sort orders, and cursors that neither repeat nor skip.
--
-- Run: set -a; . <(scripts/dev/stack.sh env); set +a
--      build/mercato lua spec/support/busted.lua -o TAP spec/integration/product_search_spec.lua
local P = require "support.product_helpers"

describe("product search", function()
  local svc

  setup(function() svc = P.start({ seed = true }) end)
  teardown(function() P.stop(svc) end)

  local function names(path)
    local res = P.get(svc, path)
    assert.equal(200, res.status, res.body)
    local out = {}
    for i, it in ipairs(res.json.items) do out[i] = it.name end
    return out, res.json
  end

  it("has seeded at least 200 products, and seeding again adds none", function()
    local items = P.all_pages(svc, "/products", 100)
    assert.is_true(#items >= 200, #items)
    assert.matches("0 new", P.seed(svc))
    assert.equal(#items, #P.all_pages(svc, "/products", 100))
  end)

  it("finds Wireless Headphones despite typos in both words", function()
    assert.equal("Wireless Headphones", names("/products?q=wireles+hedphones")[1])
    assert.equal("Wireless Headphones", names("/products?q=wirelss%20headphnes")[1])
  end)

  it("finds coffee grinders for a misspelt query", function()
    local got = names("/products?q=cofee+grindr&limit=4")
    assert.equal(4, #got)
    for _, n in ipairs(got) do assert.matches("Coffee Grinder$", n) end
  end)

  it("matches a prefix of a word", function()
    local got = names("/products?q=headph&limit=4")
    assert.equal(4, #got)
    for _, n in ipairs(got) do assert.matches("Headphones$", n) end
  end)

  it("requires every word of a multi-word query and ranks name matches first", function()
    local got = names("/products?q=office+chair")
    assert.is_true(#got >= 1)
    for _, n in ipairs(got) do assert.matches("Office Chair$", n) end
    local top = names("/products?q=laptop&limit=8")
    for i = 1, 4 do assert.matches("Laptop$", top[i]) end   -- names before "Laptop Bag" and descriptions
  end)

  it("ignores accents both ways", function()
    assert.matches("Crème Brûlée Torch$", names("/products?q=creme+brulee")[1])
    assert.matches("Crème Brûlée Torch$", names("/products?q=cr%C3%A8me")[1])
  end)

  it("searches tags and category names, not only product names", function()
    local got = names("/products?q=eco-friendly&limit=100")
    assert.is_true(#got >= 20)
    for _, n in ipairs(got) do assert.matches("^Eco ", n) end
    got = names("/products?q=camping+stove")
    assert.matches("Camping Stove$", got[1])
    -- "Cycling" is only a category name
    got = names("/products?q=cycling&limit=100")
    assert.equal(12, #got)
  end)

  it("filters by category, including its sub-categories, by slug or id", function()
    local _, doc = names("/products?category=audio&limit=100")
    assert.equal(24, #doc.items)
    local all = P.all_pages(svc, "/products?category=electronics", 50)
    assert.equal(80, #all)
    local cat = P.get(svc, "/categories/kitchen").json
    assert.equal(28, #P.all_pages(svc, "/products?category=" .. cat.id, 10))
    assert.equal(0, #names("/products?category=no-such-thing"))
  end)

  it("combines a search with category and tag filters", function()
    local got = names("/products?q=wireless&category=audio&limit=100")
    assert.is_true(#got >= 1)
    for _, n in ipairs(got) do assert.matches("^Wireless ", n) end
    local res = P.get(svc, "/products?tag=portable&category=kitchen&limit=100")
    for _, it in ipairs(res.json.items) do
      assert.matches("^Portable ", it.name)
      assert.is_truthy(it.tags[2] == "portable")
    end
    assert.is_true(#res.json.items >= 1)
  end)

  it("filters by price range and seller, and sorts by price both ways", function()
    local items = P.all_pages(svc, "/products?min_price=5000&max_price=9999&sort=price", 25)
    assert.is_true(#items > 10)
    for i, it in ipairs(items) do
      assert.is_true(it.price_cents >= 5000 and it.price_cents <= 9999)
      if i > 1 then assert.is_true(items[i - 1].price_cents <= it.price_cents) end
    end
    local desc = P.all_pages(svc, "/products?sort=-price", 30)
    for i = 2, #desc do assert.is_true(desc[i - 1].price_cents >= desc[i].price_cents) end
    local seller = desc[1].seller_id
    assert.equal(#desc, #P.all_pages(svc, "/products?seller=" .. seller, 100))
    assert.equal(0, #names("/products?seller=0191d2a8-0000-7000-8000-000000000099"))
  end)

  it("pages through every order with cursors, without duplicates or gaps", function()
    local everything = P.all_pages(svc, "/products", 100)
    for _, path in ipairs({ "/products?sort=newest", "/products?sort=price", "/products?sort=-price", "/products?q=wireless",
                            "/products?q=lamp&sort=relevance", "/products?tag=black" }) do
      local big = P.all_pages(svc, path, 100)
      local small, pages = P.all_pages(svc, path, 7)
      assert.equal(#big, #small, path)
      assert.is_true(pages >= math.ceil(#big / 7), path)
      local seen = {}
      for i, it in ipairs(small) do
        assert.is_nil(seen[it.id], path .. ": duplicate " .. it.name)
        seen[it.id] = true
        assert.equal(big[i].id, it.id, path .. ": order differs at " .. i)
      end
    end
    assert.is_true(#everything >= 200)
  end)

  it("refuses a cursor of another order with 400", function()
    local _, doc = names("/products?sort=price&limit=5")
    assert.equal(400, P.get(svc, "/products?sort=newest&cursor=" .. doc.next_cursor).status)
    assert.equal(200, P.get(svc, "/products?sort=price&limit=5&cursor=" .. doc.next_cursor).status)
  end)

  it("lists tags in use with their counts, most used first", function()
    local tags = P.all_pages(svc, "/tags", 10)
    local by = {}
    for i, t in ipairs(tags) do
      by[t.tag] = t.count
      if i > 1 then assert.is_true(tags[i - 1].count >= t.count) end
    end
    assert.equal(4, by.headphones)
    assert.is_true(by.wireless >= 20)
  end)

  it("lists the category tree, filtered by parent", function()
    local all = P.all_pages(svc, "/categories", 5)
    assert.equal(18, #all)
    local res = P.get(svc, "/categories?parent=electronics")
    assert.equal(4, #res.json.items)
    assert.equal(6, #P.get(svc, "/categories?parent=root").json.items)
  end)
end)
