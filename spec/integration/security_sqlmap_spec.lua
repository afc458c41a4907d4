-- luacheck: max line length 160
-- sqlmap against the real services (issue 18): product search and lists (every query
-- parameter), categories, the auth endpoints (login, register, the token grants, refresh,
-- revoke), the user, order, payment and notification lists and documents — with a token and
-- without — finds no injectable parameter and provokes no 500. First it proves the harness can
-- fail: on a throwaway fixture route that concatenates its parameter into SQL, sqlmap must find
-- the injection (and none on the parameterised twin).
--
-- make test runs the quick profile (level 1, risk 1, boolean/error/UNION: under 3 minutes);
-- `make security` the full one (SQLMAP_PROFILE=full: level 5, risk 3, every technique).
-- sqlmap's output per target: .run/security/sqlmap/<profile>/<target>.log; summary: <profile>.md.
--
-- Run: set -a; . <(scripts/dev/stack.sh env); set +a
--      build/mercato lua spec/support/busted.lua -o TAP spec/integration/security_sqlmap_spec.lua
local cjson = require "cjson.safe"
local crypto = require "crypto"
local O = require "support.order_helpers"
local P = require "support.product_helpers"
local S = require "support.sqlmap"
local U = require "support.user_helpers"
local server = require "support.server"

local PROFILE = S.profile()
local summary = {}

local function record(target, r)
  summary[#summary + 1] = ("| %s | %s %s | %d s | %s | %d |"):format(target.name, target.method or (target.data and "POST" or "GET"),
    target.url:gsub("^https?://[^/]+", ""):sub(1, 90), r.seconds, #r.injectable == 0 and "none" or table.concat(r.injectable, "<br>"),
    r.server_errors)
end

local function write_summary()
  os.execute("mkdir -p " .. S.OUT)
  local part = os.getenv("SQLMAP_PART")   -- scripts/dev/security.sh runs the groups side by side
  local f = assert(io.open(S.OUT .. "/" .. PROFILE .. (part and ("-" .. part) or "") .. ".md", "w"))
  f:write(("# sqlmap, profile %s (%s)\n\n`%s`\n\n| target | request | took | injectable | 5xx |\n| --- | --- | --- | --- | --- |\n")
    :format(PROFILE, os.date("!%Y-%m-%dT%H:%M:%SZ"), table.concat(S.PROFILES[PROFILE], " ")))
  f:write(table.concat(summary, "\n"), "\n")
  f:close()
end

-- sqlmap finds nothing on target, and its run got to the end.
local function clean(target)
  local r = S.run(target, PROFILE)
  record(target, r)
  assert.is_true(r.finished, "sqlmap did not finish on " .. target.name .. ": " .. r.log .. "\n" .. r.text:sub(-2000))
  assert.same({}, r.injectable, "sqlmap reports an injection in " .. target.name .. " (" .. r.log .. ")")
  assert.equal(0, r.server_errors, "sqlmap provoked 5xx answers from " .. target.name .. " (" .. r.log .. ")")
  return r
end

