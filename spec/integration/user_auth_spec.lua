-- The user service's /auth endpoints against a real mercato, PostgreSQL and Redis:
-- registration, login and logout, with every bad input the contract names.
-- Run: set -a; . <(scripts/dev/stack.sh env); set +a
--      build/mercato lua spec/support/busted.lua -o TAP spec/integration/user_auth_spec.lua
local cjson = require "cjson.safe"
local U = require "support.user_helpers"

describe("user service /auth", function()
  local svc

  setup(function() svc = U.start() end)
  teardown(function() assert.equal(0, U.stop(svc)) end)

  local function register(doc) return U.post_json(svc, "/auth/register", doc) end

  local function assert_problem(res, status)
    assert.equal(status, res.status, res.body)
    assert.equal("application/problem+json", res.headers["content-type"])
    assert.equal(status, res.json.status)
    assert.is_string(res.json.title)
    return res.json
  end

  local function has_error(problem, field)
    for _, e in ipairs(problem.errors or {}) do if e.field == field then return true end end
    return false
  end

  describe("POST /auth/register", function()
    it("creates a buyer and answers 201 with the user and no password fields", function()
      local email = U.email()
      local res = register { email = email, password = U.PASSWORD, name = "Ann" }
      assert.equal(201, res.status, res.body)
      assert.equal("application/json", res.headers["content-type"])
      assert.equal(email, res.json.email)
      assert.equal("buyer", res.json.role)
      assert.equal("Ann", res.json.name)
      assert.matches("^%x+%-%x+%-%x+%-%x+%-%x+$", res.json.id)
      assert.equal("/users/" .. res.json.id, res.headers.location)
      assert.is_nil(res.json.password)
      assert.is_nil(res.json.password_hash)
      assert.is_falsy(res.body:find("argon2", 1, true))
    end)

    it("emits user.registered through the outbox to mercato.events, with the CONTRACT envelope", function()
      local queue = require "queue"
      local Q = "spec.user-registered"
      assert(queue.declare_consumer_queue(Q, { bindings = { "user.registered" }, prefetch = 50 }))
      while true do   -- drain what earlier runs left
        local m = queue.next(Q, 100)
        if not m then break end
        queue.ack(m.delivery_tag)
      end
      local email = U.email("event")
      local user = register({ email = email, password = U.PASSWORD, name = "Eve" }).json
      local found
      for _ = 1, 50 do
        local m = queue.next(Q, 200)
        if m then
          queue.ack(m.delivery_tag)
          local ev = cjson.decode(m.body)
          if ev and ev.data and ev.data.email == email then found = { m = m, ev = ev } break end
        end
      end
      assert.is_table(found, "no user.registered event for " .. email)
      local ev, m = found.ev, found.m
      assert.equal("user.registered", ev.type)
      assert.equal("user.registered", m.type)
      assert.equal(ev.id, m.message_id)
      assert.equal(2, m.delivery_mode)
      assert.equal(1, ev.version)
      assert.equal("user", ev.source)
      assert.matches("^%d%d%d%d%-%d%d%-%d%dT[%d:.]+Z$", ev.occurred_at)
      assert.matches("^00%-%x+%-%x+%-%x%x$", ev.traceparent)
      assert.is_string(ev.correlation_id)
      assert.same({ user_id = user.id, email = email, name = "Eve", role = "buyer" }, ev.data)
    end)

    it("lets a client choose the seller role", function()
      local res = register { email = U.email(), password = U.PASSWORD, name = "Sam", role = "seller" }
      assert.equal(201, res.status)
      assert.equal("seller", res.json.role)
    end)

    it("refuses role admin with 400, never creating an admin", function()
      local email = U.email()
      local p = assert_problem(register { email = email, password = U.PASSWORD, name = "Eve", role = "admin" }, 400)
      assert.is_true(has_error(p, "role"))
      assert.equal("0", U.psql("SELECT count(*) FROM users WHERE lower(email) = lower('" .. email .. "')"))
    end)

    it("refuses unknown fields with 400 naming them (no mass assignment)", function()
      for _, field in ipairs({ "id", "disabled", "status", "password_hash", "created_at" }) do
        local doc = { email = U.email(), password = U.PASSWORD, name = "M" }
        doc[field] = field == "disabled" and true or "x"
        local p = assert_problem(register(doc), 400)
        assert.is_true(has_error(p, field), field)
      end
    end)

    it("answers 409 for an email already taken in another letter case", function()
      local email = U.email("Case")
      assert.equal(201, register({ email = email, password = U.PASSWORD, name = "A" }).status)
      assert_problem(register { email = email:upper(), password = U.PASSWORD, name = "B" }, 409)
      assert_problem(register { email = email:lower(), password = U.PASSWORD, name = "C" }, 409)
    end)

    it("answers 400 for malformed JSON and for JSON that is not an object", function()
      for _, body in ipairs({ "{", '{"email": }', "nul", '{"a":1}}', "", "[]", "[1,2]", '"text"', "42", "null", "true" }) do
        local res = U.post_json(svc, "/auth/register", body)
        assert_problem(res, 400)
      end
    end)

    it("answers 415 when the body is not declared as JSON", function()
      local res = U.post_json(svc, "/auth/register", { email = U.email(), password = U.PASSWORD, name = "A" },
        { headers = { ["Content-Type"] = "text/plain" } })
      assert_problem(res, 415)
      res = U.request(svc, "POST", "/auth/register", { body = '{"email":"a@b.co"}' })
      assert_problem(res, 415)
    end)

    it("answers 422 naming each missing field", function()
      local p = assert_problem(register {}, 422)
      assert.is_true(has_error(p, "email"))
      assert.is_true(has_error(p, "password"))
      assert.is_true(has_error(p, "name"))
    end)

    it("answers 422 for fields of the wrong type", function()
      local p = assert_problem(register { email = 5, password = { "x" }, name = false }, 422)
      assert.is_true(has_error(p, "email"))
      assert.is_true(has_error(p, "password"))
      assert.is_true(has_error(p, "name"))
    end)

    it("answers 422 for addresses that are not email addresses", function()
      for _, bad in ipairs({ "plain", "a@b", "@example.com", "a@", "a b@example.com", "a@exa mple.com",
                             "a@@example.com", "a@example..com", "<a>@example.com", string.rep("a", 250) .. "@e.com" }) do
        local p = assert_problem(register { email = bad, password = U.PASSWORD, name = "A" }, 422)
        assert.is_true(has_error(p, "email"), bad)
      end
    end)

    it("answers 422 for passwords under 8 or over 128 characters, counting characters not bytes", function()
      assert.is_true(has_error(assert_problem(register { email = U.email(), password = "1234567", name = "A" }, 422), "password"))
      local long = assert_problem(register { email = U.email(), password = string.rep("p", 129), name = "A" }, 422)
      assert.is_true(has_error(long, "password"))
      assert.equal(201, register({ email = U.email(), password = string.rep("p", 128), name = "A" }).status)
      assert.equal(201, register({ email = U.email(), password = "12345678", name = "A" }).status)
      -- 8 characters of 2 bytes each: 16 bytes, but 8 characters; 100 of them are 200 bytes, 100 characters.
      assert.equal(201, register({ email = U.email(), password = string.rep("é", 8), name = "A" }).status)
      assert.equal(201, register({ email = U.email(), password = string.rep("é", 100), name = "A" }).status)
      assert_problem(register { email = U.email(), password = string.rep("é", 7), name = "A" }, 422)
    end)

    it("refuses a password that is not UTF-8 without a 500", function()
      local body = '{"email":"' .. U.email() .. '","password":"abc\255\254defgh","name":"A"}'
      local res = U.post_json(svc, "/auth/register", body)
      assert.is_true(res.status == 400 or res.status == 422, res.body)
      assert.equal("application/problem+json", res.headers["content-type"])
      body = '{"email":"' .. U.email() .. '","password":"abc\\ud800defgh","name":"A"}'   -- a lone surrogate
      res = U.post_json(svc, "/auth/register", body)
      assert.is_true(res.status == 400 or res.status == 422, res.body)
    end)

    it("stores SQL and script injection strings verbatim and never runs them", function()
      local name = "Robert'); DROP TABLE users;-- <script>alert(1)</script>"
      local res = register { email = U.email(), password = "' OR '1'='1' --", name = name }
      assert.equal(201, res.status, res.body)
      assert.equal(name, res.json.name)
      assert.matches("^%d+$", U.psql("SELECT count(*) FROM users"))
      local login = U.post_json(svc, "/auth/login", { email = "' OR 1=1 --", password = "' OR '1'='1' --" })
      assert.equal(401, login.status)   -- not an account, and not SQL
      login = U.post_json(svc, "/auth/login", { email = "x@example.com' OR '1'='1", password = "' OR '1'='1' --" })
      assert.equal(401, login.status)
    end)

    it("answers 413 for a body over the auth endpoints' limit", function()
      local res = U.post_json(svc, "/auth/register",
        { email = U.email(), password = U.PASSWORD, name = string.rep("n", 64 * 1024) })
      assert.equal(413, res.status)
    end)

    it("answers 405 with Allow for another method", function()
      local res = U.request(svc, "GET", "/auth/register")
      assert.equal(405, res.status)
      assert.matches("POST", res.headers.allow)
    end)
  end)

  describe("POST /auth/login", function()
    local user

    setup(function() user = U.register(svc) end)

    it("answers 200 with a Bearer access token, its lifetime and a refresh token", function()
      local res = U.post_json(svc, "/auth/login", { email = user.email, password = U.PASSWORD })
      assert.equal(200, res.status, res.body)
      assert.equal("Bearer", res.json.token_type)
      assert.equal(900, res.json.expires_in)
      assert.is_string(res.json.refresh_token)
      assert.is_true(#res.json.refresh_token >= 43)
      assert.equal("no-store", res.headers["cache-control"])
      local c = U.claims(res.json.access_token)
      assert.equal(user.id, c.sub)
      assert.equal("buyer", c.role)
      assert.equal("mercato", c.iss)
      assert.equal("mercato", c.aud)
      assert.equal(900, c.exp - c.iat)
      assert.is_string(c.jti)
      assert.is_string(c.scope)
      local header = cjson.decode(require("crypto").base64url_decode(res.json.access_token:match("^[^.]+")))
      assert.equal("RS256", header.alg)
      assert.is_string(header.kid)
    end)

    it("accepts the email in any letter case", function()
      assert.equal(200, U.post_json(svc, "/auth/login", { email = user.email:upper(), password = U.PASSWORD }).status)
    end)

    it("gives the same 401 for a wrong password and an unknown email, in about the same time", function()
      local socket = require "socket"
      local function timed(doc)
        local t0 = socket.gettime()
        local res = U.post_json(svc, "/auth/login", doc)
        return res, socket.gettime() - t0
      end
      local function median(t) table.sort(t) return t[math.ceil(#t / 2)] end
      local known, unknown = {}, {}
      for i = 1, 3 do   -- 3 failures: under the lock-out threshold
        local a, b
        a, known[i] = timed { email = user.email, password = "not the password" }
        b, unknown[i] = timed { email = U.email("ghost"), password = "not the password" }
        assert_problem(a, 401)
        assert_problem(b, 401)
        assert.equal(a.body, b.body)
        assert.equal(a.headers["www-authenticate"], b.headers["www-authenticate"])
      end
      local t1, t2 = median(known), median(unknown)
      local why = ("unknown %.1f ms vs wrong password %.1f ms"):format(t2 * 1000, t1 * 1000)
      -- Both run one argon2id verification (tens of ms); an unknown user is not a fast path.
      assert.is_true(t2 > t1 / 4, why)
      assert.is_true(t2 < t1 * 4 + 0.05, why)
      U.post_json(svc, "/auth/login", { email = user.email, password = U.PASSWORD })   -- resets the failure count
    end)

    it("answers 422 for missing fields and 400 for unknown ones", function()
      assert_problem(U.post_json(svc, "/auth/login", { email = user.email }), 422)
      assert_problem(U.post_json(svc, "/auth/login", { email = user.email, password = "x", remember = true }), 400)
      assert_problem(U.post_json(svc, "/auth/login", "[]"), 400)
    end)
  end)

  describe("POST /auth/logout", function()
    it("requires a bearer token (401 with WWW-Authenticate)", function()
      local res = U.post_json(svc, "/auth/logout", {})
      assert.equal(401, res.status)
      assert.matches("^Bearer", res.headers["www-authenticate"])
    end)

    it("revokes the caller's refresh token given in the body", function()
      local s = U.session(svc)
      local res = U.post_json(svc, "/auth/logout", { refresh_token = s.refresh }, { token = s.access })
      assert.equal(204, res.status, res.body)
      local r = U.post_form(svc, "/oauth/token", { grant_type = "refresh_token", refresh_token = s.refresh })
      assert.equal(400, r.status)
      assert.equal("invalid_grant", r.json.error)
    end)

    it("without a body revokes the session the access token belongs to", function()
      local s = U.session(svc)
      local res = U.request(svc, "POST", "/auth/logout", { token = s.access })
      assert.equal(204, res.status, res.body)
      local r = U.post_form(svc, "/oauth/token", { grant_type = "refresh_token", refresh_token = s.refresh })
      assert.equal("invalid_grant", r.json.error)
    end)

    it("does not revoke another user's refresh token", function()
      local a, b = U.session(svc), U.session(svc)
      assert.equal(204, U.post_json(svc, "/auth/logout", { refresh_token = b.refresh }, { token = a.access }).status)
      local r = U.post_form(svc, "/oauth/token", { grant_type = "refresh_token", refresh_token = b.refresh })
      assert.equal(200, r.status, r.body)
    end)
  end)
end)
