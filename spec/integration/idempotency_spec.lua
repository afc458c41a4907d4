-- Idempotency-Key in the host (CONTRACT §3, Stripe's semantics): a route that declares
-- `idempotency = true` runs behind lib.idempotency. A fixture service
-- (spec/fixtures/idempotency, one table `things`) counts how often the handler really ran.
local cjson = require "cjson.safe"
local crypto = require "crypto"
local http = require "http"
local P = require "support.product_helpers"
local server = require "support.server"

local FIXTURE = "spec/fixtures/idempotency/scripts"
local SCRIPTS   -- the fixture's services/ beside a copy of scripts/lib (made in setup)

describe("Idempotency-Key on a route with idempotency = true", function()
  local srv, dbname, url, token

  local function start(env)
    local e = { DATABASE_URL = url, JWT_PUBLIC_KEY_FILE = select(2, P.keys()), REDIS_URL = os.getenv("REDIS_URL") }
    for k, v in pairs(env or {}) do e[k] = v end
    local s = server.start { service = "payment", scripts = SCRIPTS, env = e, timeout = 20, port = srv and srv.port }
    s.url = "http://127.0.0.1:" .. s.port
    for _ = 1, 100 do
      local r = http.request { method = "GET", url = s.url .. "/ready", timeout_ms = 2000 }
      if r and r.status == 200 then break end
      os.execute("sleep 0.1")
    end
    return s
  end

  setup(function()
    SCRIPTS = P.sh("d=$(mktemp -d /tmp/mercato-idem-spec.XXXXXX) && cp -R scripts/lib " .. FIXTURE ..
      "/services \"$d\"/ && echo \"$d\""):match("(%S+)%s*$")
    dbname = "mercato_idem_spec_" .. crypto.hex(crypto.random(4))
    P.psql(P.db_url("postgres"), "CREATE DATABASE " .. dbname)
    url = P.db_url(dbname)
    srv = start()
    token = P.token("buyer")
  end)
  teardown(function()
    if srv then srv:stop() end
    P.psql(P.db_url("postgres"), "DROP DATABASE IF EXISTS " .. dbname .. " WITH (FORCE)")
    if SCRIPTS then os.execute("rm -rf " .. P.q(SCRIPTS)) end
  end)

  local function post(body, key, opts)
    opts = opts or {}
    local h = { ["Content-Type"] = "application/json" }
    if key then h["Idempotency-Key"] = key end
    if opts.token ~= false then h.Authorization = "Bearer " .. (opts.token or token) end
    local res = assert(http.request { method = "POST", url = srv.url .. "/things" .. (opts.query or ""), headers = h,
      body = body, timeout_ms = 15000 })
    res.json = cjson.decode(res.body)
    return res
  end
  local function ran(body) return tonumber(P.psql(url, "SELECT count(*) FROM things WHERE body = '" .. body .. "'")) end
  local function key() return "key-" .. crypto.hex(crypto.random(8)) end

  it("runs every request without a key", function()
    local body = '{"a":"' .. key() .. '"}'
    assert.equal(201, post(body).status)
    assert.equal(201, post(body).status)
    assert.equal(2, ran(body))
  end)

  it("replays the first answer byte for byte, with Idempotent-Replayed, without running again", function()
    local k, body = key(), '{"b":"' .. key() .. '"}'
    local first = post(body, k)
    assert.equal(201, first.status)
    assert.is_nil(first.headers["idempotent-replayed"])
    local again = post(body, k)
    assert.equal(201, again.status)
    assert.equal(first.body, again.body)
    assert.equal(first.headers["location"], again.headers["location"])
    assert.equal(first.headers["content-type"], again.headers["content-type"])
    assert.equal("true", again.headers["idempotent-replayed"])
    assert.equal(1, ran(body))
  end)

  it("answers 422 for the same key with another body, and scopes keys per caller", function()
    local k, body = key(), '{"c":"' .. key() .. '"}'
    assert.equal(201, post(body, k).status)
    local other = post('{"c":"something else"}', k)
    assert.equal(422, other.status)
    assert.equal("application/problem+json", other.headers["content-type"])
    assert.matches("different request", other.json.detail)
    -- the same key from another caller is another key
    local t2 = P.token("buyer")
    assert.equal(201, post(body, k, { token = t2 }).status)
    assert.equal(2, ran(body))
  end)

  it("refuses keys longer than 255 bytes or with control characters (400), accepts 255", function()
    local body = '{"d":"' .. key() .. '"}'
    local res = post(body, string.rep("k", 256))
    assert.equal(400, res.status)
    assert.matches("255", res.json.detail)
    assert.equal(0, ran(body))
    assert.equal(201, post(body, string.rep("k", 254) .. crypto.hex(crypto.random(1)):sub(1, 1)).status)
  end)

  it("lets a retry run again after a 5xx (the key is freed, nothing was stored)", function()
    local k, body = key(), '{"e":"' .. key() .. '"}'
    assert.equal(503, post(body, k, { query = "?status=503" }).status)
    local res = post(body, k)
    assert.equal(201, res.status)
    assert.is_nil(res.headers["idempotent-replayed"])
    assert.equal(1, ran(body))
  end)

  it("runs 20 concurrent duplicates once: the rest are 409 while in flight, or the replay", function()
    local k, body = key(), '{"f":"' .. key() .. '"}'
    local dir = ".run/test/idem-" .. crypto.hex(crypto.random(4))
    os.execute("mkdir -p " .. dir)
    local cmd = ("seq 20 | xargs -P 20 -I{} curl -s -o %s/{}.body -w '%%{http_code}\\n' -X POST %s/things -H 'X-Sleep: 0.5' " ..
      "-H 'Content-Type: application/json' -H 'Authorization: Bearer %s' -H 'Idempotency-Key: %s' --data %s")
      :format(dir, srv.url, token, k, P.q(body))
    local out = io.popen(cmd):read("*a")
    local codes = {}
    for c in out:gmatch("%d+") do codes[c] = (codes[c] or 0) + 1 end
    assert.equal(1, ran(body))
    assert.equal(20, (codes["201"] or 0) + (codes["409"] or 0), out)
    assert.is_true((codes["201"] or 0) >= 1)
    assert.is_true((codes["409"] or 0) >= 1, "some duplicates arrived while the first was in flight: " .. out)
    os.execute("rm -rf " .. dir)
  end)

  it("takes over a key whose process died mid-request once the lock passes (recovered = true)", function()
    srv:stop()
    srv = start { IDEMPOTENCY_LOCK_S = "2" }
    local k, body = key(), '{"g":"' .. key() .. '"}'
    -- a request that parks 30 s; the process is killed while it holds the key
    os.execute(("curl -s -m 40 -o /dev/null -X POST '%s/things' -H 'X-Sleep: 30' -H 'Content-Type: application/json' " ..
      "-H 'Authorization: Bearer %s' -H 'Idempotency-Key: %s' --data %s &"):format(srv.url, token, k, P.q(body)))
    local claimed = false
    for _ = 1, 50 do
      local n = P.psql(url, "SELECT count(*) FROM idempotency_keys WHERE key = '" .. k .. "'")
      if tonumber(n) == 1 then claimed = true break end
      os.execute("sleep 0.1")
    end
    assert.is_true(claimed)
    srv:stop("KILL")
    srv = start { IDEMPOTENCY_LOCK_S = "2" }
    local res = post(body, k)
    assert.equal(409, res.status)
    assert.is_string(res.headers["retry-after"])
    os.execute("sleep 2.2")
    res = post(body, k)
    assert.equal(201, res.status)
    assert.is_true(res.json.recovered)
    assert.equal(1, ran(body))
    local replay = post(body, k)
    assert.equal(res.body, replay.body)
  end)

  it("forgets keys after 24 h: an expired key runs again and the purge deletes it", function()
    local k, body = key(), '{"h":"' .. key() .. '"}'
    assert.equal(201, post(body, k).status)
    P.psql(url, "UPDATE idempotency_keys SET expires_at = now() - interval '1 second' WHERE key = '" .. k .. "'")
    local res = post(body, k)
    assert.equal(201, res.status)
    assert.is_nil(res.headers["idempotent-replayed"])
    assert.equal(2, ran(body))
    P.psql(url, "UPDATE idempotency_keys SET expires_at = now() - interval '1 second' WHERE key = '" .. k .. "'")
    local prog = SCRIPTS .. "/purge.lua"
    local f = assert(io.open(prog, "w"))
    f:write('package.path = "' .. SCRIPTS .. '/?.lua;" .. package.path\n',
      'print(assert(require("lib.idempotency").purge()))\n')
    f:close()
    local out = P.sh(("SERVICE=payment SCRIPTS_DIR=%s DATABASE_URL=%s %s lua %s"):format(SCRIPTS, P.q(url),
      os.getenv("MERCATO_BIN") or "build/mercato", prog))
    assert.matches("1", out)
    assert.equal("0", P.psql(url, "SELECT count(*) FROM idempotency_keys WHERE key = '" .. k .. "'"))
  end)

  describe("with the answer stored in the handler's transaction (store_in_tx)", function()
    local function post_tx(body, k, headers)
      local h = { ["Content-Type"] = "application/json", Authorization = "Bearer " .. token, ["Idempotency-Key"] = k }
      for name, v in pairs(headers or {}) do h[name] = v end
      local res = assert(http.request { method = "POST", url = srv.url .. "/things-tx", headers = h, body = body,
        timeout_ms = 15000 })
      res.json = cjson.decode(res.body)
      return res
    end
    local function stored(k)
      return P.psql(url, "SELECT coalesce(status::text, 'none') FROM idempotency_keys WHERE key = '" .. k .. "'")
    end

    it("commits the answer with the work: a duplicate right after the commit is the replay, not 409", function()
      local k, body = key(), '{"t":"' .. key() .. '"}'
      -- the first request commits, then parks 3 s before it answers
      os.execute(("curl -s -m 20 -o /dev/null -X POST '%s/things-tx' -H 'X-Sleep-After: 3' " ..
        "-H 'Content-Type: application/json' -H 'Authorization: Bearer %s' -H 'Idempotency-Key: %s' --data %s &")
        :format(srv.url, token, k, P.q(body)))
      local committed = false
      for _ = 1, 50 do
        if ran(body) == 1 then committed = true break end
        os.execute("sleep 0.05")
      end
      assert.is_true(committed)
      assert.equal("201", stored(k))   -- stored by the commit, while the handler still runs
      local res = post_tx(body, k)
      assert.equal(201, res.status)
      assert.equal("true", res.headers["idempotent-replayed"])
      assert.equal(body, res.json.echo)
      assert.equal(1, ran(body))
      os.execute("sleep 3")
      assert.equal(res.body, post_tx(body, k).body)   -- the first answer and every replay: the same bytes
    end)

    it("rolls the answer back with the work: nothing stored, the key freed after a 5xx, a retry runs once", function()
      local k, body = key(), '{"u":"' .. key() .. '"}'
      assert.equal(503, post_tx(body, k, { ["X-Fail"] = "rollback" }).status)
      assert.equal(0, ran(body))
      assert.equal("", stored(k))
      local res = post_tx(body, k)
      assert.equal(201, res.status)
      assert.is_nil(res.headers["idempotent-replayed"])
      assert.equal(1, ran(body))
    end)

    it("stores the answer actually sent when the transaction rolled back and the handler answered 4xx", function()
      local k, body = key(), '{"v":"' .. key() .. '"}'
      assert.equal(409, post_tx(body, k, { ["X-Fail"] = "rollback", ["X-Answer"] = "409" }).status)
      assert.equal(0, ran(body))
      assert.equal("409", stored(k))
      local res = post_tx(body, k)
      assert.equal(409, res.status)
      assert.equal("true", res.headers["idempotent-replayed"])
      assert.equal(0, ran(body))
    end)
  end)

  it("is counted in /metrics", function()
    local res = assert(http.request { method = "GET", url = srv.url .. "/metrics" })
    assert.matches('idempotency_requests_total{route="POST /things",outcome="stored"}', res.body, 1, true)
  end)
end)
