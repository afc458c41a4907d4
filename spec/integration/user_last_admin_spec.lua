-- The last active admin cannot be demoted or disabled (issue 18): PATCH /users/{id} answers
-- 409 (a problem) instead of leaving the platform without an admin — also when two admins
-- demote or disable each other at the same moment. A user service on a database of its own,
-- so that the bootstrap admin starts as the only admin.
local U = require "support.user_helpers"

-- Two PATCH /users/{id} sent at the same moment (two curl processes); their statuses.
local function race(svc, a, b)
  local function cmd(r)
    return ("curl -s -o /dev/null -w '%%{http_code}' -X PATCH -H 'Content-Type: application/json' " ..
      "-H %s --data %s %s"):format(U.sh_quote("Authorization: Bearer " .. r.token),
      U.sh_quote(r.body), U.sh_quote(svc.url .. "/users/" .. r.id))
  end
  local dir = os.tmpname()
  local script = ("(%s > %s.a) & (%s > %s.b) & wait"):format(cmd(a), dir, cmd(b), dir)
  os.execute(script)
  local function read(p)
    local f = io.open(p)
    local s = f and f:read("*a") or ""
    if f then f:close() end
    os.remove(p)
    return tonumber(s)
  end
  os.remove(dir)
  return read(dir .. ".a"), read(dir .. ".b")
end

describe("the last admin", function()
  local svc, root, db_name
  local base, server_db

  setup(function()
    base = assert(os.getenv("DATABASE_URL_USER"))
    db_name = "mercato_user_admins_" .. tostring(os.time())
    server_db = base:gsub("/[^/]*$", "/postgres")
    U.psql("CREATE DATABASE " .. db_name, server_db)
    svc = U.start { DATABASE_URL = base:gsub("/[^/]*$", "/" .. db_name) }
    root = U.login(svc, U.ADMIN_EMAIL, U.ADMIN_PASSWORD)
    root.id = U.claims(root.access_token).sub
  end)
  teardown(function()
    U.stop(svc)
    U.psql("DROP DATABASE IF EXISTS " .. db_name .. " WITH (FORCE)", server_db)
  end)

  local function patch(id, doc, token) return U.patch_json(svc, "/users/" .. id, doc, { token = token }) end
  local function active_admins()
    return tonumber(U.psql("SELECT count(*) FROM users WHERE role = 'admin' AND NOT disabled",
      base:gsub("/[^/]*$", "/" .. db_name)))
  end
  local function admin_session()
    local s = U.session(svc)
    assert.equal(200, patch(s.user.id, { role = "admin" }, root.access_token).status)
    return s
  end

  it("cannot demote or disable themself when alone (409 problem), and stays an admin", function()
    assert.equal(1, active_admins())
    for _, doc in ipairs({ { role = "seller" }, { role = "buyer" }, { disabled = true }, { role = "admin", disabled = true } }) do
      local res = patch(root.id, doc, root.access_token)
      assert.equal(409, res.status, res.body)
      assert.equal("application/problem+json", res.headers["content-type"])
      assert.equal(409, res.json.status)
    end
    assert.equal(1, active_admins())
    assert.equal(200, U.request(svc, "GET", "/users?limit=1", { token = root.access_token }).status)
    -- changes that keep the admin an admin are fine
    assert.equal(200, patch(root.id, { role = "admin", disabled = false }, root.access_token).status)
  end)

  it("can be demoted once another active admin exists; a disabled admin does not count", function()
    local other = admin_session()
    assert.equal(200, patch(other.user.id, { disabled = true }, root.access_token).status)
    assert.equal(409, patch(root.id, { role = "buyer" }, root.access_token).status)   -- the other is disabled
    assert.equal(200, patch(other.user.id, { disabled = false }, root.access_token).status)
    assert.equal(200, patch(root.id, { role = "buyer" }, root.access_token).status)
    local tok = U.login(svc, other.email, other.password).access_token
    assert.equal(409, patch(other.user.id, { disabled = true }, tok).status)
    assert.equal(200, patch(root.id, { role = "admin" }, tok).status)
    assert.equal(200, patch(other.user.id, { role = "buyer" }, root.access_token).status)
    assert.equal(1, active_admins())
  end)

  it("survives two admins demoting or disabling each other at once: one wins, the other is refused", function()
    for round = 1, 8 do
      local a, b = admin_session(), admin_session()
      -- the bootstrap admin steps aside so that a and b are the only two
      local ta = U.login(svc, a.email, a.password).access_token
      local tb = U.login(svc, b.email, b.password).access_token
      assert.equal(200, patch(root.id, { role = "seller" }, ta).status)
      assert.equal(2, active_admins())
      local body = round % 2 == 0 and '{"disabled":true}' or '{"role":"buyer"}'
      local sa, sb = race(svc, { token = ta, id = b.user.id, body = body }, { token = tb, id = a.user.id, body = body })
      -- One wins; the other is refused: 409 (it would remove the last admin), or — when the
      -- winner's change reached it first — 401/403 (its own token was revoked or demoted).
      local why = ("round %d: %s and %s"):format(round, tostring(sa), tostring(sb))
      assert.is_true((sa == 200) ~= (sb == 200), why)
      local loser = sa == 200 and sb or sa
      assert.is_true(loser == 409 or loser == 401 or loser == 403, why)
      assert.equal(1, active_admins())
      -- the winner gives the platform back to the bootstrap admin and steps down
      local winner = sa == 200 and ta or tb
      assert.equal(200, patch(root.id, { role = "admin" }, winner).status)
      for _, s in ipairs({ a, b }) do
        assert.equal(200, patch(s.user.id, { role = "buyer", disabled = false }, root.access_token).status)
      end
      assert.equal(1, active_admins())
    end
  end)
end)
