-- spec/support/authz_world.lua: the people and things the authorization matrix calls with and
-- luacheck: max line length 160
-- on (spec/integration/security_authz_matrix_spec.lua). The five services run for real
-- (support.order_helpers with payment and notification); every token comes from the real user
-- service — register + login for people, client_credentials for service tokens — and every
-- resource is made through the services' own APIs (a notification's failed state, which only
-- an SMTP outage makes, is the one thing set in its database).
--
--   local W = require "support.authz_world"
--   local w = W.start()                 -- W.stop(w) in teardown
--   local id = W.resource(w, "order", "buyer", "other", "paid", true)
--   local res = W.call(w, route, W.token(w, "buyer", route), id)
local crypto = require "crypto"
local O = require "support.order_helpers"
local policy = require "support.authz_policy"
local U = require "support.user_helpers"

local M = {}

-- A 1×1 PNG (the upload route checks the magic bytes).
M.PNG = "\137PNG\r\n\26\n\0\0\0\rIHDR\0\0\0\1\0\0\0\1\8\6\0\0\0\31\21\196\137\0\0\0\rIDATx\218c\248\15\0\0\1\1\0\5\24\216N\0\0\0\0IEND\174B`\130"

local SCOPES = { "inventory", "payments", "users" }

-- A client_credentials token of the internal client with exactly these scopes.
function M.service_token(w, scopes)
  local res = U.post_form(w.user, "/oauth/token", { grant_type = "client_credentials", client_id = U.CLIENT_ID,
    client_secret = U.CLIENT_SECRET, scope = table.concat(scopes, " ") })
  assert(res.status == 200, "client_credentials: " .. res.status .. " " .. tostring(res.body))
  return res.json.access_token
end

-- A logged-in admin that is not the bootstrap one: a new account promoted by it.
local function fresh_admin(w)
  local p = O.party(w, "buyer")
  local res = O.req(w.user, "PATCH", "/users/" .. p.sub, { role = "admin" }, w.cast.admin.token)
  assert(res.status == 200, "promote: " .. res.status .. " " .. tostring(res.body))
  local s = U.login(w.user, p.email)
  return { token = s.access_token, sub = p.sub, email = p.email }
end

-- A new account for a caller role (callers who change their own session or password).
local function fresh_party(w, role)
  if role == "admin" then return fresh_admin(w) end
  return O.party(w, (role == "seller" or role == "other_seller") and "seller" or "buyer")
end

function M.start()
  local w = O.start { payment = true, notification = true }
  local bootstrap = U.login(w.user, U.ADMIN_EMAIL, U.ADMIN_PASSWORD)
  w.cast = {
    buyer = O.party(w, "buyer"), other_buyer = O.party(w, "buyer"),
    seller = O.party(w, "seller"), other_seller = O.party(w, "seller"),
    admin = { token = bootstrap.access_token, sub = U.claims(bootstrap.access_token).sub, email = U.ADMIN_EMAIL },
  }
  w.svc_all = M.service_token(w, SCOPES)
  -- the stock every order draws on: a product of the seller (so the seller fulfils every order)
  w.stock_product = O.product(w, { stock = 1000000 }, w.cast.seller)
  w.shared = {}
  return w
end

function M.stop(w) return O.stop(w) end

