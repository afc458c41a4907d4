-- The user service's bearer-token check and profile endpoints against a real mercato:
-- every kind of bad token, GET/PATCH /users/me and POST /users/me/password.
local cjson = require "cjson.safe"
local crypto = require "crypto"
local jwt = require "jwt"
local U = require "support.user_helpers"

local function b64(s) return crypto.base64url_encode(s) end

describe("user service bearer tokens and /users/me", function()
  local svc, pem, pub

  setup(function()
    svc = U.start()
    pem = U.read(U.KEY)
    local p = io.popen("openssl rsa -in " .. U.KEY .. " -pubout 2>/dev/null")
    pub = p:read("*a")
    p:close()
    assert.matches("BEGIN PUBLIC KEY", pub)
  end)
  teardown(function() assert.equal(0, U.stop(svc)) end)

  local function me(token) return U.request(svc, "GET", "/users/me", { token = token }) end

  local function assert_401(res)
    assert.equal(401, res.status, res.body)
    assert.matches("^Bearer", res.headers["www-authenticate"])
    assert.equal("application/problem+json", res.headers["content-type"])
  end

  -- A token signed with the service's own key, with claims changed.
  local function forge(user_id, over)
    local c = { sub = user_id, role = "buyer", scope = "" }
    for k, v in pairs(over or {}) do c[k] = v end
    return assert(jwt.sign(c, { key = pem }))
  end

  describe("a request to an authenticated route", function()
    local s
    setup(function() s = U.session(svc) end)

    it("is refused with 401 and WWW-Authenticate: Bearer without a token", function()
      assert_401(me(nil))
      assert.equal("Bearer", me(nil).headers["www-authenticate"])
      assert_401(U.request(svc, "GET", "/users/me", { headers = { Authorization = "Basic dXNlcjpwYXNz" } }))
    end)

    it("is refused with 401 for malformed tokens", function()
      for _, t in ipairs({ "", "abc", "a.b.c", "a.b", s.access .. "x", s.access:gsub("%.", "", 1),
                           string.rep("A", 9000), "e30.e30.", "' OR 1=1 --" }) do
        assert_401(U.request(svc, "GET", "/users/me", { headers = { Authorization = "Bearer " .. t } }))
      end
    end)

    it("is refused for alg none, with or without a signature", function()
      local header = b64(cjson.encode({ alg = "none", typ = "JWT" }))
      local payload = s.access:match("^[^.]+%.([^.]+)")
      assert_401(me(header .. "." .. payload .. "."))
      assert_401(me(header .. "." .. payload .. "." .. s.access:match("([^.]+)$")))
    end)

    it("is refused for HS256 signed with the RSA public key as the HMAC secret", function()
      local kid = cjson.decode(crypto.base64url_decode(s.access:match("^[^.]+"))).kid
      local input = b64(cjson.encode({ alg = "HS256", typ = "JWT", kid = kid })) .. "." .. s.access:match("^[^.]+%.([^.]+)")
      local jwks = U.request(svc, "GET", "/.well-known/jwks.json").body
      for _, secret in ipairs({ pub, jwks }) do
        assert_401(me(input .. "." .. b64(crypto.hmac_sha256(secret, input))))
      end
    end)

    it("is refused for an expired token", function()
      assert_401(me(forge(s.user.id, { exp = os.time() - 120, iat = os.time() - 1020 })))
    end)

    it("is refused for a token of another audience or issuer", function()
      assert_401(me(forge(s.user.id, { aud = "someone-else" })))
      assert_401(me(forge(s.user.id, { iss = "https://evil.example" })))
    end)

    it("is refused for a token signed by a key the service does not know", function()
      os.execute("openssl genrsa -out " .. U.DIR .. "/stranger.pem 2048 2>/dev/null")
      local token = assert(jwt.sign({ sub = s.user.id, role = "admin", scope = "" }, { key = U.read(U.DIR .. "/stranger.pem") }))
      assert_401(me(token))
    end)

    it("is refused once the account is disabled, though the token has not expired", function()
      local v = U.session(svc)
      assert.equal(200, me(v.access).status)
      local admin = U.admin(svc)
      assert.equal(200, U.patch_json(svc, "/users/" .. v.user.id, { disabled = true }, { token = admin }).status)
      assert_401(me(v.access))
    end)

    it("accepts the scheme name in any letter case", function()
      local res = U.request(svc, "GET", "/users/me", { headers = { Authorization = "bearer " .. s.access } })
      assert.equal(200, res.status)
    end)
  end)

  describe("GET /users/me", function()
    it("answers the caller's profile without password fields", function()
      local s = U.session(svc, { name = "Zoé" })
      local res = me(s.access)
      assert.equal(200, res.status)
      assert.equal(s.user.id, res.json.id)
      assert.equal("Zoé", res.json.name)
      assert.equal(s.email, res.json.email)
      assert.is_nil(res.json.password_hash)
      assert.equal(cjson.null, res.json.phone)
    end)

    it("answers 403 for a service token: /users/me is a user account's route (roles in routes.lua)", function()
      local t = U.post_form(svc, "/oauth/token", { grant_type = "client_credentials", client_id = U.CLIENT_ID,
        client_secret = U.CLIENT_SECRET }).json.access_token
      assert.equal(403, me(t).status)
    end)
  end)

  describe("PATCH /users/me", function()
    local s
    setup(function() s = U.session(svc) end)

    local function patch(doc, token) return U.patch_json(svc, "/users/me", doc, { token = token or s.access }) end

    it("changes name, phone and address and answers the updated profile", function()
      local addr = { line1 = "1 Main St", city = "Lyon", postal_code = "69001", country = "FR" }
      local res = patch { name = "  New Name  ", phone = "+33 1 23 45 67 89", address = addr }
      assert.equal(200, res.status, res.body)
      assert.equal("New Name", res.json.name)
      assert.equal("+33 1 23 45 67 89", res.json.phone)
      assert.equal("Lyon", res.json.address.city)
      assert.equal("New Name", me(s.access).json.name)
    end)

    it("clears phone and address with null", function()
      local res = patch { phone = cjson.null, address = cjson.null }
      assert.equal(200, res.status, res.body)
      assert.equal(cjson.null, res.json.phone)
      assert.equal(cjson.null, res.json.address)
    end)

    it("answers 200 with the profile unchanged for an empty object", function()
      local res = patch {}
      assert.equal(200, res.status)
      assert.equal(s.user.id, res.json.id)
    end)

    it("refuses fields a user may not set with 400 (role, email, id, disabled)", function()
      for _, doc in ipairs({ { role = "admin" }, { email = "x@example.com" }, { id = s.user.id }, { disabled = false },
                             { name = "ok", password_hash = "x" } }) do
        local res = patch(doc)
        assert.equal(400, res.status, res.body)
        assert.is_table(res.json.errors)
      end
      assert.equal("buyer", me(s.access).json.role)
    end)

    it("answers 422 for invalid values", function()
      for _, doc in ipairs({ { name = "" }, { name = "   " }, { name = string.rep("n", 101) }, { name = 5 },
                             { phone = "call me" }, { phone = 33 }, { address = "1 Main St" },
                             { address = { line1 = "x" } },
                             { address = { line1 = "1", city = "L", postal_code = "1", country = "France" } },
                             { name = cjson.null } }) do
        local res = patch(doc)
        assert.equal(422, res.status, cjson.encode(doc) .. " → " .. res.body)
        assert.is_string(res.json.errors[1].field)
      end
    end)

    it("answers 400 for malformed and non-object JSON, 415 for another content type", function()
      assert.equal(400, patch("{").status)
      assert.equal(400, patch("[]").status)
      assert.equal(415, U.request(svc, "PATCH", "/users/me", { token = s.access, body = '{"name":"x"}',
        headers = { ["Content-Type"] = "text/plain" } }).status)
    end)

    it("stores script and SQL text verbatim", function()
      local name = "<img src=x onerror=alert(1)>'; DELETE FROM users; --"
      local res = patch { name = name }
      assert.equal(200, res.status)
      assert.equal(name, me(s.access).json.name)
    end)
  end)

  describe("POST /users/me/password", function()
    it("changes the password, ends the other sessions and keeps the caller's", function()
      local s = U.session(svc)
      local other = U.login(svc, s.email)
      local res = U.post_json(svc, "/users/me/password", { current_password = U.PASSWORD, new_password = "a new password 2" },
        { token = s.access })
      assert.equal(204, res.status, res.body)
      assert.equal(401, U.post_json(svc, "/auth/login", { email = s.email, password = U.PASSWORD }).status)
      assert.equal(200, U.post_json(svc, "/auth/login", { email = s.email, password = "a new password 2" }).status)
      local dead = U.post_form(svc, "/oauth/token", { grant_type = "refresh_token", refresh_token = other.refresh_token })
      assert.equal("invalid_grant", dead.json.error)
      local alive = U.post_form(svc, "/oauth/token", { grant_type = "refresh_token", refresh_token = s.refresh })
      assert.equal(200, alive.status, alive.body)
    end)

    it("answers 422 when the current password is wrong, changing nothing", function()
      local s = U.session(svc)
      local res = U.post_json(svc, "/users/me/password", { current_password = "not it at all", new_password = "another one 3" },
        { token = s.access })
      assert.equal(422, res.status)
      assert.equal("current_password", res.json.errors[1].field)
      assert.equal(200, U.post_json(svc, "/auth/login", { email = s.email, password = U.PASSWORD }).status)
    end)

    it("answers 422 for a new password out of bounds and 400 for unknown fields", function()
      local s = U.session(svc)
      local function change(doc) return U.post_json(svc, "/users/me/password", doc, { token = s.access }) end
      assert.equal(422, change({ current_password = U.PASSWORD, new_password = "short" }).status)
      assert.equal(422, change({ current_password = U.PASSWORD, new_password = string.rep("x", 129) }).status)
      assert.equal(422, change({ current_password = U.PASSWORD }).status)
      assert.equal(400, change({ current_password = U.PASSWORD, new_password = "long enough 1", user_id = "x" }).status)
      assert.equal(401, U.post_json(svc, "/users/me/password", { current_password = "a", new_password = "b" }).status)
    end)
  end)
end)
