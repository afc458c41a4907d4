-- The user service's admin side against a real mercato: the bootstrap admin (idempotent, on
-- an empty database too), GET /users with pagination and search, GET/PATCH /users/{id}, role
-- checks declared on the routes, and disabled accounts.
local cjson = require "cjson.safe"
local U = require "support.user_helpers"

describe("user service admin", function()
  local svc, admin

  setup(function()
    svc = U.start()
    admin = U.admin(svc)
  end)
  teardown(function() assert.equal(0, U.stop(svc)) end)

  local function get(path, token) return U.request(svc, "GET", path, { token = token }) end

  describe("the bootstrap admin", function()
    it("logs in with ADMIN_EMAIL/ADMIN_PASSWORD and carries role admin", function()
      assert.equal("admin", U.claims(admin).role)
    end)

    it("is created once however often the service starts", function()
      local again = U.start()
      U.stop(again)
      assert.equal("1", U.psql("SELECT count(*) FROM users WHERE lower(email) = lower('" .. U.ADMIN_EMAIL .. "')"))
      assert.equal("1", U.psql("SELECT count(*) FROM oauth_clients WHERE id = '" .. U.CLIENT_ID .. "'"))
    end)

    it("exists on a service started on an empty database, which it migrates itself", function()
      local base = assert(os.getenv("DATABASE_URL_USER"))
      local db = "mercato_user_spec_" .. tostring(os.time())
      local root = base:gsub("/[^/]*$", "/postgres")
      U.psql("CREATE DATABASE " .. db, root)
      local fresh = U.start { DATABASE_URL = base:gsub("/[^/]*$", "/" .. db) }
      local ok, err = pcall(function()
        local res = U.request(fresh, "GET", "/ready")
        assert.equal(200, res.status, res.body)
        assert.equal(200, U.post_json(fresh, "/auth/login", { email = U.ADMIN_EMAIL, password = U.ADMIN_PASSWORD }).status)
        local t = U.post_form(fresh, "/oauth/token", { grant_type = "client_credentials", client_id = U.CLIENT_ID,
          client_secret = U.CLIENT_SECRET })
        assert.equal(200, t.status, t.body)
      end)
      U.stop(fresh)
      U.psql("DROP DATABASE " .. db, root)
      assert(ok, err)
    end)
  end)

  describe("GET /users", function()
    local tag, made = "pg" .. tostring(os.time()), {}

    setup(function()
      for i = 1, 5 do made[i] = U.register(svc, { email = U.email(tag) }) end
    end)

    it("answers 401 without a token and 403 for a buyer or a seller", function()
      assert.equal(401, get("/users").status)
      assert.equal(403, get("/users", U.session(svc).access).status)
      assert.equal(403, get("/users", U.session(svc, { role = "seller" }).access).status)
    end)

    it("lists users as {items, next_cursor}, 20 by default", function()
      local res = get("/users", admin)
      assert.equal(200, res.status, res.body)
      assert.is_table(res.json.items)
      assert.is_true(#res.json.items <= 20)
      assert.is_nil(res.json.items[1].password_hash)
      assert.is_true(res.json.next_cursor == cjson.null or type(res.json.next_cursor) == "string")
    end)

    it("walks every page with an opaque cursor, without repeats, ending with null", function()
      local seen, pages, cursor = {}, 0, nil
      repeat
        local res = get("/users?limit=2&email=" .. tag .. (cursor and ("&cursor=" .. cursor) or ""), admin)
        assert.equal(200, res.status, res.body)
        assert.is_true(#res.json.items <= 2)
        for _, u in ipairs(res.json.items) do
          assert.is_nil(seen[u.id])
          seen[u.id] = true
        end
        cursor = res.json.next_cursor ~= cjson.null and res.json.next_cursor or nil
        pages = pages + 1
      until not cursor or pages > 10
      assert.equal(3, pages)
      for _, u in ipairs(made) do assert.is_true(seen[u.id]) end
    end)

    it("finds a user by email, exactly and case-insensitively", function()
      local res = get("/users?email=" .. made[3].email:upper(), admin)
      assert.equal(200, res.status)
      assert.equal(1, #res.json.items)
      assert.equal(made[3].id, res.json.items[1].id)
      local none = get("/users?email=nobody-here%40example.com", admin)
      assert.matches('"items":%[%]', none.body)   -- an empty list stays a JSON array
      assert.matches('"next_cursor":null', none.body)
    end)

    it("answers 400 for a bad limit or a forged cursor, and caps the limit at 100", function()
      for _, q in ipairs({ "limit=0", "limit=-1", "limit=abc", "limit=1.5", "cursor=not-a-cursor", "cursor=e30",
                           "cursor=" .. require("crypto").base64url_encode('{"id":"1; DROP TABLE users"}') }) do
        local res = get("/users?" .. q, admin)
        assert.equal(400, res.status, q .. " → " .. res.body)
        assert.equal("application/problem+json", res.headers["content-type"])
      end
      assert.equal(200, get("/users?limit=1000", admin).status)
      assert.is_true(#get("/users?limit=1000", admin).json.items <= 100)
    end)
  end)

  describe("GET /users/{id}", function()
    it("answers the user to an admin", function()
      local u = U.register(svc)
      local res = get("/users/" .. u.id, admin)
      assert.equal(200, res.status)
      assert.equal(u.email, res.json.email)
    end)

    it("answers 404 for an unknown or malformed id", function()
      assert.equal(404, get("/users/00000000-0000-7000-8000-000000000000", admin).status)
      assert.equal(404, get("/users/not-a-uuid", admin).status)
      assert.equal(404, get("/users/1%27%20OR%20%271%27=%271", admin).status)
    end)

    it("answers 403 to a non-admin, for another user's id and for their own", function()
      local a, b = U.session(svc), U.register(svc)
      assert.equal(403, get("/users/" .. b.id, a.access).status)
      assert.equal(403, get("/users/" .. a.user.id, a.access).status)
    end)
  end)

  describe("PATCH /users/{id}", function()
    local function patch(id, doc, token) return U.patch_json(svc, "/users/" .. id, doc, { token = token or admin }) end

    it("changes the role, and the user's next token carries it", function()
      local s = U.session(svc)
      local res = patch(s.user.id, { role = "admin" })
      assert.equal(200, res.status, res.body)
      assert.equal("admin", res.json.role)
      local t = U.login(svc, s.email)
      assert.equal("admin", U.claims(t.access_token).role)
      assert.equal(200, get("/users", t.access_token).status)
    end)

    it("disables an account: no login, no refresh; enabling it again restores login", function()
      local s = U.session(svc)
      assert.equal(true, patch(s.user.id, { disabled = true }).json.disabled)
      local login = U.post_json(svc, "/auth/login", { email = s.email, password = U.PASSWORD })
      assert.equal(403, login.status)
      local grant = U.post_form(svc, "/oauth/token", { grant_type = "password", username = s.email, password = U.PASSWORD })
      assert.equal("invalid_grant", grant.json.error)
      local refresh = U.post_form(svc, "/oauth/token", { grant_type = "refresh_token", refresh_token = s.refresh })
      assert.equal("invalid_grant", refresh.json.error)
      assert.equal(false, patch(s.user.id, { disabled = false }).json.disabled)
      assert.equal(200, U.post_json(svc, "/auth/login", { email = s.email, password = U.PASSWORD }).status)
    end)

    it("answers 400 for fields an admin does not set here, 422 for bad values", function()
      local u = U.register(svc)
      assert.equal(400, patch(u.id, { email = "x@example.com" }).status)
      assert.equal(400, patch(u.id, { password = "whatever 12" }).status)
      assert.equal(422, patch(u.id, { role = "superuser" }).status)
      assert.equal(422, patch(u.id, { disabled = "yes" }).status)
      assert.equal(400, patch(u.id, "nope").status)
    end)

    it("answers 404 for an unknown id and 403 to a non-admin", function()
      assert.equal(404, patch("00000000-0000-7000-8000-000000000000", { role = "seller" }).status)
      assert.equal(404, patch("nope", { role = "seller" }).status)
      local s, other = U.session(svc), U.register(svc)
      assert.equal(403, patch(other.id, { role = "seller" }, s.access).status)
      assert.equal(403, patch(s.user.id, { role = "admin" }, s.access).status)
      assert.equal("buyer", get("/users/" .. s.user.id, admin).json.role)
    end)
  end)
end)