describe("sqlmap (" .. PROFILE .. " profile)", function()
  teardown(write_summary)

  describe("the harness", function()
    local srv, db

    setup(function()
      db = "mercato_sqlmap_fixture_" .. crypto.hex(crypto.random(4))
      P.psql(P.db_url("postgres"), "CREATE DATABASE " .. db)
      srv = server.start { service = "product", scripts = "spec/fixtures/sqlmap/scripts", workers = 2,
        env = { DATABASE_URL = P.db_url(db) } }
      srv.url = "http://127.0.0.1:" .. srv.port
    end)
    teardown(function()
      if srv then srv:stop() end
      pcall(P.psql, P.db_url("postgres"), "DROP DATABASE IF EXISTS " .. db .. " WITH (FORCE)")
    end)

    it("finds the injection in a fixture route that concatenates its parameter into SQL", function()
      local r = S.run({ name = "fixture-vulnerable", url = srv.url .. "/vulnerable/items?name=apple" }, "quick")
      record({ name = "fixture-vulnerable (must be found)", url = srv.url .. "/vulnerable/items?name=apple" }, r)
      assert.is_true(#r.injectable > 0, "the harness missed a real injection:\n" .. r.text:sub(-3000))
      assert.matches("name", table.concat(r.injectable, "\n"))
      assert.is_true(r.server_errors > 0, "the harness missed the 500s the SQL errors caused")
    end)

    it("finds nothing in its parameterised twin", function()
      clean { name = "fixture-safe", url = srv.url .. "/safe/items?name=apple" }
    end)
  end)

  describe("the services", function()
    local w, buyer, admin, product, order, refresh

    setup(function()
      w = O.start { payment = true, notification = true }
      buyer = O.buyer(w)
      admin = O.admin(w)
      product = O.product(w, { stock = 50 })
      O.product(w, nil, product.seller)   -- a second one, so that a one-item page has a next cursor
      local res = O.req(w.order, "PUT", "/cart/items/" .. product.id, { quantity = 1 }, buyer.token)
      assert(res.status == 200, res.body)
      res = O.req(w.order, "POST", "/orders", { shipping_address = O.ADDRESS }, buyer.token, { ["Idempotency-Key"] = crypto.uuid4() })
      assert(res.status == 201, res.body)
      order = res.json
      refresh = U.login(w.user, buyer.email, "correct horse 1").refresh_token
    end)
    teardown(function() O.stop(w) end)

    -- Authorization for a party, with a token made just now (the full profile outlives the 15 minutes of one).
    local function bearer(party)
      if party == admin then return { Authorization = "Bearer " .. U.admin(w.user) } end
      return { Authorization = "Bearer " .. U.login(w.user, party.email, "correct horse 1").access_token }
    end
    local JSON = { ["Content-Type"] = "application/json" }
    local FORM = { ["Content-Type"] = "application/x-www-form-urlencoded" }

    it("finds nothing in the product search and list parameters (q, category, tag, prices, seller, sort, limit, cursor, ids)", function()
      local p = w.product.url
      clean { name = "products-search", url = p .. "/products?q=spec&category=tools&tag=red&min_price=100&max_price=5000&seller=" ..
        product.seller.sub .. "&sort=price&limit=5" }
      local first = O.req(w.product, "GET", "/products?limit=1")
      assert.is_string(first.json.next_cursor)
      clean { name = "products-cursor", url = p .. "/products?limit=1&cursor=" .. tostring(first.json.next_cursor) }
      clean { name = "products-ids", url = p .. "/products?ids=" .. product.id }
      clean { name = "product-by-id", url = p .. "/products/" .. product.id .. "*", headers = bearer(buyer) }
      clean { name = "categories", url = p .. "/categories?limit=5&cursor=x" }
    end)

    it("finds nothing in the auth endpoints: login, register, the password, refresh and client_credentials grants", function()
      local u = w.user.url
      clean { name = "auth-login", url = u .. "/auth/login", data = cjson.encode { email = buyer.email, password = "wrong horse 12" }, headers = JSON }
      clean { name = "auth-register", url = u .. "/auth/register",
        data = cjson.encode { email = U.email("sqlmap"), password = "correct horse 1", name = "Sql Map", role = "buyer" }, headers = JSON }
      clean { name = "oauth-password", url = u .. "/oauth/token", headers = FORM,
        data = "grant_type=password&username=" .. buyer.email .. "&password=wrong+horse+12" }
      clean { name = "oauth-refresh", url = u .. "/oauth/token", headers = FORM, data = "grant_type=refresh_token&refresh_token=" .. refresh }
      clean { name = "oauth-client-credentials", url = u .. "/oauth/token", headers = FORM,
        data = "grant_type=client_credentials&client_id=" .. U.CLIENT_ID .. "&client_secret=wrong&scope=inventory" }
    end)

    it("finds nothing in the user, order, payment and notification lists, with a token and without", function()
      clean { name = "users-admin", url = w.user.url .. "/users?limit=5&cursor=x&email=" .. buyer.email, headers = bearer(admin) }
      clean { name = "users-anonymous", url = w.user.url .. "/users?limit=5&cursor=x" }
      clean { name = "orders-buyer", url = w.order.url .. "/orders?limit=5&cursor=x", headers = bearer(buyer) }
      clean { name = "orders-admin", url = w.order.url .. "/orders?limit=5&status=created", headers = bearer(admin) }
      clean { name = "orders-anonymous", url = w.order.url .. "/orders?limit=5&cursor=x" }
      clean { name = "order-by-id", url = w.order.url .. "/orders/" .. order.id .. "*", headers = bearer(buyer) }
      clean { name = "payments-by-order", url = w.payment.url .. "/payments?order_id=" .. order.id .. "&limit=5", headers = bearer(buyer) }
      clean { name = "notifications-admin", url = w.notification.url .. "/notifications?recipient=" .. buyer.email ..
        "&status=sent&limit=5&cursor=x", headers = bearer(admin) }
      clean { name = "notifications-me", url = w.notification.url .. "/notifications/me?limit=5&cursor=x", headers = bearer(buyer) }
    end)
  end)
end)