-- The token of a caller for a route (nil for anonymous).
function M.token(w, role, route, party)
  if role == "anonymous" then return nil end
  if role == "svc_scope" or role == "svc_noscope" then
    if not route.scope then return role == "svc_scope" and w.svc_all or M.service_token(w, { "users" }) end
    local others = {}
    for _, s in ipairs(SCOPES) do if s ~= route.scope then others[#others + 1] = s end end
    return M.service_token(w, role == "svc_scope" and { route.scope } or others)
  end
  return (party or w.cast[role]).token
end

-- ---- resources ----------------------------------------------------------------------------

-- Wait until an order reaches status (its payment's webhook and event travel asynchronously).
local function order_reaches(w, id, status, token)
  return O.eventually(function()
    local r = O.req(w.order, "GET", "/orders/" .. id, nil, token)
    return r.status == 200 and r.json.status == status
  end, 30)
end

-- A new order of party: one of the seller's stock product; state created | paid | shipped.
local function new_order(w, party, state)
  local r = O.req(w.order, "PUT", "/cart/items/" .. w.stock_product.id, { quantity = 1 }, party.token)
  assert(r.status == 200, "cart: " .. r.status .. " " .. tostring(r.body))
  r = O.req(w.order, "POST", "/orders", { shipping_address = O.ADDRESS }, party.token)
  assert(r.status == 201, "checkout: " .. r.status .. " " .. tostring(r.body))
  local order = r.json
  if state == "paid" or state == "shipped" then
    O.pay(w, order)
    assert(order_reaches(w, order.id, "paid", w.cast.admin.token), "order " .. order.id .. " was never paid")
  end
  if state == "shipped" then
    r = O.req(w.order, "POST", "/orders/" .. order.id .. "/ship", { carrier = "DHL", tracking_number = "T1" }, w.cast.admin.token)
    assert(r.status == 200, "ship: " .. r.status .. " " .. tostring(r.body))
  end
  return order
end

-- A delivery record of party's own: the welcome e-mail of its registration.
local function own_notification(w, party)
  local id = O.eventually(function()
    local r = O.req(w.notification, "GET", "/notifications/me", nil, party.token)
    return r.status == 200 and r.json.items[1] and r.json.items[1].id
  end, 30)
  return assert(id, "no notification for " .. party.email)
end

local MAKE = {
  user = function(_, party) return party.sub end,
  product = function(w, party) return O.product(w, nil, party).id end,
  order = function(w, party, state) return new_order(w, party, state).id end,
  payment = function(w, party, state) return new_order(w, party, state).payment.id end,
  notification = function(w, party, state)
    local id = own_notification(w, party)
    if state == "failed" then
      O.psql(w.notification, ("UPDATE notifications SET status = 'failed' WHERE id = '%s'"):format(id))
    end
    return id
  end,
  category = function(w)
    local r = O.req(w.product, "POST", "/categories", { name = "Authz " .. crypto.hex(crypto.random(4)) }, w.cast.admin.token)
    assert(r.status == 201, "category: " .. r.status .. " " .. tostring(r.body))
    return r.json.id
  end,
  reservation = function(w)
    local id = crypto.uuid4()
    local r = O.req(w.product, "POST", "/internal/reservations", { reservation_id = id,
      items = { { product_id = w.stock_product.id, quantity = 1 } } }, M.service_token(w, { "inventory" }))
    assert(r.status == 201, "reservation: " .. r.status .. " " .. tostring(r.body))
    return id
  end,
  image = function(w)
    local r = O.req(w.product, "POST", "/products/" .. w.stock_product.id .. "/images", M.PNG, w.cast.seller.token,
      { ["Content-Type"] = "image/png" })
    assert(r.status == 201, "image: " .. r.status .. " " .. tostring(r.body))
    return r.json.key
  end,
  cart_item = function(w) return w.stock_product.id end,
  -- a product only this party's cart holds (put again each time: a checkout empties carts)
  cart = function(w, party)
    w.cart_marker = w.cart_marker or O.product(w, nil, w.cast.other_seller).id
    local r = O.req(w.order, "PUT", "/cart/items/" .. w.cart_marker, { quantity = 1 }, party.token)
    assert(r.status == 200, "cart marker: " .. r.status .. " " .. tostring(r.body))
    return w.cart_marker
  end,
}

-- The owner of the resource a cell uses: the caller itself ("own"), else another user — a
-- seller's product for product routes (the other seller's when the caller is the seller), the
-- other buyer's order, payment, e-mail or account.
local function owner_of(w, kind, role, which)
  if which == "own" then return w.cast[role] end
  if kind == "product" then return role == "seller" and w.cast.other_seller or w.cast.seller end
  return w.cast.other_buyer
end

-- The id (or key) a cell's path names. fresh: a resource of its own (a call expected to change
-- it); else one shared by the cells expected to be refused (a refusal that changed it anyway
-- fails its own cell).
function M.resource(w, kind, role, which, state, fresh)
  local owner = policy.OWNERS[kind] == nil and { email = "-" } or owner_of(w, kind, role, which)
  local key = table.concat({ kind, owner.email or "-", state or "" }, "|")
  if not fresh and w.shared[key] then return w.shared[key] end
  local id = MAKE[kind](w, owner, state)
  if not fresh then w.shared[key] = id end
  return id
end

-- ---- requests -----------------------------------------------------------------------------

local function uid() return crypto.hex(crypto.random(5)) end

