-- The user service's OAuth2 endpoints against a real mercato: POST /oauth/token (password,
-- refresh_token with rotation and reuse detection, client_credentials), POST /oauth/revoke,
-- GET /.well-known/jwks.json, and a token verified by a third-party library (jose, Node).
local cjson = require "cjson.safe"
local crypto = require "crypto"
local U = require "support.user_helpers"

describe("user service /oauth", function()
  local svc

  setup(function() svc = U.start() end)
  teardown(function() assert.equal(0, U.stop(svc)) end)

  local function token(form, opts) return U.post_form(svc, "/oauth/token", form, opts) end

  local function assert_oauth_error(res, status, code)
    assert.equal(status, res.status, res.body)
    assert.equal(code, res.json and res.json.error, res.body)
    assert.equal("no-store", res.headers["cache-control"])
  end

  describe("the password grant", function()
    it("answers 200 with access and refresh tokens for good credentials", function()
      local user = U.register(svc)
      local res = token { grant_type = "password", username = user.email, password = U.PASSWORD }
      assert.equal(200, res.status, res.body)
      assert.equal("Bearer", res.json.token_type)
      assert.equal(900, res.json.expires_in)
      assert.is_string(res.json.refresh_token)
      assert.equal(user.id, U.claims(res.json.access_token).sub)
    end)

    it("answers 400 invalid_grant for a wrong password and for an unknown user alike", function()
      local user = U.register(svc)
      local a = token { grant_type = "password", username = user.email, password = "wrong password" }
      local b = token { grant_type = "password", username = U.email("ghost"), password = "wrong password" }
      assert_oauth_error(a, 400, "invalid_grant")
      assert_oauth_error(b, 400, "invalid_grant")
      assert.equal(a.body, b.body)
    end)

    it("answers 400 invalid_request for missing parameters and repeated ones", function()
      assert_oauth_error(token { grant_type = "password", username = "a@example.com" }, 400, "invalid_request")
      assert_oauth_error(token "grant_type=password&username=a%40b.co&password=x&password=y", 400, "invalid_request")
      assert_oauth_error(token "", 400, "invalid_request")
    end)

    it("answers 400 unsupported_grant_type for other grants", function()
      assert_oauth_error(token { grant_type = "authorization_code", code = "x" }, 400, "unsupported_grant_type")
      assert_oauth_error(token { grant_type = "implicit" }, 400, "unsupported_grant_type")
    end)

    it("answers 415 (problem+json carrying error invalid_request) for a JSON body", function()
      local res = U.post_json(svc, "/oauth/token", { grant_type = "password", username = "a@b.co", password = "x" })
      assert.equal(415, res.status)
      assert.equal("application/problem+json", res.headers["content-type"])
      assert.equal("invalid_request", res.json.error)
      res = U.request(svc, "POST", "/oauth/token", { body = "grant_type=password" })
      assert.equal(415, res.status)
    end)

    it("accepts a Content-Type with a charset parameter", function()
      local user = U.register(svc)
      local res = token({ grant_type = "password", username = user.email, password = U.PASSWORD },
        { headers = { ["Content-Type"] = "application/x-www-form-urlencoded; charset=UTF-8" } })
      assert.equal(200, res.status, res.body)
    end)
  end)

  describe("the refresh_token grant", function()
    it("rotates: a new refresh token each time, and the old one stops working", function()
      local s = U.session(svc)
      local r1 = token { grant_type = "refresh_token", refresh_token = s.refresh }
      assert.equal(200, r1.status, r1.body)
      assert.are_not.equal(s.refresh, r1.json.refresh_token)
      assert.equal(s.user.id, U.claims(r1.json.access_token).sub)
      local r2 = token { grant_type = "refresh_token", refresh_token = r1.json.refresh_token }
      assert.equal(200, r2.status, r2.body)
      assert.are_not.equal(r1.json.refresh_token, r2.json.refresh_token)
    end)

    it("revokes the whole family when a spent token is used again, and logs it", function()
      local s = U.session(svc)
      local r1 = token { grant_type = "refresh_token", refresh_token = s.refresh }
      assert.equal(200, r1.status)
      local reuse = token { grant_type = "refresh_token", refresh_token = s.refresh }   -- the stolen copy
      assert_oauth_error(reuse, 400, "invalid_grant")
      -- The legitimate holder's newer token is dead too: the session is over.
      assert_oauth_error(token { grant_type = "refresh_token", refresh_token = r1.json.refresh_token }, 400, "invalid_grant")
      local log
      for _ = 1, 40 do   -- the access log is flushed within a second; warnings at once
        log = svc:log()
        if log:find("refresh_token_reuse", 1, true) then break end
        os.execute("sleep 0.05")
      end
      assert.matches('"event":"refresh_token_reuse"', log)
      assert.truthy(log:find(s.user.id, 1, true))
      assert.is_nil(log:find(s.refresh, 1, true))   -- the token itself is never logged
    end)

    it("keeps other sessions of the same user alive when one family is revoked", function()
      local s = U.session(svc)
      local other = U.login(svc, s.email)
      token { grant_type = "refresh_token", refresh_token = s.refresh }
      token { grant_type = "refresh_token", refresh_token = s.refresh }
      assert.equal(200, token({ grant_type = "refresh_token", refresh_token = other.refresh_token }).status)
    end)

    it("answers 400 invalid_grant for unknown, garbage and expired tokens", function()
      assert_oauth_error(token { grant_type = "refresh_token", refresh_token = "nope" }, 400, "invalid_grant")
      assert_oauth_error(token { grant_type = "refresh_token", refresh_token = string.rep("A", 600) }, 400, "invalid_grant")
      assert_oauth_error(token { grant_type = "refresh_token", refresh_token = "'; DROP TABLE refresh_tokens;--" },
        400, "invalid_grant")
      local s = U.session(svc)
      U.psql("UPDATE refresh_tokens SET expires_at = now() - interval '1 second' WHERE token_hash = '" ..
        crypto.hex(crypto.sha256(s.refresh)) .. "'")
      assert_oauth_error(token { grant_type = "refresh_token", refresh_token = s.refresh }, 400, "invalid_grant")
    end)

    it("stores only a hash of each refresh token", function()
      local s = U.session(svc)
      assert.equal("0", U.psql("SELECT count(*) FROM refresh_tokens WHERE token_hash = '" .. s.refresh .. "'"))
      assert.equal("1", U.psql("SELECT count(*) FROM refresh_tokens WHERE token_hash = '" ..
        crypto.hex(crypto.sha256(s.refresh)) .. "'"))
    end)

    it("answers 400 invalid_request without a refresh_token", function()
      assert_oauth_error(token { grant_type = "refresh_token" }, 400, "invalid_request")
    end)
  end)

  describe("the client_credentials grant", function()
    it("gives the internal client a token whose sub names it and whose scope is what its caller needs, no more", function()
      local res = token { grant_type = "client_credentials", client_id = U.CLIENT_ID, client_secret = U.CLIENT_SECRET }
      assert.equal(200, res.status, res.body)
      assert.is_nil(res.json.refresh_token)
      local c = U.claims(res.json.access_token)
      assert.equal(U.CLIENT_ID, c.sub)
      assert.equal("service", c.role)
      -- the order service is the only service that calls others: stock, payments, the buyer's email
      local got = {}
      for s in c.scope:gmatch("%S+") do got[#got + 1] = s end
      table.sort(got)
      assert.same({ "inventory", "payments", "users" }, got)
      assert.equal(c.scope, res.json.scope)
    end)

    it("narrows the scope to what was asked, and refuses scopes the client lacks", function()
      local res = token { grant_type = "client_credentials", client_id = U.CLIENT_ID, client_secret = U.CLIENT_SECRET,
        scope = "inventory" }
      assert.equal(200, res.status, res.body)
      assert.equal("inventory", U.claims(res.json.access_token).scope)
      assert_oauth_error(token { grant_type = "client_credentials", client_id = U.CLIENT_ID,
        client_secret = U.CLIENT_SECRET, scope = "inventory admin" }, 400, "invalid_scope")
    end)

    it("accepts HTTP Basic client authentication", function()
      local basic = "Basic " .. crypto.base64_encode(U.CLIENT_ID .. ":" .. U.CLIENT_SECRET)
      local res = token({ grant_type = "client_credentials" }, { headers = { Authorization = basic } })
      assert.equal(200, res.status, res.body)
    end)

    it("answers 401 invalid_client for a wrong secret or an unknown client", function()
      assert_oauth_error(token { grant_type = "client_credentials", client_id = U.CLIENT_ID, client_secret = "wrong" },
        401, "invalid_client")
      local res = token { grant_type = "client_credentials", client_id = "nobody", client_secret = "x" }
      assert_oauth_error(res, 401, "invalid_client")
      assert.matches("^Basic", res.headers["www-authenticate"])
      assert_oauth_error(token { grant_type = "client_credentials" }, 401, "invalid_client")
    end)

    it("stores the client secret hashed", function()
      token { grant_type = "client_credentials", client_id = U.CLIENT_ID, client_secret = U.CLIENT_SECRET }
      local stored = U.psql("SELECT secret_hash FROM oauth_clients WHERE id = '" .. U.CLIENT_ID .. "'")
      assert.matches("^sha256%$", stored)
      assert.is_nil(stored:find(U.CLIENT_SECRET, 1, true))
    end)
  end)

  describe("POST /oauth/revoke", function()
    it("revokes a refresh token and answers 200", function()
      local s = U.session(svc)
      local res = U.post_form(svc, "/oauth/revoke", { token = s.refresh, token_type_hint = "refresh_token" })
      assert.equal(200, res.status, res.body)
      assert_oauth_error(token { grant_type = "refresh_token", refresh_token = s.refresh }, 400, "invalid_grant")
    end)

    it("answers 200 for unknown tokens and access tokens (RFC 7009 §2.2)", function()
      assert.equal(200, U.post_form(svc, "/oauth/revoke", { token = "unknown-token" }).status)
      local s = U.session(svc)
      assert.equal(200, U.post_form(svc, "/oauth/revoke", { token = s.access }).status)
    end)

    it("answers 400 invalid_request without a token and 415 for JSON", function()
      assert_oauth_error(U.post_form(svc, "/oauth/revoke", {}), 400, "invalid_request")
      assert.equal(415, U.post_json(svc, "/oauth/revoke", { token = "x" }).status)
    end)
  end)

  describe("GET /.well-known/jwks.json", function()
    it("publishes the RS256 verification key under the kid tokens carry", function()
      local res = U.request(svc, "GET", "/.well-known/jwks.json")
      assert.equal(200, res.status)
      assert.matches("^application/json", res.headers["content-type"])
      local key = res.json.keys[1]
      assert.equal("RSA", key.kty)
      assert.equal("RS256", key.alg)
      assert.is_string(key.n)
      assert.is_nil(key.d)   -- never the private part
      local s = U.session(svc)
      local header = cjson.decode(crypto.base64url_decode(s.access:match("^[^.]+")))
      assert.equal(key.kid, header.kid)
    end)

    it("lets a third-party library (jose) verify an access token issued here", function()
      local s = U.session(svc)
      local cmd = ("node spec/fixtures/user/verify_jwt.mjs %s %s 2>&1"):format(
        U.sh_quote(svc.url .. "/.well-known/jwks.json"), U.sh_quote(s.access))
      local p = io.popen(cmd)
      local out = p:read("*a")
      p:close()
      local doc = cjson.decode(out)
      assert.is_table(doc, out)
      assert.is_true(doc.ok, out)
      assert.equal(s.user.id, doc.payload.sub)
      assert.equal("RS256", doc.header.alg)
      -- and refuses the same token with one byte of the signature changed
      local tampered = s.access:sub(1, -3) .. (s.access:sub(-2, -2) == "A" and "B" or "A") .. s.access:sub(-1)
      p = io.popen(("node spec/fixtures/user/verify_jwt.mjs %s %s 2>&1"):format(
        U.sh_quote(svc.url .. "/.well-known/jwks.json"), U.sh_quote(tampered)))
      doc = cjson.decode(p:read("*a"))
      p:close()
      assert.is_false(doc.ok)
    end)
  end)
end)
