-- Token revocation across services (issue 18): a user the admin disables or demotes is stopped
-- by every service within 5 s, though their access token has 15 minutes left — the user
-- service writes a revocation record to Redis, each host checks it with the token in C
-- (host/revocation.c, cached per thread for a second). A real user service, and a real product
-- service verifying tokens through the user service's JWKS.
local socket = require "socket"
local P = require "support.product_helpers"
local U = require "support.user_helpers"

-- Poll fn() (a status) every 100 ms until it equals want or `within` seconds pass; returns the
-- last status and the seconds it took.
local function eventually(want, within, fn)
  local t0 = socket.gettime()
  local st
  repeat
    st = fn()
    if st == want then break end
    socket.sleep(0.1)
  until socket.gettime() - t0 > within
  return st, socket.gettime() - t0
end

describe("token revocation", function()
  local users, products, admin

  setup(function()
    users = U.start()
    admin = U.admin(users)
    products = P.start { env = { JWT_PUBLIC_KEY_FILE = false, JWKS_URL = users.url .. "/.well-known/jwks.json" } }
  end)
  teardown(function()
    P.stop(products)
    assert.equal(0, U.stop(users))
  end)

  local function patch_user(id, doc) return U.patch_json(users, "/users/" .. id, doc, { token = admin }) end
  -- POST /products {} as token: 422 once auth passed (the body is invalid), else 401/403.
  local function create_product(token) return P.post(products, "/products", {}, { token = token }).status end
  local function create_category(token) return P.post(products, "/categories", {}, { token = token }).status end
  -- Whether a status says the token and role checks passed (the empty body then fails: 400/422).
  local function past_auth(st) return st == 400 or st == 422 end

  -- A second admin (promoted by the bootstrap admin), logged in after the promotion.
  local function new_admin()
    local s = U.session(users, { role = "seller" })
    assert.equal(200, patch_user(s.user.id, { role = "admin" }).status)
    local t = U.login(users, s.email, s.password)
    assert.equal("admin", U.claims(t.access_token).role)
    return s, t.access_token
  end

  it("refuses a disabled seller's unexpired token on the product service within 5 s (401 problem)", function()
    local s = U.session(users, { role = "seller" })
    assert.equal(422, create_product(s.access))
    assert.equal(200, patch_user(s.user.id, { disabled = true }).status)
    local st, took = eventually(401, 5, function() return create_product(s.access) end)
    assert.equal(401, st)
    assert.is_true(took < 5, "took " .. took .. " s")
    local res = P.post(products, "/products", {}, { token = s.access })
    assert.equal("application/problem+json", res.headers["content-type"])
    assert.equal(401, res.json.status)
    assert.matches('invalid_token', res.headers["www-authenticate"], 1, true)
    -- and on the user service itself
    assert.equal(401, U.request(users, "GET", "/users/me", { token = s.access }).status)
  end)

  it("gives a demoted admin's token its new role on every service within 5 s (403 on admin routes)", function()
    local s, token = new_admin()
    assert.is_true(past_auth(create_category(token)))
    assert.equal(200, U.request(users, "GET", "/users?limit=1", { token = token }).status)
    assert.equal(200, patch_user(s.user.id, { role = "seller" }).status)
    local st, took = eventually(403, 5, function() return create_category(token) end)
    assert.equal(403, st)
    assert.is_true(took < 5, "took " .. took .. " s")
    assert.equal(403, U.request(users, "GET", "/users?limit=1", { token = token }).status)
    -- still a seller: the token is not revoked, only its role follows the account
    assert.equal(422, create_product(token))
  end)

  it("gives a promoted user's older token the admin role", function()
    local s = U.session(users)
    assert.equal(403, create_category(s.access))
    assert.equal(200, patch_user(s.user.id, { role = "admin" }).status)
    assert.is_true(eventually(true, 5, function() return past_auth(create_category(s.access)) end))
    assert.equal(200, patch_user(s.user.id, { role = "buyer" }).status)
  end)

  it("accepts a token issued right after the account was enabled again", function()
    local s = U.session(users, { role = "seller" })
    assert.equal(200, patch_user(s.user.id, { disabled = true }).status)
    assert.equal(200, patch_user(s.user.id, { disabled = false }).status)
    local fresh = U.login(users, s.email, s.password).access_token
    assert.equal(422, create_product(fresh))
    assert.equal(200, U.request(users, "GET", "/users/me", { token = fresh }).status)
    assert.equal(401, eventually(401, 5, function() return create_product(s.access) end))
  end)

  it("keeps the record in Redis for the life of an access token, and writes it again when it is lost", function()
    local s = U.session(users, { role = "seller" })
    assert.equal(200, patch_user(s.user.id, { disabled = true }).status)
    local key = "auth:revocation:" .. s.user.id
    local cache = require "cache"
    local ttl = tonumber(cache.call("TTL", key))
    assert.is_true(ttl > 900 and ttl <= 960, "TTL " .. tostring(ttl))
    assert.matches("^%d+ %d+ seller$", cache.call("GET", key))
    cache.call("DEL", key)   -- Redis restarted empty, or the write after the commit failed
    local back = eventually(true, 5, function() return cache.call("GET", key) ~= nil end)
    assert.is_true(back)
  end)

  it("accepts verified tokens when Redis cannot be reached (fail open), logging the outage once", function()
    local port = require("support.server").free_port()
    local blind = P.start { env = { JWT_PUBLIC_KEY_FILE = false, JWKS_URL = users.url .. "/.well-known/jwks.json",
      REDIS_URL = "redis://127.0.0.1:" .. port } }
    local ok, err = pcall(function()
      local s = U.session(users, { role = "seller" })
      for _ = 1, 3 do assert.equal(422, P.post(blind, "/products", {}, { token = s.access }).status) end
      local _, n = blind:log():gsub("token revocation: Redis is unavailable", "")
      assert.equal(1, n)
    end)
    P.stop(blind)
    assert(ok, err)
  end)
end)
