-- luacheck: max line length 160
-- RFC 8725 (JWT Best Current Practices) attacks against a protected route of every service and
-- of the gateway (issue 18): each forged, altered or misused token is a 401 problem with
-- `WWW-Authenticate: Bearer error="invalid_token"`. Tokens are built here byte by byte (header,
-- payload, signature) — signed with the user service's real private key where the attack needs a
-- genuine signature (duplicate claims, wrong typ, missing exp …), so that only the check under
-- test can refuse them; a control token built the same way is accepted everywhere.
--
-- Run: set -a; . <(scripts/dev/stack.sh env); set +a
--      build/mercato lua spec/support/busted.lua -o TAP spec/integration/security_jwt_attacks_spec.lua
local cjson = require "cjson.safe"
local crypto = require "crypto"
local http = require "http"
local O = require "support.order_helpers"
local U = require "support.user_helpers"
local server = require "support.server"

local DIR = ".run/test/jwt-attacks"
local b64 = crypto.base64url_encode

local function sh(cmd)
  local rc = os.execute(cmd)
  assert(rc == 0 or rc == true, "failed: " .. cmd)
end

local function write(path, data)
  local f = assert(io.open(path, "wb"))
  f:write(data)
  f:close()
end

-- The signature of data by the PEM key at key_path: RSASSA-PKCS1-v1_5 with digest (sha256 …),
-- or RSASSA-PSS when pss is set (openssl CLI, bytes exactly as given).
local function rsa_sign(key_path, data, digest, pss)
  write(DIR .. "/in", data)
  sh(("openssl dgst -%s %s -sign %s -out %s/sig %s/in"):format(digest or "sha256",
    pss and "-sigopt rsa_padding_mode:pss -sigopt rsa_pss_saltlen:32" or "", key_path, DIR, DIR))
  return U.read(DIR .. "/sig")
end

-- header and payload are JSON texts (or tables), used verbatim.
local function token(header, payload, key_path, digest)
  local h = type(header) == "table" and cjson.encode(header) or header
  local p = type(payload) == "table" and cjson.encode(payload) or payload
  local input = b64(h) .. "." .. b64(p)
  return input .. "." .. b64(rsa_sign(key_path, input, digest))
end

