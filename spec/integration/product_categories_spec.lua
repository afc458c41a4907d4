-- Categories and tags against the real stack: a slug derived from the name when none is given,
-- luacheck: max line length 170
-- a rename that changes the ETag of every product below it (one set-based outbox insert), and
-- GET /tags answered from maintained counts.
--
-- Run: set -a; . <(scripts/dev/stack.sh env); set +a
--      build/mercato lua spec/support/busted.lua -o TAP spec/integration/product_categories_spec.lua
local P = require "support.product_helpers"

describe("categories", function()
  local svc, alice, admin

  setup(function()
    svc = P.start()
    alice, admin = P.party("seller"), P.party("admin")
  end)
  teardown(function() P.stop(svc) end)

  local function create(doc) return P.post(svc, "/categories", doc, { token = admin.token }) end

  describe("a slug derived from the name", function()
    it("folds accents to lower-case ASCII and joins words with single hyphens", function()
      local res = create({ name = "Crème Brûlée & Café Gear" })
      assert.equal(201, res.status, res.body)
      assert.equal("creme-brulee-cafe-gear", res.json.slug)
      res = create({ name = "  Straße, Œuvres!  Ærø -- Ünïcödé  " })
      assert.equal(201, res.status, res.body)
      assert.equal("strasse-oeuvres-aero-unicode", res.json.slug)
    end)

    it("gives a colliding slug -2, -3, … and keeps a given slug as it is", function()
      assert.equal("home-garden", create({ name = "Home & Garden" }).json.slug)
      assert.equal("home-garden-2", create({ name = "Home  Garden" }).json.slug)
      assert.equal("home-garden-3", create({ name = "home/garden" }).json.slug)
      assert.equal("kept-as-sent", create({ name = "Whatever", slug = "kept-as-sent" }).json.slug)
      assert.equal(409, create({ name = "Again", slug = "kept-as-sent" }).status)
    end)

    it("keeps a derived slug within 64 characters and names a category with no letters", function()
      local res = create({ name = ("Very Long Category Name "):rep(4) })
      assert.equal(201, res.status, res.body)
      assert.truthy(#res.json.slug <= 64)
      assert.matches("^[a-z0-9][a-z0-9%-]*[a-z0-9]$", res.json.slug)
      assert.falsy(res.json.slug:find("--", 1, true))
      res = create({ name = "★ ☆ ★" })
      assert.equal(201, res.status, res.body)
      assert.equal("category", res.json.slug)
    end)
  end)

  describe("a rename", function()
    it("bumps the version (ETag) of every product below it and announces each with product.updated carrying it", function()
      local parent = create({ name = "Rename Parent" }).json
      local child = create({ name = "Rename Child", parent_id = parent.id }).json
      local a = P.create(svc, alice, { category_id = parent.id })
      local b = P.create(svc, alice, { category_id = child.id })
      local before_b = P.get(svc, "/products/" .. b.id)   -- cached now
      assert.equal('"1"', before_b.headers.etag)
      local res = P.patch(svc, "/categories/" .. parent.id, { name = "Renamed Parent" }, { token = admin.token })
      assert.equal(200, res.status, res.body)
      for _, p in ipairs({ a, b }) do
        local got = P.get(svc, "/products/" .. p.id)
        assert.equal('"2"', got.headers.etag, p.id)
        assert.equal(2, got.json.version)
      end
      local rows = P.psql(svc.db_url, ([[SELECT string_agg((payload->'data'->>'version'), ',') FROM outbox
        WHERE type = 'product.updated' AND payload->'data'->>'product_id' IN ('%s', '%s')]]):format(a.id, b.id))
      assert.equal("2,2", rows)
      -- the old ETag no longer matches
      local patch = P.patch(svc, "/products/" .. a.id, { name = "x" }, { token = alice.token, headers = { ["If-Match"] = '"1"' } })
      assert.equal(412, patch.status)
    end)
  end)
end)