-- Per route: the path (params filled from the resource id) and a valid body, as a function
-- of the world, the resource id and the caller. Every route the policy describes has one.
M.BUILD = {
  ["POST /auth/register"] = function() return nil, { email = U.email("authz"), password = U.PASSWORD, name = "Authz" } end,
  ["POST /auth/login"] = function(w) return nil, { email = w.cast.other_buyer.email, password = U.PASSWORD } end,
  ["POST /auth/logout"] = function() return nil, nil end,
  ["POST /oauth/token"] = function() return nil, { form = { grant_type = "client_credentials", client_id = U.CLIENT_ID,
    client_secret = U.CLIENT_SECRET, scope = "users" } } end,
  ["POST /oauth/revoke"] = function() return nil, { form = { token = "not-a-token-" .. uid() } } end,
  ["GET /.well-known/jwks.json"] = function() end,
  ["GET /users/me"] = function() end,
  ["PATCH /users/me"] = function() return nil, { name = "Renamed " .. uid() } end,
  ["POST /users/me/password"] = function() return nil, { current_password = U.PASSWORD, new_password = U.PASSWORD .. "2" } end,
  ["GET /users"] = function() end,
  ["GET /users/{id}"] = function() end,
  ["PATCH /users/{id}"] = function() return nil, { disabled = false } end,
  ["GET /internal/users/{id}"] = function() end,

  ["GET /products"] = function() end,
  ["POST /products"] = function() return nil, { name = "Authz " .. uid(), price_cents = 100, currency = "eur", stock = 1 } end,
  ["GET /products/{id}"] = function() end,
  ["PATCH /products/{id}"] = function() return nil, { name = "Renamed " .. uid() }, { ["If-Match"] = "*" } end,
  ["DELETE /products/{id}"] = function() end,
  ["GET /categories"] = function() end,
  ["POST /categories"] = function() return nil, { name = "Authz " .. uid() } end,
  ["GET /categories/{id}"] = function() end,
  ["PATCH /categories/{id}"] = function() return nil, { name = "Renamed " .. uid() } end,
  ["DELETE /categories/{id}"] = function() end,
  ["GET /tags"] = function() end,
  ["GET /products/{id}/inventory"] = function() end,
  ["PUT /products/{id}/inventory"] = function() return nil, { stock = 7 }, { ["If-Match"] = "*" } end,
  ["POST /internal/reservations"] = function(w) return nil, { reservation_id = crypto.uuid4(),
    items = { { product_id = w.stock_product.id, quantity = 1 } } } end,
  ["POST /internal/reservations/{id}/commit"] = function() end,
  ["DELETE /internal/reservations/{id}"] = function() end,
  ["POST /products/{id}/images"] = function() return nil, { raw = M.PNG, type = "image/png" } end,
  ["GET /images/{key*}"] = function() end,

  ["GET /cart"] = function() end,
  ["PUT /cart/items/{product_id}"] = function() return nil, { quantity = 1 } end,
  ["DELETE /cart/items/{product_id}"] = function() end,
  ["DELETE /cart"] = function() end,
  ["POST /orders"] = function() return nil, { shipping_address = O.ADDRESS } end,
  ["GET /orders"] = function() end,
  ["GET /orders/{id}"] = function() end,
  ["POST /orders/{id}/cancel"] = function() end,
  ["POST /orders/{id}/ship"] = function() return nil, { carrier = "DHL", tracking_number = "T-" .. uid() } end,
  ["POST /orders/{id}/deliver"] = function() end,

  ["POST /internal/payments"] = function() return nil, { order_id = crypto.uuid4(), amount_cents = 1000, currency = "eur",
    customer_email = "authz@example.com" } end,
  ["POST /internal/payments/{id}/cancel"] = function() end,
  ["POST /internal/payments/{id}/refunds"] = function() return nil, { amount_cents = 100 } end,
  ["GET /payments"] = function() end,
  ["POST /payments/reconcile"] = function() end,
  ["GET /payments/{id}"] = function() end,
  ["POST /payments/{id}/refunds"] = function() return nil, { amount_cents = 100 } end,
  ["POST /webhooks/stripe"] = function() return nil, { id = "evt_" .. uid(), type = "payment_intent.succeeded",
    data = { object = { id = "pi_" .. uid() } } } end,

  ["GET /notifications"] = function() end,
  ["GET /notifications/me"] = function() end,
  ["GET /notifications/{id}"] = function() end,
  ["POST /notifications/{id}/retry"] = function() end,
}

-- What a call needs beforehand that is no part of authorization: checkout needs a cart with
-- something in it (PUT as the same caller; a caller refused there is refused by checkout too).
M.PREPARE = {
  ["POST /orders"] = function(w, token)
    if token then O.req(w.order, "PUT", "/cart/items/" .. w.stock_product.id, { quantity = 1 }, token) end
  end,
}

-- The service a route belongs to, as the world names it.
local function server_of(w, route) return w[route.service] end

-- Send one cell's request. → the response, and the request as sent (for the report).
function M.call(w, route, token, id)
  local path = route.path:gsub("{[%w_]+%*?}", function() return id end)
  if M.PREPARE[route.key] then M.PREPARE[route.key](w, token) end
  local _, body, headers = M.BUILD[route.key](w)
  local h = {}
  for k, v in pairs(headers or {}) do h[k] = v end
  local doc
  if type(body) == "table" and body.form then
    h["Content-Type"] = "application/x-www-form-urlencoded"
    local parts = {}
    for k, v in pairs(body.form) do parts[#parts + 1] = k .. "=" .. tostring(v):gsub("[^%w%-%._~]", function(c)
      return ("%%%02X"):format(c:byte()) end) end
    doc = table.concat(parts, "&")
  elseif type(body) == "table" and body.raw then
    h["Content-Type"] = body.type
    doc = body.raw
  else
    doc = body
  end
  return O.req(server_of(w, route), route.method, path, doc, token, h), path
end

M.fresh_party = fresh_party
M.owner_of = owner_of

return M
