-- spec/support/authz_policy.lua: who may call what — the declared policy the authorization
-- luacheck: max line length 150
-- matrix (spec/integration/security_authz_matrix_spec.lua) holds the services to. The gates come
-- from each route's own declaration in routes.lua (auth, roles, scope), read by loading the
-- route tables the way the host does; this file adds only what routes.lua cannot say: which
-- resource a route's path names, who owns it, and what the handler does with a caller who passed
-- the gates (the ownership table). Expected statuses are derived here, never recorded.
--
--   local policy = require "support.authz_policy"
--   for _, r in ipairs(policy.routes()) do ... policy.expected(r, "buyer", rel) ... end
local M = {}

M.SERVICES = { "user", "product", "order", "payment", "notification" }

-- The callers of the matrix. A service token is a client_credentials token of the internal
-- client: with the route's scope, or with every scope of the client but that one.
M.ROLES = { "anonymous", "buyer", "seller", "other_seller", "admin", "svc_scope", "svc_noscope" }

-- The role claim each caller's token carries (anonymous has none).
M.CLAIM_ROLE = { buyer = "buyer", seller = "seller", other_seller = "seller", admin = "admin",
  svc_scope = "service", svc_noscope = "service" }

-- Which callers can own a resource of a kind ("own" cells exist only for them). Kinds without
-- an owner have one column (own = "the resource", other = not applicable).
M.OWNERS = {
  user = { buyer = true, seller = true, other_seller = true, admin = true },
  product = { seller = true, other_seller = true, admin = true },
  order = { buyer = true, seller = true, other_seller = true, admin = true },
  payment = { buyer = true, seller = true, other_seller = true, admin = true },
  notification = { buyer = true, seller = true, other_seller = true },
  cart = { buyer = true, seller = true, other_seller = true, admin = true },   -- no path names one: see `list`
}

