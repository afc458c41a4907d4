-- GET /tags against the real stack at 10,000 products: the counts of tags in use, kept by the
-- luacheck: max line length 170
-- writes that change them (tag_counts, maintained by a trigger) rather than aggregated over
-- every product on every call. Prints the measured latencies as "# " lines.
--
-- Run: set -a; . <(scripts/dev/stack.sh env); set +a
--      build/mercato lua spec/support/busted.lua -o TAP spec/integration/product_tags_spec.lua
local socket = require "socket"
local P = require "support.product_helpers"

describe("GET /tags", function()
  local svc, alice

  setup(function()
    svc = P.start()
    alice = P.party("seller")
    -- 10,000 products over 400 tags, three each, straight into the tables the service writes
    P.psql(svc.db_url, [[
      INSERT INTO products (id, seller_id, name, price_cents, currency, tags)
      SELECT md5('tags-spec:' || n)::uuid, '0191d2a8-0000-7000-8000-00000000aaaa', 'Bulk ' || n, 100 + n, 'eur',
        ARRAY['t' || (n % 400), 't' || ((n * 7) % 400 + 400), 'common']
      FROM generate_series(1, 10000) n;
      INSERT INTO inventory (product_id, stock) SELECT id, 1 FROM products WHERE name LIKE 'Bulk %']])
  end)
  teardown(function() P.stop(svc) end)

  -- The truth: the aggregate over active products.
  local function aggregate()
    local out = {}
    local rows = P.psql(svc.db_url, "SELECT string_agg(tag || '=' || n, ',' ORDER BY n DESC, tag) FROM "
      .. "(SELECT t.tag, count(*) AS n FROM products p, unnest(p.tags) t(tag) WHERE p.status = 'active' GROUP BY t.tag) x")
    for tag, n in rows:gmatch("([^,=]+)=(%d+)") do out[#out + 1] = { tag = tag, count = tonumber(n) } end
    return out
  end

  local function all_tags() return (P.all_pages(svc, "/tags", 100)) end

  it("answers the counts of the aggregate, most used first, after creates, edits and deletes", function()
    local p, tag = P.create(svc, alice, { tags = { "common", "tagspec-a", "tagspec-b" } })
    P.create(svc, alice, { tags = { "tagspec-a" } })
    local res = P.patch(svc, "/products/" .. p.id, { tags = { "tagspec-b", "tagspec-c", "tagspec-c" } },
      { token = alice.token, headers = { ["If-Match"] = tag } })
    assert.equal(200, res.status, res.body)
    local gone = P.create(svc, alice, { tags = { "tagspec-gone" } })
    assert.equal(204, P.delete(svc, "/products/" .. gone.id, { token = alice.token }).status)
    local got = all_tags()
    assert.same(aggregate(), got)
    assert.same({ tag = "common", count = 10000 }, got[1])
    for _, t in ipairs(got) do assert.are_not.equal("tagspec-gone", t.tag) end
  end)

  it("does not aggregate every product on every call: a page at 10,000 products from tag_counts in under 5 ms (median)", function()
    local plan = P.psql(svc.db_url, "EXPLAIN SELECT tag, count FROM tag_counts WHERE count > 0 ORDER BY count DESC, tag LIMIT 21")
    assert.truthy(plan:find("tag_counts", 1, true))
    local times = {}
    for i = 1, 41 do
      local t0 = socket.gettime()
      local res = P.get(svc, "/tags?limit=20")
      times[i] = (socket.gettime() - t0) * 1000
      assert.equal(200, res.status)
      assert.equal(20, #res.json.items)
    end
    table.sort(times)
    print(("# GET /tags?limit=20 at 10,000 products: median %.2f ms, max %.2f ms"):format(times[21], times[41]))
    assert.truthy(times[21] < 5, ("median %.2f ms"):format(times[21]))
  end)
end)
