-- RS256 tokens end to end: the jwt binding in this process, a signing service
-- (JWT_PRIVATE_KEY_FILE + JWT_PUBLIC_KEYS_DIR) and a verifying one (JWKS_URL pointing at the
-- signer) over real HTTP, and the host's bearer check on routes with auth, roles and scope.
--
-- Run: build/mercato lua spec/support/busted.lua -o TAP spec/integration/jwt_spec.lua
-- Needs no env: it makes its own RSA keys under .run/test/jwt/ with the openssl CLI and gives
-- the two servers theirs (MERCATO_BIN picks another binary, e.g. build/asan/mercato).
local cjson = require "cjson"
local crypto = require "crypto"
local jwt = require "jwt"
local raw = require "support.raw_http"
local server = require "support.server"

local DIR = ".run/test/jwt"

local function read(path)
  local f = assert(io.open(path, "rb"))
  local s = f:read("*a")
  f:close()
  return s
end

local function genrsa(path)
  local rc = os.execute("openssl genrsa -out " .. path .. " 2048 2>/dev/null")
  assert(rc == 0 or rc == true, "openssl genrsa failed for " .. path)
end

describe("jwt", function()
  local signer, verifier
  local current, old, stranger   -- PEM private keys

  setup(function()
    os.execute("rm -rf " .. DIR .. " && mkdir -p " .. DIR .. "/old")
    genrsa(DIR .. "/current.pem")
    genrsa(DIR .. "/old/previous.pem")
    genrsa(DIR .. "/stranger.pem")
    current, old, stranger = read(DIR .. "/current.pem"), read(DIR .. "/old/previous.pem"), read(DIR .. "/stranger.pem")
    local scripts = "spec/fixtures/jwt/scripts"
    signer = server.start { service = "product", scripts = scripts,
      env = { JWT_PRIVATE_KEY_FILE = DIR .. "/current.pem", JWT_PUBLIC_KEYS_DIR = DIR .. "/old" } }
    verifier = server.start { service = "product", scripts = scripts,
      env = { JWKS_URL = "http://127.0.0.1:" .. signer.port .. "/jwks" } }
  end)

  teardown(function()
    if verifier then assert.equal(0, verifier:stop()) end
    if signer then assert.equal(0, signer:stop()) end
  end)

  local function claims(over)
    local c = { sub = "u-1", role = "buyer", scope = "", iss = "mercato", aud = "mercato", exp = os.time() + 600 }
    for k, v in pairs(over or {}) do c[k] = v end
    return c
  end

  local function sign(over, key) return assert(jwt.sign(claims(over), { key = key or current })) end

  local function call(srv, method, path, token, body)
    local headers = token and { Authorization = "Bearer " .. token } or nil
    return assert(raw.request(srv.port, method, path, { headers = headers, body = body }))
  end

  describe("in this process", function()
    it("signs with a PEM key given in opts, its kid being the RFC 7638 thumbprint", function()
      local token = sign()
      local header = cjson.decode(crypto.base64url_decode(token:match("^[^.]+")))
      assert.same({ "RS256", "JWT" }, { header.alg, header.typ })
      assert.matches("^[%w_-]+$", header.kid)
      assert.equal(43, #header.kid)
    end)

    it("has no keys of its own without JWT_* env, so verification is unavailable, not invalid", function()
      if os.getenv("JWT_PRIVATE_KEY_FILE") or os.getenv("JWT_PUBLIC_KEY_FILE") or os.getenv("JWKS_URL") then
        pending("this process was started with JWT key env")
        return
      end
      local c, err, code = jwt.verify(sign())
      assert.is_nil(c)
      assert.equal("unavailable", code)
      assert.is_string(err)
      local t, _, scode = jwt.sign({ sub = "x" })
      assert.is_nil(t)
      assert.equal("unavailable", scode)
    end)

    it("raises on misuse", function()
      assert.has_error(function() jwt.verify() end)
      assert.has_error(function() jwt.sign("claims") end)
      assert.has_error(function() jwt.sign({}, { key = "-----BEGIN NOTHING-----" }) end)
    end)
  end)

  describe("the signing service", function()
    it("publishes the current and the previous key in its JWKS", function()
      local res = call(signer, "GET", "/jwks")
      assert.equal(200, res.status)
      local set = cjson.decode(res.body)
      assert.equal(2, #set.keys)
      local kids = {}
      for _, k in ipairs(set.keys) do
        assert.same({ "RSA", "sig", "RS256", "AQAB" }, { k.kty, k.use, k.alg, k.e })
        assert.equal(256, #crypto.base64url_decode(k.n))
        kids[k.kid] = true
      end
      local signed = cjson.decode(call(signer, "POST", "/sign", nil, cjson.encode({ sub = "u-9" })).body)
      assert.is_true(kids[signed.kid])
    end)

    it("verifies tokens of the current and the previous key, and nobody else's", function()
      assert.equal(200, call(signer, "POST", "/verify", nil, sign()).status)
      assert.equal(200, call(signer, "POST", "/verify", nil, sign(nil, old)).status)
      local res = call(signer, "POST", "/verify", nil, sign(nil, stranger))
      assert.equal(401, res.status)
      assert.same({ err = "token signed with an unknown key", code = "invalid" }, cjson.decode(res.body))
    end)

    it("gives back the claims it signed, nested values and all", function()
      local c = claims({ tags = { "a", "b" }, profile = { name = "Zoë ✓", admin = false }, n = 42.5 })
      local res = call(signer, "POST", "/verify", nil, sign(c))
      assert.equal(200, res.status)
      local got = cjson.decode(res.body)
      assert.is_number(got.iat)                       -- filled in by jwt.sign
      assert.matches("^%x+%-%x+%-4", got.jti)
      got.iat, got.jti = nil, nil
      assert.same(c, got)
    end)
  end)

  describe("a service verifying through JWKS_URL", function()
    it("accepts tokens of the signer's keys, fetched from its JWKS", function()
      local res = call(verifier, "POST", "/verify", nil, sign({ sub = "u-2" }))
      assert.equal(200, res.status)
      assert.equal("u-2", cjson.decode(res.body).sub)
      assert.equal(200, call(verifier, "POST", "/verify", nil, sign(nil, old)).status)
    end)

    it("accepts a token the signing service issued", function()
      local issued = cjson.decode(call(signer, "POST", "/sign", nil, cjson.encode({ sub = "u-3", role = "seller" })).body)
      assert.is_string(issued.token)
      local res = call(verifier, "GET", "/me", issued.token)
      assert.equal(200, res.status)
      assert.same({ sub = "u-3", role = "seller", anonymous = false }, cjson.decode(res.body))
    end)

    it("cannot sign: it holds no private key", function()
      local res = call(verifier, "POST", "/sign", nil, cjson.encode({ sub = "x" }))
      assert.equal(503, res.status)
      assert.equal("unavailable", cjson.decode(res.body).code)
    end)
  end)

  describe("the host's bearer check", function()
    local function problem(res, status)
      assert.equal(status, res.status)
      assert.equal("application/problem+json", res.headers["content-type"])
      assert.equal(status, cjson.decode(res.body).status)
      return res
    end

    it("answers 401 with WWW-Authenticate: Bearer when a required token is missing", function()
      local res = problem(call(verifier, "GET", "/me"), 401)
      assert.equal("Bearer", res.headers["www-authenticate"])
    end)

    it("answers 401 invalid_token for a bad, forged or expired token", function()
      local forged = sign({ role = "admin" }, stranger)
      for _, token in ipairs { "garbage", forged, sign({ exp = os.time() - 3600 }), sign({ aud = "other" }) } do
        local res = problem(call(verifier, "GET", "/me", token), 401)
        assert.matches('^Bearer error="invalid_token"', res.headers["www-authenticate"])
      end
      local res = call(verifier, "GET", "/me", sign({ exp = os.time() - 3600 }))
      assert.matches('error_description="token expired"', res.headers["www-authenticate"])
    end)

    it("ignores the scheme's case and refuses other schemes", function()
      local res = assert(raw.request(verifier.port, "GET", "/me", { headers = { Authorization = "bearer " .. sign() } }))
      assert.equal(200, res.status)
      res = assert(raw.request(verifier.port, "GET", "/me", { headers = { Authorization = "Basic dTpw" } }))
      assert.equal(401, res.status)
    end)

    it("lets optional routes through without a token but not with a bad one", function()
      assert.same({ anonymous = true, sub = cjson.null, role = cjson.null }, cjson.decode(call(verifier, "GET", "/maybe").body))
      problem(call(verifier, "GET", "/maybe", "garbage"), 401)
      local res = call(verifier, "GET", "/maybe", sign({ sub = "u-4" }))
      assert.equal(200, res.status)
      assert.equal("u-4", cjson.decode(res.body).sub)
    end)

    it("answers 403 when the role is not one the route allows", function()
      problem(call(verifier, "GET", "/admin", sign({ role = "buyer" })), 403)
      assert.equal(200, call(verifier, "GET", "/admin", sign({ role = "admin" })).status)
      assert.equal(200, call(verifier, "GET", "/staff", sign({ role = "seller" })).status)
      problem(call(verifier, "GET", "/staff", sign({ role = false })), 403)
    end)

    it("answers 403 insufficient_scope unless the scope list holds the route's scope", function()
      assert.equal(200, call(verifier, "GET", "/stock", sign({ scope = "payments inventory" })).status)
      local res = problem(call(verifier, "GET", "/stock", sign({ scope = "payments inventory-read" })), 403)
      assert.matches('error="insufficient_scope"', res.headers["www-authenticate"])
      problem(call(verifier, "GET", "/stock", sign({ scope = cjson.null })), 403)
    end)
  end)
end)
