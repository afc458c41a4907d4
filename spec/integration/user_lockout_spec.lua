-- The failed-login lock-out (issue 18) against a real user service: failures count per
-- (account, client IP), per client IP, and per device cookie — never per account alone — so
-- that nobody can keep an owner locked out, and a client the owner logged in from before (its
-- signed mercato_device cookie) is never locked out by strangers' failures; the answers reveal
-- nothing about which addresses exist. Clients are told apart by X-Forwarded-For (the peer is
-- loopback, a trusted proxy).
local crypto = require "crypto"
local U = require "support.user_helpers"

local run = crypto.random(3)
local function fresh_ip(n)   -- an address of its own per run and per test
  return ("10.%d.%d.%d"):format(run:byte(1), run:byte(2), (run:byte(3) + n) % 250 + 1)
end

describe("the login lock-out", function()
  local svc
  setup(function() svc = U.start { LOGIN_IP_FAILURES = "12" } end)
  teardown(function() assert.equal(0, U.stop(svc)) end)

  -- POST /auth/login from ip, with a device cookie when given.
  local function login(email, password, ip, cookie)
    local headers = { ["X-Forwarded-For"] = ip }
    if cookie then headers.Cookie = "theme=dark; mercato_device=" .. cookie end
    return U.post_json(svc, "/auth/login", { email = email, password = password }, { headers = headers })
  end
  local function device_cookie(res)
    return (res.headers["set-cookie"] or ""):match("mercato_device=([^;]+)")
  end
  local function fail(email, ip, n, cookie)
    local statuses = {}
    for i = 1, n do statuses[i] = login(email, "wrong password", ip, cookie).status end
    return statuses
  end

  it("sets a signed mercato_device cookie (HttpOnly, Secure, SameSite=Strict) on a successful login only", function()
    local s = U.session(svc)
    local res = login(s.email, s.password, fresh_ip(1))
    assert.equal(200, res.status)
    local sc = res.headers["set-cookie"]
    assert.matches("^mercato_device=%x+%.%x+%.%d+%.[%w_-]+; ", sc)
    for _, attr in ipairs({ "HttpOnly", "Secure", "SameSite=Strict", "Path=/", "Max-Age=" }) do
      assert.truthy(sc:find(attr, 1, true), attr)
    end
    assert.is_nil(login(s.email, "wrong password", fresh_ip(1)).headers["set-cookie"])
    assert.is_nil(login(U.email("ghost"), "wrong password", fresh_ip(1)).headers["set-cookie"])
  end)

  it("locks a stranger's (account, IP) after 5 failures, even for the right password", function()
    local s = U.session(svc)
    local attacker = fresh_ip(2)
    assert.same({ 401, 401, 401, 401, 401, 429 }, fail(s.email, attacker, 6))
    local res = login(s.email, s.password, attacker)
    assert.equal(429, res.status)
    assert.matches("^%d+$", res.headers["retry-after"])
    assert.equal("5", res.headers["ratelimit-limit"])
  end)

  it("does not lock the owner out from another IP while a stranger is locked out", function()
    local s = U.session(svc)
    fail(s.email, fresh_ip(3), 8)
    assert.equal(429, login(s.email, s.password, fresh_ip(3)).status)
    assert.equal(200, login(s.email, s.password, fresh_ip(4)).status)
  end)

  it("lets a device the owner logged in from before in, though strangers on its IP are locked out", function()
    local s = U.session(svc)
    local shared = fresh_ip(5)                      -- the owner and the attacker behind one NAT
    local cookie = device_cookie(login(s.email, s.password, shared))
    assert.is_string(cookie)
    fail(s.email, shared, 8)                         -- the attacker, without the cookie
    assert.equal(429, login(s.email, s.password, shared).status)
    local res = login(s.email, s.password, shared, cookie)
    assert.equal(200, res.status, res.body)
    assert.is_string(device_cookie(res))             -- renewed
  end)

  it("locks a device cookie after its own 5 failures, and only that cookie", function()
    local s = U.session(svc)
    local ip = fresh_ip(6)
    local cookie = device_cookie(login(s.email, s.password, ip))
    assert.same({ 401, 401, 401, 401, 401, 429 }, fail(s.email, ip, 6, cookie))
    assert.equal(429, login(s.email, s.password, ip, cookie).status)
    -- the stranger counters were not touched: the same IP without the cookie still gets in
    assert.equal(200, login(s.email, s.password, ip).status)
  end)

  it("ignores a forged, altered or another account's device cookie (the client is a stranger)", function()
    local s, other = U.session(svc), U.session(svc)
    local ip = fresh_ip(7)
    local mine = device_cookie(login(s.email, s.password, fresh_ip(8)))
    local theirs = device_cookie(login(other.email, other.password, fresh_ip(8)))
    fail(s.email, ip, 6)
    local altered = mine:gsub("%.(%d+)%.", function(exp) return "." .. (tonumber(exp) + 1) .. "." end, 1)
    local flipped = mine:sub(1, -2) .. (mine:sub(-1) == "A" and "B" or "A")
    for _, c in ipairs({ altered, flipped, theirs, "x.y.1.z", ("a"):rep(300) }) do
      assert.equal(429, login(s.email, s.password, ip, c).status, c)
    end
    assert.equal(200, login(s.email, s.password, ip, mine).status)
  end)

  it("locks strangers on one IP out of every account after LOGIN_IP_FAILURES failures across accounts", function()
    local s = U.session(svc)
    local sprayer = fresh_ip(9)
    for i = 1, 12 do
      assert.equal(401, login(U.email("spray" .. i), "wrong password", sprayer).status)
    end
    assert.equal(429, login(s.email, s.password, sprayer).status)
    assert.equal(200, login(s.email, s.password, fresh_ip(10)).status)
  end)

  it("answers an unknown address exactly as a real one, locked or not", function()
    local s = U.session(svc)
    local ghost = U.email("ghost")
    local function answers(email, ip)
      local out = {}
      for i = 1, 7 do
        local res = login(email, "wrong password", ip)
        out[i] = { res.status, res.body:gsub('"request_id":"[^"]*"', ""), res.headers["retry-after"],
                   res.headers["set-cookie"], res.headers["ratelimit-limit"] }
      end
      return out
    end
    assert.same(answers(s.email, fresh_ip(11)), answers(ghost, fresh_ip(12)))
    -- and the password grant locks the same way
    local res = U.post_form(svc, "/oauth/token", { grant_type = "password", username = ghost, password = "x" },
      { headers = { ["X-Forwarded-For"] = fresh_ip(12) } })
    assert.equal(429, res.status)
  end)
end)