-- The ownership table: per route, the resource its path names (kind; nil = none), the state it
-- must be in for the call to succeed, the success status, and the rule the handler applies to a
-- caller who passed the gates of routes.lua:
--   open        anyone who passed the gates succeeds (public routes, admin- or scope-only routes)
--   user        a user account (buyer, seller, admin) acting on itself; a service token is not one: 403
--   owner_404   the owner or an admin; anyone else 404, as if absent (CONTRACT §3: private resource)
--   owner_403   the owner or an admin; anyone else 403 (products are public: hiding them protects nothing)
--   fulfiller   an admin or the seller of every item; the order's buyer 403; anyone else 404
--   unsigned    the Stripe webhook: its signature is its authentication, a bearer token is no
--               substitute — an unsigned delivery is 400 for every caller
-- caller = "fresh": the call changes the caller's own session or credentials, so each cell that
-- should succeed is made by a new account of that role (the matrix's cast keeps its tokens).
-- list = kind: a list whose answer must never hold another user's resource of that kind (for
-- the cart, whose path names nobody: the product only the other buyer's cart holds).
M.TABLE = {
  ["POST /auth/register"] = { ok = 201, rule = "open" },
  ["POST /auth/login"] = { ok = 200, rule = "open" },
  ["POST /auth/logout"] = { ok = 204, rule = "user", caller = "fresh" },
  ["POST /oauth/token"] = { ok = 200, rule = "open" },
  ["POST /oauth/revoke"] = { ok = 200, rule = "open" },
  ["GET /.well-known/jwks.json"] = { ok = 200, rule = "open" },
  ["GET /users/me"] = { ok = 200, rule = "user" },
  ["PATCH /users/me"] = { ok = 200, rule = "user" },
  ["POST /users/me/password"] = { ok = 204, rule = "user", caller = "fresh" },
  ["GET /users"] = { ok = 200, rule = "open" },
  ["GET /users/{id}"] = { ok = 200, rule = "open", kind = "user" },
  ["PATCH /users/{id}"] = { ok = 200, rule = "open", kind = "user" },
  ["GET /internal/users/{id}"] = { ok = 200, rule = "open", kind = "user" },

  ["GET /products"] = { ok = 200, rule = "open" },
  ["POST /products"] = { ok = 201, rule = "open" },
  ["GET /products/{id}"] = { ok = 200, rule = "open", kind = "product" },
  ["PATCH /products/{id}"] = { ok = 200, rule = "owner_403", kind = "product" },
  ["DELETE /products/{id}"] = { ok = 204, rule = "owner_403", kind = "product" },
  ["GET /categories"] = { ok = 200, rule = "open" },
  ["POST /categories"] = { ok = 201, rule = "open" },
  ["GET /categories/{id}"] = { ok = 200, rule = "open", kind = "category" },
  ["PATCH /categories/{id}"] = { ok = 200, rule = "open", kind = "category" },
  ["DELETE /categories/{id}"] = { ok = 204, rule = "open", kind = "category" },
  ["GET /tags"] = { ok = 200, rule = "open" },
  ["GET /products/{id}/inventory"] = { ok = 200, rule = "open", kind = "product" },
  ["PUT /products/{id}/inventory"] = { ok = 200, rule = "owner_403", kind = "product" },
  ["POST /internal/reservations"] = { ok = 201, rule = "open" },
  ["POST /internal/reservations/{id}/commit"] = { ok = 200, rule = "open", kind = "reservation" },
  ["DELETE /internal/reservations/{id}"] = { ok = 204, rule = "open", kind = "reservation" },
  ["POST /products/{id}/images"] = { ok = 201, rule = "owner_403", kind = "product" },
  ["GET /images/{key*}"] = { ok = 200, rule = "open", kind = "image" },

  ["GET /cart"] = { ok = 200, rule = "user", list = "cart" },
  ["PUT /cart/items/{product_id}"] = { ok = 200, rule = "user", kind = "cart_item" },
  ["DELETE /cart/items/{product_id}"] = { ok = 204, rule = "user", kind = "cart_item" },
  ["DELETE /cart"] = { ok = 204, rule = "user" },
  ["POST /orders"] = { ok = 201, rule = "user" },
  ["GET /orders"] = { ok = 200, rule = "user", list = "order" },
  ["GET /orders/{id}"] = { ok = 200, rule = "owner_404", kind = "order" },
  ["POST /orders/{id}/cancel"] = { ok = 200, rule = "owner_404", kind = "order" },
  ["POST /orders/{id}/ship"] = { ok = 200, rule = "fulfiller", kind = "order", state = "paid" },
  ["POST /orders/{id}/deliver"] = { ok = 200, rule = "fulfiller", kind = "order", state = "shipped" },

  ["POST /internal/payments"] = { ok = 201, rule = "open" },
  ["POST /internal/payments/{id}/cancel"] = { ok = 200, rule = "open", kind = "payment" },
  ["POST /internal/payments/{id}/refunds"] = { ok = 201, rule = "open", kind = "payment", state = "paid" },
  ["GET /payments"] = { ok = 200, rule = "user", list = "payment" },
  ["POST /payments/reconcile"] = { ok = 200, rule = "open" },
  ["GET /payments/{id}"] = { ok = 200, rule = "owner_404", kind = "payment" },
  ["POST /payments/{id}/refunds"] = { ok = 201, rule = "open", kind = "payment", state = "paid" },
  ["POST /webhooks/stripe"] = { ok = 400, rule = "unsigned" },

  ["GET /notifications"] = { ok = 200, rule = "open" },
  ["GET /notifications/me"] = { ok = 200, rule = "user", list = "notification" },
  ["GET /notifications/{id}"] = { ok = 200, rule = "owner_404", kind = "notification" },
  ["POST /notifications/{id}/retry"] = { ok = 200, rule = "open", kind = "notification", state = "failed" },
}

-- Every route of every service's routes.lua, loaded as the host loads it (scripts/ on the path):
-- { service, method, path, key = "METHOD path", auth, roles = {set}, scope }.
function M.routes()
  local saved = package.path
  package.path = "scripts/?.lua;" .. package.path
  local out = {}
  for _, service in ipairs(M.SERVICES) do
    local list = require("services." .. service .. ".routes")
    for _, r in ipairs(list) do
      local roles
      if r.roles then
        roles = {}
        for _, name in ipairs(r.roles) do roles[name] = true end
      end
      out[#out + 1] = { service = service, method = r[1], path = r[2], key = r[1] .. " " .. r[2],
        auth = r.auth, roles = roles, scope = r.scope }
    end
  end
  package.path = saved
  return out
end

-- Whether the route needs a token at all (routes.lua: auth = "required", roles or scope).
function M.needs_token(route) return route.auth == "required" or route.roles ~= nil or route.scope ~= nil end

-- Whether the cell exists: "other" only for kinds with an owner, "own" only for callers who
-- can own one.
function M.applies(route, role, which)
  local kind = M.TABLE[route.key].kind
  local owners = kind and M.OWNERS[kind]
  if not owners then return which == "own" end
  if which == "own" then return owners[role] == true end
  return true
end

-- The caller's relation to the resource of a cell: it owns its own ("own"), and the seller
-- fulfils every order (the world fills each one with that seller's product).
function M.relation(kind, role, which)
  return { owner = which == "own" and M.OWNERS[kind or ""] ~= nil, fulfiller = kind == "order" and role == "seller" }
end

-- The expected status of one cell; rel = M.relation(...) of the resource the cell uses.
function M.expected(route, role, rel)
  local p = M.TABLE[route.key]
  if p.rule == "unsigned" then return p.ok end
  -- the gates of routes.lua, in the host's order: a token, then its scope, then its role
  if M.needs_token(route) and role == "anonymous" then return 401 end
  local claim = M.CLAIM_ROLE[role]
  if route.scope and role ~= "svc_scope" then return 403 end
  if route.roles and not route.roles[claim] then return 403 end
  -- the handler's own rule (the ownership table)
  local rule = p.rule
  if rule == "open" then return p.ok end
  local user = claim == "buyer" or claim == "seller" or claim == "admin"
  if rule == "user" then return user and p.ok or 403 end
  if not user then return 403 end
  local admin = claim == "admin"
  if rule == "owner_404" then return (admin or rel.owner) and p.ok or 404 end
  if rule == "owner_403" then return (admin or rel.owner) and p.ok or 403 end
  if rule == "fulfiller" then
    if admin or (claim == "seller" and rel.fulfiller) then return p.ok end
    return rel.owner and 403 or 404
  end
  error("authz_policy: " .. route.key .. ": unknown rule " .. tostring(rule))
end

-- Mass assignment: per write route, the fields a caller must never set, each with the decision
-- taken from the contract. "refused" = 400 (CONTRACT §3: unknown/forbidden fields are 400, no
-- mass assignment) — JSON documents and the actions that take none alike (an action's body may
-- be empty or {}, nothing else) — and the stored resource shows the value was not taken.
-- "ignored" = a form whose extra parameters RFC 6749 §3.2 tells the server to ignore: the call
-- succeeds and the token shows the value was not taken.
M.FORBIDDEN = {
  ["POST /auth/register"] = { refused = { "id", "role", "disabled", "created_at", "password_hash", "email_verified" } },
  ["PATCH /users/me"] = { refused = { "id", "email", "role", "disabled", "created_at", "password_hash" } },
  ["PATCH /users/{id}"] = { refused = { "id", "email", "password_hash", "created_at", "name" } },
  ["POST /products"] = { refused = { "id", "seller_id", "status", "version", "created_at", "reserved", "deleted_at" } },
  ["PATCH /products/{id}"] = { refused = { "id", "seller_id", "status", "version", "created_at", "stock", "reserved" } },
  ["PUT /products/{id}/inventory"] = { refused = { "reserved", "version", "product_id", "seller_id" } },
  ["POST /categories"] = { refused = { "id", "created_at", "product_count" } },
  ["PATCH /categories/{id}"] = { refused = { "id", "created_at", "product_count" } },
  ["PUT /cart/items/{product_id}"] = { refused = { "price_cents", "unit_price_cents", "currency", "user_id", "product_id" } },
  ["POST /orders"] = { refused = { "id", "user_id", "status", "total_cents", "currency", "items", "payment", "created_at" } },
  ["POST /orders/{id}/ship"] = { refused = { "status", "user_id", "total_cents", "shipped_at" } },
  ["POST /orders/{id}/cancel"] = { refused = { "status", "total_cents", "refunded_cents", "reason" } },
  ["POST /orders/{id}/deliver"] = { refused = { "status", "total_cents" } },
  ["POST /internal/reservations/{id}/commit"] = { refused = { "status", "items" } },
  ["POST /internal/payments/{id}/cancel"] = { refused = { "status", "amount_cents" } },
  ["POST /notifications/{id}/retry"] = { refused = { "status", "attempts", "recipient" } },
  ["POST /internal/payments"] = { refused = { "id", "status", "provider_id", "refunded_cents", "client_secret" } },
  ["POST /payments/{id}/refunds"] = { refused = { "id", "status", "payment_id", "refunded_cents", "provider_id" } },
  ["POST /internal/reservations"] = { refused = { "status", "expires_at", "committed" } },
  ["POST /oauth/token"] = { ignored = { "role", "sub" } },
}

-- The write routes whose body is no resource document, so no field of one can be assigned
-- through them (each still refuses unknown fields where it reads JSON), and why.
M.NO_DOCUMENT = {
  ["POST /auth/login"] = "credentials only: the token's claims come from the stored account",
  ["POST /auth/logout"] = "names the refresh token to revoke; the caller's own (checked)",
  ["POST /users/me/password"] = "current and new password only",
  ["POST /oauth/revoke"] = "names a token to revoke (RFC 7009)",
  ["POST /internal/payments/{id}/refunds"] = "the handler of POST /payments/{id}/refunds, whose fields are checked there",
  ["POST /payments/reconcile"] = "takes nothing but {} (lib.validate with an empty schema)",
  ["POST /products/{id}/images"] = "raw image bytes; the key is generated, never taken from the client",
  ["POST /webhooks/stripe"] = "Stripe's signed event; only signature-verified bytes are read",
}

return M
