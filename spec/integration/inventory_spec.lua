-- spec/integration/inventory_spec.lua: the inventory binding and handlers against the real
-- PostgreSQL — the last units under 50 concurrent reservations (over HTTP with 8 workers, and
-- from 50 separate processes), overlapping multi-item reservations, commit / release / expiry,
-- If-Match, and the ledger's balance. Its own database (mercato_inventory_spec).
--   DATABASE_URL=postgresql://postgres@127.0.0.1:29432/mercato_product \
--     build/mercato lua spec/support/busted.lua -o TAP spec/integration/inventory_spec.lua
-- Prints the measured numbers as "# " lines.
local cjson = require "cjson"
local H = require "fixtures.inventory.helpers"
local raw = require "support.raw_http"
local socket = require "socket"

local DBNAME = "mercato_inventory_spec"

describe("inventory", function()
  local srv, url, svc, seller, admin, buyer

  setup(function()
    H.keys()
    url = H.database(DBNAME)
    srv = H.start { database_url = url, scripts = H.scripts("inventory"), workers = 8 }
    svc = H.token { sub = "order-service", role = "service", scope = "inventory" }
    seller = H.uuid()
    admin = H.token { sub = H.uuid(), role = "admin" }
    buyer = H.token { sub = H.uuid(), role = "buyer", scope = "" }
  end)

  teardown(function()
    if srv then assert.equal(0, srv:stop()) end
    H.drop_database(DBNAME)
  end)

  local function product(stock)
    local id = H.uuid()
    local res = H.call(srv, "POST", "/spec/products", { json = { id = id, seller_id = seller, stock = stock } })
    assert.equal(201, res.status, res.body)
    return id
  end

  local function level(id) return H.call(srv, "GET", "/products/" .. id .. "/inventory").json end

  local function audit(id)
    local res = H.call(srv, "GET", "/spec/audit/" .. id)
    assert.equal(200, res.status, res.body)
    return res.json
  end

  local function reserve(rid, items, extra)
    local doc = { reservation_id = rid, items = items }
    for k, v in pairs(extra or {}) do doc[k] = v end
    return H.call(srv, "POST", "/internal/reservations", { token = svc, json = doc })
  end

  -- Send every request on its own connection first, then read every answer: the server sees
  -- them all at once (8 workers, the rest queued in the listen backlog).
  local function concurrently(reqs)
    local socks = {}
    local t0 = socket.gettime()
    for i, r in ipairs(reqs) do
      local body = cjson.encode(r.json)
      local bytes = table.concat({ r.method .. " " .. r.path .. " HTTP/1.1", "Host: 127.0.0.1",
        "Authorization: Bearer " .. svc, "Content-Type: application/json", "Content-Length: " .. #body, "", body }, "\r\n")
      socks[i] = assert(raw.connect(srv.port, 30))
      assert(socks[i]:send(bytes))
    end
    local out = {}
    for i, s in ipairs(socks) do
      out[i] = assert(raw.read_response(s))
      s:close()
    end
    return out, socket.gettime() - t0
  end

  describe("reservations under concurrency", function()
    it("lets exactly 10 of 50 concurrent HTTP reservations take the last 10 units, never below 0", function()
      local id = product(10)
      local reqs = {}
      for i = 1, 50 do
        reqs[i] = { method = "POST", path = "/internal/reservations",
          json = { reservation_id = H.uuid(), items = { { product_id = id, quantity = 1 } } } }
      end
      local res, took = concurrently(reqs)
      local ok, short, other = 0, 0, {}
      for _, r in ipairs(res) do
        if r.status == 201 then ok = ok + 1
        elseif r.status == 409 then
          short = short + 1
          local doc = cjson.decode(r.body)
          assert.same({ product_id = id, requested = 1, available = 0 }, doc.insufficient[1])
        else other[#other + 1] = r.status .. " " .. r.body end
      end
      print(("# 50 concurrent HTTP reservations for 10 units (WORKERS=8): %d succeeded, %d refused, %.0f ms")
        :format(ok, short, took * 1000))
      assert.same({}, other)
      assert.equal(10, ok)
      assert.equal(40, short)
      assert.same({ stock = 0, reserved = 10, version = 11 }, level(id))
      assert.is_true(audit(id).balanced)
    end)

    it("lets exactly 10 of 50 separate processes reserving at the same instant succeed", function()
      local id = product(10)
      local dir = H.DIR .. "/procs"
      H.sh("rm -rf " .. dir .. " && mkdir -p " .. dir)
      local script = dir .. "/reserve.lua"
      local f = assert(io.open(script, "w"))
      f:write([[
local inventory, host, crypto = require "inventory", require "host", require "crypto"
local start = tonumber(arg[1])
while host.now() < start do host.sleep(0.002) end
local ok, info, code = inventory.reserve(crypto.uuid4(), { { product_id = arg[2], quantity = 1 } }, 60)
io.write(ok and "ok" or (type(info) == "table" and "short" or ("error " .. tostring(info) .. " " .. tostring(code))), "\n")
]])
      f:close()
      local start = require("host").now() + 3
      local t0 = socket.gettime()
      H.sh(("for i in $(seq 1 50); do DATABASE_URL=%s %s lua %s %f %s > %s/out.$i 2>&1 & done; wait")
        :format(url, H.BIN, script, start, id, dir))
      local took = socket.gettime() - t0
      local counts = {}
      for i = 1, 50 do
        local o = assert(io.open(dir .. "/out." .. i)):read("*a"):match("^(%S+)") or "none"
        counts[o] = (counts[o] or 0) + 1
      end
      print(("# 50 processes reserving 1 of 10 units at once: %d ok, %d short, %d other (%.1f s including start-up)")
        :format(counts.ok or 0, counts.short or 0, 50 - (counts.ok or 0) - (counts.short or 0), took))
      assert.same({ ok = 10, short = 40 }, counts)
      assert.same({ stock = 0, reserved = 10, version = 11 }, level(id))
      assert.is_true(audit(id).balanced)
    end)

    it("keeps overlapping multi-item reservations all-or-nothing, without deadlock, and balanced", function()
      local ids = { product(10), product(10), product(10), product(10) }
      math.randomseed(42)
      local reqs, want = {}, {}
      for i = 1, 50 do
        -- 2-3 distinct products, listed in a random order (the binding sorts them)
        local pick, items = {}, {}
        while #items < 2 + i % 2 do
          local p = ids[math.random(#ids)]
          if not pick[p] then
            pick[p] = true
            items[#items + 1] = { product_id = p, quantity = math.random(2) }
          end
        end
        local rid = H.uuid()
        reqs[i] = { method = "POST", path = "/internal/reservations", json = { reservation_id = rid, items = items } }
        want[i] = items
      end
      local res, took = concurrently(reqs)
      local taken, ok, short = {}, 0, 0
      for i, r in ipairs(res) do
        assert.is_true(r.status == 201 or r.status == 409, r.status .. " " .. r.body)
        if r.status == 201 then
          ok = ok + 1
          for _, it in ipairs(want[i]) do taken[it.product_id] = (taken[it.product_id] or 0) + it.quantity end
        else
          short = short + 1
          assert.is_table(cjson.decode(r.body).insufficient, r.body)   -- not a deadlock's "conflict"
        end
      end
      print(("# 50 concurrent 2-3 item reservations over 4 products x 10 units: %d succeeded, %d refused, %.0f ms, no deadlock")
        :format(ok, short, took * 1000))
      for _, id in ipairs(ids) do
        local lvl, a = level(id), audit(id)
        assert.equal(10 - (taken[id] or 0), lvl.stock)
        assert.equal(taken[id] or 0, lvl.reserved)
        assert.is_true(lvl.stock >= 0)
        assert.is_true(a.balanced, cjson.encode(a))
      end
    end)
  end)

  describe("one reservation", function()
    it("reports every short item with what is available and reserves nothing", function()
      local a, b, c = product(5), product(1), product(0)
      local rid = H.uuid()
      local res = reserve(rid, { { product_id = a, quantity = 2 }, { product_id = b, quantity = 3 },
        { product_id = c, quantity = 1 } })
      assert.equal(409, res.status)
      assert.equal("application/problem+json", res.headers["content-type"])
      local short = {}
      for _, s in ipairs(res.json.insufficient) do short[s.product_id] = s end
      assert.same({ product_id = b, requested = 3, available = 1 }, short[b])
      assert.same({ product_id = c, requested = 1, available = 0 }, short[c])
      assert.is_nil(short[a])
      assert.same({ stock = 5, reserved = 0, version = 1 }, level(a))
      -- the id was not used up: the same id reserves once the stock is there
      assert.equal(201, reserve(rid, { { product_id = a, quantity = 2 } }).status)
    end)

    it("is idempotent on reservation_id and refuses the id with other items", function()
      local a = product(5)
      local rid = H.uuid()
      local items = { { product_id = a, quantity = 2 } }
      local first = reserve(rid, items)
      assert.equal(201, first.status)
      local snapshot = { { product_id = a, quantity = 2, name = "Fixture product", unit_price_cents = 100, currency = "eur",
        seller_id = seller } }
      assert.same({ reservation_id = rid, status = "reserved", items = snapshot }, first.json)
      local again = reserve(rid, items)
      assert.equal(200, again.status)
      assert.same({ reservation_id = rid, status = "reserved", items = snapshot }, again.json)
      assert.equal(3, level(a).stock)
      assert.equal(422, reserve(rid, { { product_id = a, quantity = 1 } }).status)
    end)

    it("commits once (reserved becomes sold) and refuses to commit a released one", function()
      local a = product(5)
      local rid = H.uuid()
      assert.equal(201, reserve(rid, { { product_id = a, quantity = 2 } }).status)
      local res = H.call(srv, "POST", "/internal/reservations/" .. rid .. "/commit", { token = svc })
      assert.equal(200, res.status, res.body)
      assert.equal(200, H.call(srv, "POST", "/internal/reservations/" .. rid .. "/commit", { token = svc }).status)
      assert.same({ stock = 3, reserved = 0, version = 3 }, level(a))
      local au = audit(a)
      assert.same({ 5, 2, 0, true }, { au.initial, au.sold, au.held, au.balanced })
      assert.equal(404, H.call(srv, "POST", "/internal/reservations/" .. H.uuid() .. "/commit", { token = svc }).status)
      local r2 = H.uuid()
      assert.equal(201, reserve(r2, { { product_id = a, quantity = 1 } }).status)
      assert.equal(204, H.call(srv, "DELETE", "/internal/reservations/" .. r2, { token = svc }).status)
      assert.equal(409, H.call(srv, "POST", "/internal/reservations/" .. r2 .. "/commit", { token = svc }).status)
    end)

    it("releases idempotently: the stock comes back once", function()
      local a, b = product(4), product(4)
      local rid = H.uuid()
      assert.equal(201, reserve(rid, { { product_id = a, quantity = 3 }, { product_id = b, quantity = 1 } }).status)
      for _ = 1, 3 do
        assert.equal(204, H.call(srv, "DELETE", "/internal/reservations/" .. rid, { token = svc }).status)
      end
      assert.same({ stock = 4, reserved = 0 }, { stock = level(a).stock, reserved = level(a).reserved })
      assert.equal(4, level(b).stock)
      assert.equal(204, H.call(srv, "DELETE", "/internal/reservations/" .. H.uuid(), { token = svc }).status)
      assert.is_true(audit(a).balanced)
    end)

    it("returns sold stock when a committed reservation is released (a paid order cancelled)", function()
      local a = product(3)
      local rid = H.uuid()
      assert.equal(201, reserve(rid, { { product_id = a, quantity = 2 } }).status)
      assert.equal(200, H.call(srv, "POST", "/internal/reservations/" .. rid .. "/commit", { token = svc }).status)
      assert.equal(204, H.call(srv, "DELETE", "/internal/reservations/" .. rid, { token = svc }).status)
      assert.equal(204, H.call(srv, "DELETE", "/internal/reservations/" .. rid, { token = svc }).status)
      local au = audit(a)
      assert.same({ 3, 0, 0, 0, true }, { au.stock, au.reserved, au.sold, au.held, au.balanced })
    end)

    it("expires reservations past their TTL through the job, giving the stock back", function()
      local a = product(5)
      local rid = H.uuid()
      assert.equal(201, reserve(rid, { { product_id = a, quantity = 4 } }, { ttl_seconds = 1 }).status)
      local keep = H.uuid()
      assert.equal(201, reserve(keep, { { product_id = a, quantity = 1 } }).status)
      assert.equal(0, level(a).stock)
      local deadline = socket.gettime() + 10
      while level(a).stock ~= 4 and socket.gettime() < deadline do socket.sleep(0.2) end
      assert.same({ stock = 4, reserved = 1 }, { stock = level(a).stock, reserved = level(a).reserved })
      assert.equal(409, H.call(srv, "POST", "/internal/reservations/" .. rid .. "/commit", { token = svc }).status)
      assert.equal(200, H.call(srv, "POST", "/internal/reservations/" .. keep .. "/commit", { token = svc }).status)
      assert.equal(0, H.call(srv, "POST", "/spec/expire").json.expired)
      assert.is_true(audit(a).balanced)
    end)

    it("joins the caller's db.tx: a failure after reserving rolls the reservation back", function()
      local a = product(2)
      local res = H.call(srv, "POST", "/spec/reserve-then-fail",
        { json = { reservation_id = H.uuid(), items = { { product_id = a, quantity = 2 } } } })
      assert.is_true(res.json.raised)
      assert.same({ stock = 2, reserved = 0, version = 1 }, level(a))
      assert.equal(201, reserve(H.uuid(), { { product_id = a, quantity = 2 } }).status)
    end)

    it("commits with the caller's db.tx, in a handler parked on the transaction's connection", function()
      local a = product(5)
      local rid = H.uuid()
      local res = H.call(srv, "POST", "/spec/reserve-in-tx",
        { json = { reservation_id = rid, items = { { product_id = a, quantity = 2 } } } })
      assert.equal(200, res.status, res.body)
      assert.same({ status = "reserved", replayed = false }, res.json)
      assert.same({ stock = 3, reserved = 2, version = 2 }, level(a))
      assert.is_true(audit(a).balanced)
      assert.equal(200, H.call(srv, "POST", "/internal/reservations/" .. rid .. "/commit", { token = svc }).status)
      -- reserve and commit in one transaction: sold when it commits
      local b = product(4)
      res = H.call(srv, "POST", "/spec/reserve-in-tx",
        { json = { reservation_id = H.uuid(), items = { { product_id = b, quantity = 3 } }, commit = true } })
      assert.equal(200, res.status, res.body)
      assert.same({ stock = 1, reserved = 0, version = 3 }, level(b))
      local au = audit(b)
      assert.same({ 3, true }, { au.sold, au.balanced })
    end)

    it("rolls back with the caller's db.tx when it returns an error after reserving", function()
      local a = product(5)
      local rid = H.uuid()
      local items = { { product_id = a, quantity = 2 } }
      local res = H.call(srv, "POST", "/spec/reserve-in-tx",
        { json = { reservation_id = rid, items = items, commit = true, fail = true } })
      assert.equal(422, res.status, res.body)
      assert.equal("the rest of the checkout failed", res.json.err)
      assert.same({ stock = 5, reserved = 0, version = 1 }, level(a))
      assert.is_true(audit(a).balanced)
      -- nothing of it is left: the same id reserves afresh (201, not a replay)
      assert.equal(201, reserve(rid, items).status)
      assert.same({ stock = 3, reserved = 2, version = 2 }, level(a))
    end)

    it("never oversells when 50 concurrent transactions each reserve inside their db.tx", function()
      local id = product(10)
      local reqs = {}
      for i = 1, 50 do
        reqs[i] = { method = "POST", path = "/spec/reserve-in-tx",
          json = { reservation_id = H.uuid(), items = { { product_id = id, quantity = 1 } } } }
      end
      local res, took = concurrently(reqs)
      local counts = {}
      for _, r in ipairs(res) do
        counts[r.status] = (counts[r.status] or 0) + 1
        if r.status == 409 then
          assert.same({ product_id = id, requested = 1, available = 0 }, cjson.decode(r.body).insufficient[1])
        end
      end
      print(("# 50 concurrent reservations inside db.tx for 10 units: %d committed, %d refused, %.0f ms")
        :format(counts[200] or 0, counts[409] or 0, took * 1000))
      assert.same({ [200] = 10, [409] = 40 }, counts)
      assert.same({ stock = 0, reserved = 10, version = 11 }, level(id))
      assert.is_true(audit(id).balanced)
    end)

    it("validates the body (400 unknown fields, 422 bad values, 415 not JSON)", function()
      assert.equal(400, reserve(H.uuid(), { { product_id = H.uuid(), quantity = 1 } }, { extra = 1 }).status)
      local res = reserve("nope", { { product_id = "x", quantity = 0 } })
      assert.equal(422, res.status)
      assert.equal(3, #res.json.errors)
      assert.equal(422, reserve(H.uuid(), {}).status)
      assert.equal(415, H.call(srv, "POST", "/internal/reservations", { token = svc, body = "x",
        headers = { ["Content-Type"] = "text/plain" } }).status)
    end)

    it("needs a token with scope inventory", function()
      assert.equal(401, H.call(srv, "POST", "/internal/reservations", { json = {} }).status)
      assert.equal(403, H.call(srv, "POST", "/internal/reservations", { token = buyer, json = {} }).status)
      assert.equal(403, H.call(srv, "DELETE", "/internal/reservations/" .. H.uuid(), { token = admin }).status)
    end)
  end)

  describe("stock levels", function()
    it("shows {stock, reserved, version} with an ETag, 404 for unknown products", function()
      local a = product(7)
      local res = H.call(srv, "GET", "/products/" .. a .. "/inventory")
      assert.equal(200, res.status)
      assert.same({ stock = 7, reserved = 0, version = 1 }, res.json)
      assert.equal('"1"', res.headers.etag)
      assert.equal(404, H.call(srv, "GET", "/products/" .. H.uuid() .. "/inventory").status)
      assert.equal(404, H.call(srv, "GET", "/products/not-a-uuid/inventory").status)
    end)

    it("sets stock with If-Match: 428 without, 412 stale, 403 for another seller, ledger balanced", function()
      local a = product(7)
      local mine = H.token { sub = seller, role = "seller" }
      local other = H.token { sub = H.uuid(), role = "seller" }
      local path = "/products/" .. a .. "/inventory"
      local function put(token, doc, version)
        return H.call(srv, "PUT", path, { token = token, json = doc, headers = { ["If-Match"] = version } })
      end
      assert.equal(428, put(mine, { stock = 9 }).status)
      assert.equal(403, put(other, { stock = 9 }, '"1"').status)
      assert.equal(403, put(buyer, { stock = 9 }, '"1"').status)
      local res = put(mine, { stock = 9 }, '"1"')
      assert.equal(200, res.status, res.body)
      assert.same({ stock = 9, reserved = 0, version = 2 }, res.json)
      assert.equal('"2"', res.headers.etag)
      local stale = put(admin, { stock = 1 }, '"1"')
      assert.equal(412, stale.status)
      assert.equal('"2"', stale.headers.etag)
      assert.equal(200, put(admin, { stock = 4 }, '"2"').status)
      assert.equal(422, put(admin, { stock = -1 }, '"3"').status)
      assert.equal(400, put(admin, { stock = 1, version = 9 }, '"3"').status)
      local au = audit(a)
      assert.same({ 7, -3, 4, true }, { au.initial, au.restocks, au.stock, au.balanced })
    end)
  end)
end)
