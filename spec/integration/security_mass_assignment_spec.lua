-- spec/integration/security_mass_assignment_spec.lua: no mass assignment (issue 18 item 3). For
-- luacheck: max line length 160
-- every write route (POST/PUT/PATCH of every routes.lua), every field a caller must not set is
-- sent beside a valid body by a caller who may make the call; the decision per field is declared
-- in spec/support/authz_policy.lua (FORBIDDEN: refused with 400 per CONTRACT §3, or ignored
-- where the route reads no document), and the stored resource is read back to prove the value
-- was not taken. A write route neither listed there nor in NO_DOCUMENT fails the spec.
local cjson = require "cjson.safe"
local crypto = require "crypto"
local policy = require "support.authz_policy"
local W = require "support.authz_world"
local O = require "support.order_helpers"
local U = require "support.user_helpers"

-- The hostile value of each forbidden field (w: the world, for other people's ids).
local function hostile(w, field)
  local v = ({
    id = "0190aaaa-bbbb-7ccc-8ddd-eeeeffff0000", seller_id = w.cast.other_seller.sub, user_id = w.cast.other_buyer.sub,
    role = "admin", status = "delivered", version = 999, created_at = "2000-01-01T00:00:00Z", reserved = 999,
    deleted_at = "2000-01-01T00:00:00Z", stock = 999, disabled = true, email = "evil@example.com", password_hash = "x",
    email_verified = true, name = "Evil name", product_count = 999, price_cents = 1, unit_price_cents = 1, currency = "usd",
    product_id = "0190aaaa-bbbb-7ccc-8ddd-eeeeffff0001", total_cents = 1, items = { { product_id = "x", quantity = 1 } },
    payment = { id = "x" }, shipped_at = "2000-01-01T00:00:00Z", provider_id = "pi_evil", refunded_cents = 999999,
    client_secret = "evil", payment_id = "0190aaaa-bbbb-7ccc-8ddd-eeeeffff0002", expires_at = "2000-01-01T00:00:00Z",
    committed = true, sub = "0190aaaa-bbbb-7ccc-8ddd-eeeeffff0003", reason = "cancelled_by_admin", amount_cents = 1,
    attempts = 0, recipient = "evil@example.com",
  })[field]
  assert(v ~= nil, "no hostile value for " .. field)
  return v
end

local function with(doc, field, value)
  local out = {}
  for k, v in pairs(doc) do out[k] = v end
  out[field] = value
  return out
end

local function count(srv, sql) return tonumber(O.psql(srv, sql)) end

-- Per route: how to attempt it (with one forbidden field added) and how to prove afterwards
-- that nothing was taken. attempt(w, field, value) → response, ctx; proof(w, ctx, field, value).
local CASES = {}

CASES["POST /auth/register"] = {
  attempt = function(w, f, v)
    local doc = { email = U.email("mass"), password = U.PASSWORD, name = "Mass" }
    return O.req(w.user, "POST", "/auth/register", with(doc, f, v)), doc
  end,
  proof = function(w, doc)   -- no account was made: the address is still free
    assert.equal(201, O.req(w.user, "POST", "/auth/register", doc).status)
  end,
}

CASES["PATCH /users/me"] = {
  attempt = function(w, f, v)
    local me = O.req(w.user, "GET", "/users/me", nil, w.cast.buyer.token).json
    return O.req(w.user, "PATCH", "/users/me", with({ name = "Patched " .. crypto.hex(crypto.random(3)) }, f, v), w.cast.buyer.token), me
  end,
  proof = function(w, before, f, v)
    local now = O.req(w.user, "GET", "/users/me", nil, w.cast.buyer.token).json
    assert.same(before, now)
    assert.not_equal(v, now[f])
    assert.equal(200, O.req(w.user, "POST", "/auth/login", { email = before.email, password = U.PASSWORD }).status)
  end,
}

CASES["PATCH /users/{id}"] = {
  attempt = function(w, f, v)
    local path = "/users/" .. w.cast.other_buyer.sub
    local before = O.req(w.user, "GET", path, nil, w.cast.admin.token).json
    return O.req(w.user, "PATCH", path, with({ disabled = false }, f, v), w.cast.admin.token), before
  end,
  proof = function(w, before, f, v)
    local now = O.req(w.user, "GET", "/users/" .. w.cast.other_buyer.sub, nil, w.cast.admin.token).json
    assert.same(before, now)
    assert.not_equal(v, now[f])
  end,
}

CASES["POST /products"] = {
  attempt = function(w, f, v)
    local name = "Mass " .. crypto.hex(crypto.random(4))
    return O.req(w.product, "POST", "/products", with({ name = name, price_cents = 100, currency = "eur", stock = 1 }, f, v),
      w.cast.seller.token), name
  end,
  proof = function(w, name) assert.equal(0, count(w.product, ("SELECT count(*) FROM products WHERE name = '%s'"):format(name))) end,
}

local function product_of(w) return O.product(w, nil, w.cast.seller) end

CASES["PATCH /products/{id}"] = {
  attempt = function(w, f, v)
    local p = product_of(w)
    return O.req(w.product, "PATCH", "/products/" .. p.id, with({ name = "Patched" }, f, v), w.cast.seller.token, { ["If-Match"] = "*" }), p
  end,
  proof = function(w, p, f, v)
    local now = O.req(w.product, "GET", "/products/" .. p.id).json
    assert.equal(p.name, now.name)
    assert.equal(p.seller_id, now.seller_id)
    assert.equal(p.version, now.version)
    assert.not_equal(v, now[f])
    assert.equal(p.stock, O.inventory(w, p.id).stock)
  end,
}

CASES["PUT /products/{id}/inventory"] = {
  attempt = function(w, f, v)
    local p = product_of(w)
    return O.req(w.product, "PUT", "/products/" .. p.id .. "/inventory", with({ stock = 7 }, f, v), w.cast.seller.token,
      { ["If-Match"] = "*" }), { p = p, inv = O.inventory(w, p.id) }
  end,
  proof = function(w, ctx, f, v)
    local now = O.inventory(w, ctx.p.id)
    assert.same(ctx.inv, now)
    assert.not_equal(v, now[f])
    assert.equal(ctx.p.seller_id, O.req(w.product, "GET", "/products/" .. ctx.p.id).json.seller_id)
  end,
}

CASES["POST /categories"] = {
  attempt = function(w, f, v)
    local name = "Mass " .. crypto.hex(crypto.random(4))
    return O.req(w.product, "POST", "/categories", with({ name = name }, f, v), w.cast.admin.token), name
  end,
  proof = function(w, name) assert.equal(0, count(w.product, ("SELECT count(*) FROM categories WHERE name = '%s'"):format(name))) end,
}

CASES["PATCH /categories/{id}"] = {
  attempt = function(w, f, v)
    local c = O.req(w.product, "POST", "/categories", { name = "Mass " .. crypto.hex(crypto.random(4)) }, w.cast.admin.token).json
    return O.req(w.product, "PATCH", "/categories/" .. c.id, with({ name = "Patched" }, f, v), w.cast.admin.token), c
  end,
  proof = function(w, c, f, v)
    local now = O.req(w.product, "GET", "/categories/" .. c.id).json
    assert.same(c, now)
    assert.not_equal(v, now[f])
  end,
}

CASES["PUT /cart/items/{product_id}"] = {
  attempt = function(w, f, v)
    local b = O.buyer(w)
    return O.req(w.order, "PUT", "/cart/items/" .. w.stock_product.id, with({ quantity = 1 }, f, v), b.token), b
  end,
  proof = function(w, b)   -- nothing was added, at any price
    local cart = O.req(w.order, "GET", "/cart", nil, b.token).json
    assert.equal(0, #cart.items)
  end,
}

CASES["POST /orders"] = {
  attempt = function(w, f, v)
    local b = O.buyer(w)
    assert.equal(200, O.req(w.order, "PUT", "/cart/items/" .. w.stock_product.id, { quantity = 1 }, b.token).status)
    return O.req(w.order, "POST", "/orders", with({ shipping_address = O.ADDRESS }, f, v), b.token), b
  end,
  proof = function(w, b)   -- no order, for anyone, and the cart is kept
    assert.equal(0, #O.req(w.order, "GET", "/orders", nil, b.token).json.items)
    assert.equal(0, count(w.order, ("SELECT count(*) FROM orders WHERE user_id IN ('%s', '%s')"):format(b.sub, w.cast.other_buyer.sub)))
    assert.equal(1, #O.req(w.order, "GET", "/cart", nil, b.token).json.items)
  end,
}

-- An order of a new buyer in state (created | paid | shipped), through the world's factory.
local function order_in(w, state) return (W.resource(w, "order", "buyer", "own", state, true)) end

-- The order is as it was: the refused action did not run, and no field was taken.
local function order_proof(w, ctx, f, v)
  local now = O.req(w.order, "GET", "/orders/" .. ctx.id, nil, w.cast.admin.token).json
  assert.equal(ctx.before.status, now.status)
  assert.equal(ctx.before.total_cents, now.total_cents)
  assert.equal(ctx.before.user_id, now.user_id)
  assert.not_equal(v, now[f])
  assert.is_true(now.refunded_cents == cjson.null or now.refunded_cents ~= hostile(w, "refunded_cents"))
end

local function order_case(path_suffix, state, body)
  return {
    attempt = function(w, f, v)
      local id = order_in(w, state)
      local before = O.req(w.order, "GET", "/orders/" .. id, nil, w.cast.admin.token).json
      return O.req(w.order, "POST", "/orders/" .. id .. path_suffix, with(body, f, v), w.cast.admin.token), { id = id, before = before }
    end,
    proof = order_proof,
  }
end

CASES["POST /orders/{id}/ship"] = order_case("/ship", "paid", { carrier = "DHL", tracking_number = "T1" })
CASES["POST /orders/{id}/cancel"] = order_case("/cancel", "created", {})
CASES["POST /orders/{id}/deliver"] = order_case("/deliver", "shipped", {})

CASES["POST /internal/reservations/{id}/commit"] = {
  attempt = function(w, f, v)
    local id = W.resource(w, "reservation", "svc_scope", "own", nil, true)
    return O.req(w.product, "POST", "/internal/reservations/" .. id .. "/commit", { [f] = v }, W.service_token(w, { "inventory" })), id
  end,
  proof = function(w, id)
    assert.equal("reserved", O.psql(w.product, ("SELECT status FROM reservations WHERE id = '%s'"):format(id)))
  end,
}

CASES["POST /notifications/{id}/retry"] = {
  attempt = function(w, f, v)
    local id = W.resource(w, "notification", "buyer", "other", "failed", true)
    return O.req(w.notification, "POST", "/notifications/" .. id .. "/retry", { [f] = v }, w.cast.admin.token), id
  end,
  proof = function(w, id, f, v)
    local now = O.req(w.notification, "GET", "/notifications/" .. id, nil, w.cast.admin.token).json
    assert.equal("failed", now.status)
    assert.not_equal(v, now[f])
  end,
}

local function payments_token(w) return W.service_token(w, { "payments" }) end

CASES["POST /internal/payments"] = {
  attempt = function(w, f, v)
    local doc = { order_id = crypto.uuid4(), amount_cents = 1000, currency = "eur", customer_email = "mass@example.com" }
    return O.req(w.payment, "POST", "/internal/payments", with(doc, f, v), payments_token(w)), doc
  end,
  proof = function(w, doc)   -- the order still has no payment: a valid create makes the first one
    local res = O.req(w.payment, "POST", "/internal/payments", doc, payments_token(w))
    assert.equal(201, res.status)
    assert.equal("0", O.psql(w.payment, ("SELECT refunded_cents FROM payments WHERE id = '%s'"):format(res.json.id)))
  end,
}

CASES["POST /internal/payments/{id}/cancel"] = {
  attempt = function(w, f, v)
    local pid = W.resource(w, "payment", "buyer", "own", nil, true)
    local before = O.req(w.payment, "GET", "/payments/" .. pid, nil, w.cast.admin.token).json
    return O.req(w.payment, "POST", "/internal/payments/" .. pid .. "/cancel", { [f] = v }, payments_token(w)), before
  end,
  proof = function(w, before)
    local now = O.req(w.payment, "GET", "/payments/" .. before.id, nil, w.cast.admin.token).json
    assert.equal(before.status, now.status)
    assert.equal(before.amount_cents, now.amount_cents)
  end,
}

CASES["POST /payments/{id}/refunds"] = {
  attempt = function(w, f, v)
    local pid = W.resource(w, "payment", "buyer", "own", "paid", true)
    return O.req(w.payment, "POST", "/payments/" .. pid .. "/refunds", with({ amount_cents = 100 }, f, v), w.cast.admin.token), pid
  end,
  proof = function(w, pid)
    local now = O.req(w.payment, "GET", "/payments/" .. pid, nil, w.cast.admin.token).json
    assert.equal("succeeded", now.status)
    assert.equal(0, #now.refunds)
    assert.equal("0", O.psql(w.payment, ("SELECT refunded_cents FROM payments WHERE id = '%s'"):format(pid)))
  end,
}

CASES["POST /internal/reservations"] = {
  attempt = function(w, f, v)
    local doc = { reservation_id = crypto.uuid4(), items = { { product_id = w.stock_product.id, quantity = 1 } } }
    return O.req(w.product, "POST", "/internal/reservations", with(doc, f, v), W.service_token(w, { "inventory" })), doc
  end,
  proof = function(w, doc)   -- no such reservation: a valid one is new (201), not a replay
    assert.equal(201, O.req(w.product, "POST", "/internal/reservations", doc, W.service_token(w, { "inventory" })).status)
  end,
}

CASES["POST /oauth/token"] = {
  attempt = function(w, f, v)
    local b = w.cast.buyer
    return U.post_form(w.user, "/oauth/token", { grant_type = "password", username = b.email, password = U.PASSWORD, [f] = v }), b
  end,
  proof = function(_, b, f, v, res)
    local claims = U.claims(res.json.access_token)
    assert.equal("buyer", claims.role)
    assert.equal(b.sub, claims.sub)
    assert.not_equal(v, claims[f])
  end,
}

describe("Mass assignment", function()
  it("is declared for every write route of every routes.lua (fields refused or ignored, or no document)", function()
    local missing = {}
    for _, r in ipairs(policy.routes()) do
      if r.method == "POST" or r.method == "PUT" or r.method == "PATCH" then
        local declared = policy.FORBIDDEN[r.key] or policy.NO_DOCUMENT[r.key]
        if not declared or (policy.FORBIDDEN[r.key] and not CASES[r.key]) then missing[#missing + 1] = r.key end
      end
    end
    assert.same({}, missing)
  end)

  describe("against the real services", function()
    local w
    setup(function() w = W.start() end)
    teardown(function() W.stop(w) end)

    local keys = {}
    for k in pairs(policy.FORBIDDEN) do keys[#keys + 1] = k end
    table.sort(keys)
    for _, key in ipairs(keys) do
      local decl = policy.FORBIDDEN[key]
      local mode = decl.refused and "refused" or "ignored"
      it(key .. ": " .. table.concat(decl[mode], ", ") .. " are " .. mode .. " and never stored", function()
        local c = CASES[key]
        local p = policy.TABLE[key]
        for _, f in ipairs(decl[mode]) do
          local v = hostile(w, f)
          local res, ctx = c.attempt(w, f, v)
          local want = mode == "refused" and 400 or p.ok
          assert.equal(want, res.status, key .. " with " .. f .. ": " .. tostring(res.body))
          if mode == "refused" then assert.matches(f, res.body, 1, true) end
          c.proof(w, ctx, f, v, res)
        end
      end)
    end
  end)
end)
