-- Category writes racing each other and the products that use them (issue 18), against the
-- luacheck: max line length 170
-- real stack: every round sends its requests at once on their own connections, so the service
-- interleaves them; each round's outcome must be one a serial order could give.
--   - two crossing moves (A under B, B under A) never both succeed: the tree never has a cycle;
--   - a product created during its category's delete either fails with a 422 naming
--     category_id, or keeps its category (and the delete is then refused with 409);
--   - a product moved (PATCH category_id) during that category's delete: the same;
--   - a sub-category created during its parent's delete: the same, for parent_id.
--
-- Run: set -a; . <(scripts/dev/stack.sh env); set +a
--      build/mercato lua spec/support/busted.lua -o TAP spec/integration/product_category_race_spec.lua
local cjson = require "cjson"
local P = require "support.product_helpers"
local raw = require "support.raw_http"

local ROUNDS = tonumber(os.getenv("RACE_ROUNDS") or "") or 25

describe("category writes under concurrency", function()
  local svc, seller, admin

  setup(function()
    svc = P.start()
    seller, admin = P.party("seller"), P.party("admin")
  end)
  teardown(function() P.stop(svc) end)

  local n = 0
  local function category(parent_id)
    n = n + 1
    local res = P.post(svc, "/categories", { name = "Race " .. n, parent_id = parent_id }, { token = admin.token })
    assert.equal(201, res.status, res.body)
    return res.json
  end

  local function req(method, path, token, doc)
    local headers = { Authorization = "Bearer " .. token }
    if doc then headers["Content-Type"] = "application/json" end
    return { method = method, path = path, headers = headers, body = doc and cjson.encode(doc) or "" }
  end

  -- Send reqs at once, alternating which goes first from round to round.
  local function race(round, a, b)
    if round % 2 == 0 then
      local res = raw.concurrently(svc.port, { a, b })
      return res[1], res[2]
    end
    local res = raw.concurrently(svc.port, { b, a })
    return res[2], res[1]
  end

  local function sql(q) return P.psql(svc.db_url, q) end

  -- A refusal as a problem: its status, problem+json and, when given, the field it names.
  local function assert_problem(res, status, field, round)
    assert.equal(status, res.status, ("round %d: %s"):format(round, res.body))
    assert.matches("^application/problem%+json", res.headers["content-type"] or "")
    local doc = cjson.decode(res.body)
    assert.equal(status, doc.status)
    if field then
      assert.is_table(doc.errors, res.body)
      assert.equal(field, doc.errors[1].field, res.body)
    end
  end

  it("never lets two crossing moves both succeed: the tree has no cycle after any round", function()
    local outcomes = {}
    for round = 1, ROUNDS do
      local a, b = category(), category()
      local ra, rb = race(round,
        req("PATCH", "/categories/" .. a.id, admin.token, { parent_id = b.id }),
        req("PATCH", "/categories/" .. b.id, admin.token, { parent_id = a.id }))
      local key = ra.status .. "/" .. rb.status
      outcomes[key] = (outcomes[key] or 0) + 1
      -- Serially, the first move wins and the second would put a category under its own child.
      assert.is_true((ra.status == 200) ~= (rb.status == 200), ("round %d: both moves answered %s"):format(round, key))
      assert_problem(ra.status == 200 and rb or ra, 422, "parent_id", round)
      -- The tree as stored: walking up from any category ends at a root within the depth bound.
      local cyclic = sql([[WITH RECURSIVE up(start, id, depth) AS (SELECT id, parent_id, 1 FROM categories
          WHERE parent_id IS NOT NULL UNION ALL SELECT up.start, c.parent_id, up.depth + 1 FROM categories c
          JOIN up ON c.id = up.id WHERE c.parent_id IS NOT NULL AND up.depth < 64 AND up.id <> up.start)
        SELECT count(*) FROM up WHERE id = start]])
      assert.equal("0", cyclic, ("round %d: a category is its own ancestor"):format(round))
    end
    local parts = {}
    for k, v in pairs(outcomes) do parts[#parts + 1] = v .. " x " .. k end
    table.sort(parts)
    print(("# %d rounds of crossing moves: %s"):format(ROUNDS, table.concat(parts, ", ")))
  end)

  it("keeps a product created during its category's delete in that category, or refuses it with a 422", function()
    local kept, refused = 0, 0
    for round = 1, ROUNDS do
      local c = category()
      local doc = P.product_doc({ category_id = c.id })
      local create, delete = race(round, req("POST", "/products", seller.token, doc),
        req("DELETE", "/categories/" .. c.id, admin.token))
      if create.status == 201 then
        kept = kept + 1
        local id = cjson.decode(create.body).id
        assert_problem(delete, 409, nil, round)
        assert.equal(c.id, sql(("SELECT category_id FROM products WHERE id = '%s'"):format(id)), ("round %d: the product lost its category"):format(round))
        assert.equal("1", sql(("SELECT count(*) FROM categories WHERE id = '%s'"):format(c.id)))
      else
        refused = refused + 1
        assert.equal(204, delete.status, ("round %d: create %d, delete %d"):format(round, create.status, delete.status))
        assert_problem(create, 422, "category_id", round)
        assert.equal("0", sql(("SELECT count(*) FROM products WHERE name = '%s'"):format(doc.name)))
      end
    end
    assert.equal("0", sql("SELECT count(*) FROM products WHERE category_id IS NULL"), "a product without its category")
    print(("# %d rounds of create during delete: %d products kept their category (delete 409), %d refused (422)"):format(ROUNDS, kept, refused))
  end)

  it("keeps a product moved into a category during its delete there, or refuses the move with a 422", function()
    local kept, refused = 0, 0
    local product, etag = P.create(svc, seller)
    for round = 1, ROUNDS do
      local c = category()
      local move = req("PATCH", "/products/" .. product.id, seller.token, { category_id = c.id })
      move.headers["If-Match"] = etag
      local patch, delete = race(round, move, req("DELETE", "/categories/" .. c.id, admin.token))
      if patch.status == 200 then
        kept = kept + 1
        etag = patch.headers.etag
        assert_problem(delete, 409, nil, round)
        assert.equal(c.id, sql(("SELECT category_id FROM products WHERE id = '%s'"):format(product.id)), ("round %d: the product lost its category"):format(round))
      else
        refused = refused + 1
        assert.equal(204, delete.status, ("round %d: patch %d, delete %d"):format(round, patch.status, delete.status))
        assert_problem(patch, 422, "category_id", round)
      end
      -- back out of the category (so the next round's delete is not refused for it)
      local back = P.patch(svc, "/products/" .. product.id, { category_id = cjson.null }, { token = seller.token, headers = { ["If-Match"] = etag } })
      assert.equal(200, back.status, back.body)
      etag = back.headers.etag
    end
    print(("# %d rounds of a product moved during its category's delete: %d kept (delete 409), %d refused (422)"):format(ROUNDS, kept, refused))
  end)

  it("keeps a sub-category created during its parent's delete under that parent, or refuses it with a 422", function()
    local kept, refused = 0, 0
    for round = 1, ROUNDS do
      local parent = category()
      n = n + 1
      local create, delete = race(round,
        req("POST", "/categories", admin.token, { name = "Race child " .. n, parent_id = parent.id }),
        req("DELETE", "/categories/" .. parent.id, admin.token))
      if create.status == 201 then
        kept = kept + 1
        assert_problem(delete, 409, nil, round)
        assert.equal(parent.id, cjson.decode(create.body).parent_id)
      else
        refused = refused + 1
        assert.equal(204, delete.status, ("round %d: create %d, delete %d"):format(round, create.status, delete.status))
        assert_problem(create, 422, "parent_id", round)
      end
    end
    print(("# %d rounds of sub-category create during delete: %d kept (delete 409), %d refused (422)"):format(ROUNDS, kept, refused))
  end)
end)
