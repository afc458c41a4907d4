-- The Elasticsearch back end of product search, against spec/support/es_standin.lua (a local
-- luacheck: max line length 170
-- STAND-IN speaking the slice of the ES REST API the adapter uses; no Elasticsearch runs
-- here): the outbox → RabbitMQ → indexer path, typo search answered from the index and
-- hydrated from PostgreSQL, deletions leaving the index, and the reindex command. The last
-- block runs against a real cluster only when ELASTICSEARCH_URL is set.
--
-- Run: set -a; . <(scripts/dev/stack.sh env); set +a
--      build/mercato lua spec/support/busted.lua -o TAP spec/integration/product_es_spec.lua
local crypto = require "crypto"
local http = require "http"
local socket = require "socket"
local P = require "support.product_helpers"
local server = require "support.server"

local function eventually(fn, timeout)
  local deadline = socket.gettime() + (timeout or 15)
  local last
  repeat
    local ok, v = pcall(fn)
    if ok and v then return v end
    last = v
    socket.sleep(0.2)
  until socket.gettime() > deadline
  error("condition not met in time: " .. tostring(last), 2)
end

describe("product search on Elasticsearch (stand-in)", function()
  local svc, es_pid, es_url, seller
  local index = "products_spec_" .. crypto.hex(crypto.random(3))

  setup(function()
    local port = server.free_port()
    local p = io.popen(("%s lua spec/support/es_standin.lua %d > .run/test/product/es-standin.log 2>&1 & echo $!")
      :format(os.getenv("MERCATO_BIN") or "build/mercato", port))
    es_pid = tonumber(p:read("*l"))
    p:close()
    es_url = "http://127.0.0.1:" .. port
    eventually(function() local r = http.request { method = "GET", url = es_url .. "/", timeout_ms = 500 } return r and r.status == 200 end, 10)
    svc = P.start({ seed = true, env = { ELASTICSEARCH_URL = es_url, ES_INDEX = index,
      SEARCH_INDEX_QUEUE = "product.search-index.spec-" .. crypto.hex(crypto.random(3)) } })
    seller = P.party("seller")
  end)

  teardown(function()
    P.stop(svc)
    if es_pid then os.execute("kill " .. es_pid .. " 2>/dev/null") end
  end)

  local function names(q)
    local res = P.get(svc, "/products?" .. q)
    assert.equal(200, res.status, res.body)
    local out = {}
    for i, it in ipairs(res.json.items) do out[i] = it.name end
    return out, res.json
  end

  it("indexes the seeded catalogue from the outbox events", function()
    -- All of it: the tests below compare answers taken moments apart, which a catalogue still
    -- being indexed would make differ.
    local seeded = tonumber(P.psql(svc.db_url, "SELECT count(*) FROM products WHERE status = 'active'"))
    assert.is_true(seeded >= 200, "seeded " .. seeded)
    eventually(function()
      local r = http.request { method = "GET", url = es_url .. "/" .. index, timeout_ms = 1000 }
      local doc = r and r.status == 200 and require("cjson").decode(r.body)
      return doc and doc[index].standin_count == seeded
    end, 30)
  end)

  it("answers a typo query from the index, hydrated with live stock", function()
    local got, doc = names("q=wireles+hedphones")
    assert.equal("Wireless Headphones", got[1])
    assert.is_number(doc.items[1].stock)
  end)

  it("applies category and price filters in the index query", function()
    local got = names("q=wireless&category=kitchen&limit=100")
    assert.is_true(#got >= 1)
    for _, n in ipairs(got) do assert.matches("^Wireless ", n) end
    local res = P.get(svc, "/products?q=lamp&max_price=4000&limit=100")
    for _, it in ipairs(res.json.items) do assert.is_true(it.price_cents <= 4000) end
  end)

  it("pages search results with search_after cursors, without duplicates", function()
    local big = P.all_pages(svc, "/products?q=wireless", 100)
    local small = P.all_pages(svc, "/products?q=wireless", 6)
    assert.equal(#big, #small)
    for i = 1, #big do assert.equal(big[i].id, small[i].id) end
  end)

  it("answers 400 to a tampered search_after cursor (not 503)", function()
    local cjson = require "cjson"
    for _, a in ipairs({ { "x", "y" }, { 1, "not-an-id" }, { 1e300, crypto.uuid4() }, { { 1 }, crypto.uuid4() } }) do
      local c = crypto.base64url_encode(cjson.encode({ o = "es:relevance", a = a }))
      local res = P.get(svc, "/products?q=wireless&cursor=" .. c)
      assert.equal(400, res.status, cjson.encode(a) .. " " .. tostring(res.body))
      assert.equal("cursor", res.json.errors[1].field)
    end
  end)

  it("indexes new products and drops deleted ones, eventually", function()
    local p = P.create(svc, seller, { name = "Zanzibar Quokka Lantern" })
    eventually(function() return names("q=quokka")[1] == "Zanzibar Quokka Lantern" end)
    assert.equal(204, P.delete(svc, "/products/" .. p.id, { token = seller.token }).status)
    -- gone from the answer at once (hydration), and from the index soon after
    assert.equal(0, #names("q=quokka"))
    eventually(function()
      local r = http.request { method = "GET", url = es_url .. "/" .. index .. "/_doc/" .. p.id, timeout_ms = 1000 }
      return r and r.status == 404
    end)
  end)

  it("rebuilds the index with the reindex command", function()
    http.request { method = "DELETE", url = es_url .. "/" .. index, timeout_ms = 1000 }
    local out, rc = P.sh(("SERVICE=product DATABASE_URL=%s ELASTICSEARCH_URL=%s ES_INDEX=%s %s lua scripts/services/product/reindex.lua")
      :format(P.q(svc.db_url), es_url, index, os.getenv("MERCATO_BIN") or "build/mercato"))
    assert.equal(0, rc, out)
    assert.matches("indexed 228", out)
    assert.equal("Wireless Headphones", names("q=wireles+hedphones")[1])
  end)
end)

describe("product search on a real Elasticsearch", function()
  local live = os.getenv("ELASTICSEARCH_URL")
  if not live or live == "" then
    pending("ELASTICSEARCH_URL is not set: no cluster to test against")
    return
  end
  local svc
  local index = "products_live_" .. crypto.hex(crypto.random(3))
  setup(function()
    svc = P.start({ seed = true, env = { ELASTICSEARCH_URL = live, ES_INDEX = index } })
    local out, rc = P.sh(("SERVICE=product DATABASE_URL=%s ELASTICSEARCH_URL=%s ES_INDEX=%s %s lua scripts/services/product/reindex.lua")
      :format(P.q(svc.db_url), live, index, os.getenv("MERCATO_BIN") or "build/mercato"))
    assert(rc == 0, out)
  end)
  teardown(function() P.stop(svc) end)

  it("finds Wireless Headphones for a misspelt query", function()
    eventually(function()
      local res = P.get(svc, "/products?q=wireles+hedphones")
      return res.status == 200 and res.json.items[1] and res.json.items[1].name == "Wireless Headphones"
    end, 30)
  end)
end)