describe("RFC 8725 attacks on the bearer check", function()
  local w, kid, stranger_kid, buyer, product, attacker, pubkey_pem, stranger_jwk
  local KEY, STRANGER = U.KEY, DIR .. "/stranger.pem"

  setup(function()
    sh("rm -rf " .. DIR .. " && mkdir -p " .. DIR)
    sh("openssl genrsa -out " .. STRANGER .. " 2048 2>/dev/null")
    w = O.start { payment = true, notification = true, gateway = true }
    buyer = O.buyer(w)
    product = O.product(w)
    local jwks = cjson.decode(assert(http.request { method = "GET", url = w.user.url .. "/.well-known/jwks.json" }).body)
    kid = jwks.keys[1].kid
    sh("openssl rsa -in " .. KEY .. " -pubout -out " .. DIR .. "/public.pem 2>/dev/null")
    pubkey_pem = U.read(DIR .. "/public.pem")
    -- The attacker's own signing service, publishing its key at /jwks (for jku / x5u).
    attacker = server.start { service = "product", scripts = "spec/fixtures/jwt/scripts", workers = 1,
      env = { JWT_PRIVATE_KEY_FILE = STRANGER } }
    local set = cjson.decode(assert(http.request { method = "GET", url = "http://127.0.0.1:" .. attacker.port .. "/jwks" }).body)
    stranger_jwk = set.keys[1]
    stranger_kid = stranger_jwk.kid
  end)

  teardown(function()
    if attacker then attacker:stop() end
    O.stop(w)
  end)

  local function claims(over)
    local now = os.time()
    local c = { sub = buyer.sub, role = "buyer", scope = "", iss = "mercato", aud = "mercato", iat = now, exp = now + 600,
      jti = crypto.uuid4() }
    for k, v in pairs(over or {}) do
      if v == "<absent>" then c[k] = nil else c[k] = v end
    end
    return c
  end
  local function header(over)
    local h = { alg = "RS256", typ = "JWT", kid = kid }
    for k, v in pairs(over or {}) do
      if v == "<absent>" then h[k] = nil else h[k] = v end
    end
    return h
  end
  local function good(h_over, c_over) return token(header(h_over), claims(c_over), KEY) end

  -- A protected route of each service (the gateway forwards it to its service).
  local function targets()
    return {
      { "user", w.user, "GET", "/users/me" },
      { "product", w.product, "GET", "/products/" .. product.id },   -- optional auth: a bad token is still 401
      { "product", w.product, "POST", "/products", "{}" },
      { "order", w.order, "GET", "/cart" },
      { "payment", w.payment, "GET", "/payments?order_id=" .. crypto.uuid4() },
      { "notification", w.notification, "GET", "/notifications/me" },
      { "gateway", w.gateway, "GET", "/orders" },
    }
  end

  local function send(t, bearer)
    local h = { Authorization = bearer }
    if t[5] then h["Content-Type"] = "application/json" end
    return assert(http.request { method = t[3], url = t[2].url .. t[4], headers = h, body = t[5], timeout_ms = 20000 })
  end

  local function refused_everywhere(bearer, what)
    for _, t in ipairs(targets()) do
      local res = send(t, bearer)
      local where = what .. " on " .. t[1] .. " " .. t[3] .. " " .. t[4]
      assert.equal(401, res.status, where .. " → " .. res.status .. " " .. res.body)
      assert.equal("application/problem+json", res.headers["content-type"], where)
      local doc = cjson.decode(res.body)
      assert.equal(401, doc and doc.status, where)
      assert.matches('^Bearer error="invalid_token"', res.headers["www-authenticate"] or "", 1, false)
    end
  end

  it("accepts the control token, built the same way, on every service (so each refusal below is the check's)", function()
    local ok = "Bearer " .. good()
    for _, t in ipairs(targets()) do
      local res = send(t, ok)
      assert.is_true(res.status ~= 401 and res.status < 500, t[1] .. " " .. t[4] .. " → " .. res.status .. " " .. res.body)
    end
  end)

  describe("algorithm", function()
    it("refuses alg none (any spelling), with or without a signature", function()
      for _, alg in ipairs { "none", "None", "NONE", "nOnE" } do
        local input = b64(cjson.encode(header { alg = alg })) .. "." .. b64(cjson.encode(claims()))
        refused_everywhere("Bearer " .. input .. ".", "alg " .. alg .. " unsigned")
        refused_everywhere("Bearer " .. input .. "." .. b64(rsa_sign(KEY, input)), "alg " .. alg .. " RS-signed")
      end
    end)

    it("refuses HS256 keyed with the RSA public key (algorithm confusion), PEM and DER alike", function()
      local input = b64(cjson.encode(header { alg = "HS256" })) .. "." .. b64(cjson.encode(claims()))
      refused_everywhere("Bearer " .. input .. "." .. b64(crypto.hmac_sha256(pubkey_pem, input)), "HS256 with the PEM")
      local der = crypto.base64_decode((pubkey_pem:gsub("%-%-%-%-%-[^-]+%-%-%-%-%-", ""):gsub("%s", "")))
      refused_everywhere("Bearer " .. input .. "." .. b64(crypto.hmac_sha256(der, input)), "HS256 with the DER")
    end)

    it("refuses other RSA algorithms signed with the real key (RS512, PS256): only RS256 is allowed", function()
      local h512 = header { alg = "RS512" }
      refused_everywhere("Bearer " .. token(h512, claims(), KEY, "sha512"), "RS512")
      local hps = b64(cjson.encode(header { alg = "PS256" })) .. "." .. b64(cjson.encode(claims()))
      refused_everywhere("Bearer " .. hps .. "." .. b64(rsa_sign(KEY, hps, "sha256", true)), "PS256")
    end)
  end)

  describe("key selection", function()
    it("refuses unknown and injected kids: path traversal, SQL, very long, empty, absent, not a string", function()
      for _, k in ipairs { "../../../../../../dev/null", "/etc/passwd", "' OR '1'='1", "x' UNION SELECT 'a", string.rep("k", 4000),
                           "", "<absent>", 7, cjson.null, { kid } } do
        refused_everywhere("Bearer " .. good({ kid = k }), "kid " .. tostring(k):sub(1, 40))
      end
    end)

    it("never fetches or trusts jku, x5u, jwk or x5c: the attacker's key they name is not used", function()
      local forged = claims { role = "admin" }
      refused_everywhere("Bearer " .. token(header { kid = stranger_kid, jku = "http://127.0.0.1:" .. attacker.port .. "/jwks" }, forged, STRANGER), "jku")
      refused_everywhere("Bearer " .. token(header { kid = stranger_kid, x5u = "http://127.0.0.1:" .. attacker.port .. "/jwks" }, forged, STRANGER), "x5u")
      refused_everywhere("Bearer " .. token(header { kid = stranger_kid, jwk = stranger_jwk }, forged, STRANGER), "jwk")
      refused_everywhere("Bearer " .. token(header { jwk = stranger_jwk }, forged, STRANGER), "jwk with the real kid")
      sh(("openssl req -x509 -new -key %s -subj /CN=attacker -days 1 -outform DER -out %s/cert.der 2>/dev/null"):format(STRANGER, DIR))
      refused_everywhere("Bearer " .. token(header { kid = stranger_kid, x5c = { crypto.base64_encode(U.read(DIR .. "/cert.der")) } }, forged, STRANGER), "x5c")
      -- the attacker's server never heard from anyone but this spec (its one /jwks read in setup)
      assert.equal(0, attacker:stop())
      local fetches = select(2, attacker:log():gsub('"path":"/jwks"', ""))
      assert.equal(1, fetches, attacker:log())
      attacker = nil
    end)

    it("refuses a token signed by another key that claims the real kid", function()
      refused_everywhere("Bearer " .. token(header(), claims { role = "admin" }, STRANGER), "stranger's key, real kid")
    end)

    it("refuses critical header extensions", function()
      refused_everywhere("Bearer " .. good({ crit = { "exp" } }), "crit")
    end)
  end)

  describe("claims", function()
    it("refuses a wrong or missing issuer or audience (no token of another audience)", function()
      for _, over in ipairs { { iss = "https://evil.example" }, { iss = "<absent>" }, { iss = 1 }, { aud = "payment" },
                              { aud = "<absent>" }, { aud = { "other", "another" } }, { aud = "" } } do
        refused_everywhere("Bearer " .. good(nil, over), cjson.encode(over))
      end
    end)

    it("refuses expired, not yet valid and exp-less tokens, and exp of the wrong type", function()
      local now = os.time()
      for _, over in ipairs { { exp = now - 3600 }, { exp = "<absent>" }, { exp = tostring(now + 600) }, { exp = cjson.null },
                              { exp = true }, { nbf = now + 3600 }, { nbf = "soon" } } do
        refused_everywhere("Bearer " .. good(nil, over), cjson.encode(over))
      end
    end)

    it("refuses duplicate claims, even when the last one would be harmless or the first one the real one", function()
      local base = cjson.encode(claims()):sub(1, -2)   -- without the closing brace
      for _, dup in ipairs { ',"role":"admin"}', ',"sub":"' .. crypto.uuid4() .. '"}', ',"exp":' .. (os.time() + 86400 * 365) .. "}",
                             ',"aud":"mercato"}' } do
        refused_everywhere("Bearer " .. token(header(), base .. dup, KEY), "duplicate " .. dup)
      end
      local h = cjson.encode(header()):sub(1, -2) .. ',"alg":"RS256"}'
      refused_everywhere("Bearer " .. token(h, claims(), KEY), "duplicate header alg")
    end)

    it("refuses payloads that are not one canonical JSON object: trailing bytes, BOM, an array, bad UTF-8, a NUL", function()
      local c = cjson.encode(claims())
      for _, p in ipairs { c .. "x", c .. "{}", "\239\187\191" .. c, "[" .. c .. "]",
                           c:sub(1, -2) .. ',"name":"\192\175"}', c:sub(1, -2) .. ',"name":"\237\160\128"}',
                           c:sub(1, -2) .. ',"name":"a\\u0000b"}' } do
        refused_everywhere("Bearer " .. token(header(), p, KEY), "payload " .. p:sub(-20))
      end
    end)
  end)

  describe("token type", function()
    it("refuses a refresh token, the device cookie and other secrets presented as an access token", function()
      local s = U.session(w.user)
      refused_everywhere("Bearer " .. s.refresh, "refresh token")
      refused_everywhere("Bearer " .. crypto.base64url_encode(crypto.random(32)), "random opaque string")
      refused_everywhere("Bearer pi_123_secret_456", "a PaymentIntent client_secret")
    end)

    it("refuses explicitly typed tokens of another kind (typ), and header typ confusion", function()
      for _, typ in ipairs { "refresh+jwt", "secevent+jwt", "dpop+jwt", "id_token", "JWE", "", "<absent>", 1 } do
        refused_everywhere("Bearer " .. good { typ = typ }, "typ " .. tostring(typ))
      end
    end)
  end)

  describe("encoding", function()
    it("refuses a stripped, truncated, altered or padded signature, and wrong part counts", function()
      local t = good()
      local input, sig = t:match("^(.+)%.([^.]+)$")
      local flipped = sig:sub(1, 10) .. (sig:sub(11, 11) == "A" and "B" or "A") .. sig:sub(12)
      for name, bad in pairs {
        stripped = input .. ".", truncated = input .. "." .. sig:sub(1, -5), altered = input .. "." .. flipped,
        padded = input .. "." .. sig .. "=", standard_alphabet = input .. "." .. sig:gsub("-", "+"):gsub("_", "/") .. "+/",
        two_parts = input, four_parts = t .. ".", jwe_like = t .. ".a.b", spaces = t:gsub("%.", " . ", 1),
        doubled_sig = input .. "." .. sig .. sig, no_header = "." .. t:match("^[^.]+%.(.*)$"),
      } do
        refused_everywhere("Bearer " .. bad, name)
      end
    end)

    it("refuses a payload that was altered after signing (role, sub) and a header swapped in", function()
      local t = good()
      local h, _, sig = t:match("^([^.]+)%.([^.]+)%.([^.]+)$")
      refused_everywhere("Bearer " .. h .. "." .. b64(cjson.encode(claims { role = "admin" })) .. "." .. sig, "role changed")
      refused_everywhere("Bearer " .. b64(cjson.encode(header { typ = "at+jwt" })) .. "." .. t:match("^[^.]+%.(.+)$"), "header swapped")
    end)

    it("refuses huge tokens with the problem while they fit the request-header buffer, and never with a 5xx", function()
      local big = good(nil, { pad = string.rep("p", 6200) })
      assert.is_true(#big > 8192, #big)
      refused_everywhere("Bearer " .. big, "a " .. #big .. "-byte signed token")
      refused_everywhere("Bearer " .. string.rep("A", 12000) .. ".e30.x", "a 12 KB token")
      -- past the 16 KiB a connection may hold for its request headers, libmicrohttpd answers 431 itself
      for _, t in ipairs(targets()) do
        local res = send(t, "Bearer " .. string.rep("A", 200000) .. ".e30.x")
        assert.equal(431, res.status, t[1] .. " 200 KB token")
      end
    end)
  end)
end)
