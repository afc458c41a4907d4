-- spec/integration/restart_spec.lua: the db, cache and queue bindings ride out a restart of
-- their server — while it is down each call fails cleanly (nil, err, "unavailable", never a
-- raise or a crash) and /ready answers 503 naming it; once it is back, calls succeed again and
-- /ready is 200, without restarting mercato. The servers are the stack's own, stopped and
-- started with `scripts/dev/stack.sh stop|start <name>` (their data survives); every other
-- suite's connections reconnect the same way. The fixture is spec/fixtures/outbox (order).
--   . <(scripts/dev/stack.sh env); export DATABASE_URL=$DATABASE_URL_PRODUCT
--   build/mercato lua spec/support/busted.lua -o TAP spec/integration/restart_spec.lua
-- (Run it against a private stack with RUN_DIR and the *_PORT variables of stack.sh set, if
-- others are using the shared one.)
package.path = "scripts/?.lua;" .. package.path
local db = require "db"
local cache = require "cache"
local queue = require "queue"
local host = require "host"
local H = require "fixtures.outbox.helpers"

local base_url = assert(os.getenv("DATABASE_URL"), "DATABASE_URL must be set (scripts/dev/stack.sh env)")
assert(os.getenv("AMQP_URL") and os.getenv("REDIS_URL"), "AMQP_URL and REDIS_URL must be set (scripts/dev/stack.sh env)")

local run = H.run_id()
local prefix = "spec" .. run
local things_q = "spec.restart." .. run .. ".things"
local dbname = "mercato_restart_spec_" .. run
local url, srv, srv_pid

local function stack(action, name)
  local out, rc = H.sh("scripts/dev/stack.sh " .. action .. " " .. name)
  assert(rc == 0, "stack.sh " .. action .. " " .. name .. " failed:\n" .. out)
end

-- The in-process call for each dependency: → ok, err, code.
local probes = {
  postgres = function() return db.query_one("SELECT 1 AS one") end,
  redis = function() return cache.call("PING") end,
  rabbitmq = function()
    return queue.publish(prefix .. "-restart.ping", "{}", { message_id = "ping" })   -- bound to no queue
  end,
}
local check_of = { postgres = "db", redis = "cache", rabbitmq = "queue" }
local deps_key = { postgres = "db", redis = "cache", rabbitmq = "queue" }

local function ready() return H.call(srv, "GET", "/ready") end

-- Stop name, check the failure mode in this process and over HTTP, start it, check recovery.
local function restart_and_check(name, while_down)
  local probe, check = probes[name], check_of[name]
  assert.is_truthy(probe(), name .. " is not up before the restart")
  stack("stop", name)
  local ok_start = false
  local ok, err = pcall(function()
    local t0 = host.now()
    local v, perr, code = probe()
    local took = host.now() - t0
    assert.is_nil(v)
    assert.is_string(perr)
    assert.are.equal("unavailable", code, perr)
    assert.is_true(took < 5, ("the failing call took %.1f s"):format(took))

    local status, body = ready()
    assert.are.equal(503, status)
    assert.are.equal("unavailable", body.status)
    assert.matches("^down", body.checks[check])
    for other, c in pairs(check_of) do
      if other ~= name then assert.are.equal("up", body.checks[c], other .. " should still be up") end
    end
    local _, deps = H.call(srv, "GET", "/deps")
    assert.are.equal("unavailable", deps[deps_key[name]])
    if while_down then while_down() end
    stack("start", name)
    ok_start = true
  end)
  if not ok_start then pcall(stack, "start", name) end   -- never leave the stack broken
  if not ok then error(err, 0) end

  assert.is_truthy(H.wait_for(function() return probe() end, 20, 0.2), name .. ": calls still fail after the restart")
  assert.is_truthy(H.wait_for(function() return ready() == 200 end, 20, 0.2), "/ready did not come back to 200")
  local _, deps = H.call(srv, "GET", "/deps")
  assert.are.same({ db = "ok", cache = "ok", queue = "ok" }, deps)
  assert.are.equal(srv_pid, srv.pid)   -- the same process all along
  assert.is_true(os.execute("kill -0 " .. srv.pid .. " 2>/dev/null") == 0, "mercato died")
end

local function seen(event_id)
  return tonumber(H.psql(url, ("SELECT count(*) FROM seen WHERE event_id = '%s'"):format(event_id)))
end

describe("restarting a dependency", function()
  setup(function()
    url = H.create_db(base_url, dbname)
    srv = H.start(url, prefix, things_q)
    srv_pid = srv.pid
    assert.is_truthy(H.wait_for(function() return ready() == 200 end, 10), "the fixture never became ready")
  end)

  teardown(function()
    if srv then srv:stop() end
    H.drop_db(base_url, dbname)
    H.cleanup()
  end)

  it("PostgreSQL: calls fail as unavailable while it is down and work again after, without a mercato restart", function()
    restart_and_check("postgres", function()
      local status, body = H.call(srv, "POST", "/things", { name = "while-pg-down" })
      assert.are.equal(503, status)
      assert.are.equal("unavailable", body.code)
    end)
    local status, body = H.call(srv, "POST", "/things", { name = "after-pg" })
    assert.are.equal(201, status)
    assert.is_truthy(H.wait_for(function() return seen(body.event_id) == 1 end, 15), "the event was not relayed and consumed")
  end)

  it("Redis: calls fail as unavailable while it is down and work again after, without a mercato restart", function()
    restart_and_check("redis")
  end)

  it("RabbitMQ: calls fail as unavailable while it is down; the outbox keeps the events and relays them after", function()
    local pending
    restart_and_check("rabbitmq", function()
      local status, body = H.call(srv, "POST", "/things", { name = "while-rabbit-down" })
      assert.are.equal(201, status)   -- the database took it; the event waits in the outbox
      pending = body.event_id
    end)
    assert.is_truthy(H.wait_for(function() return seen(pending) == 1 end, 20),
      "the event written while the broker was down was not delivered after it came back")
    local row = H.rows(url, ("SELECT sent_at, attempts FROM outbox WHERE id = '%s'"):format(pending))[1]
    assert.is_string(row.sent_at)
    local status, body = H.call(srv, "POST", "/things", { name = "after-rabbit" })
    assert.are.equal(201, status)
    assert.is_truthy(H.wait_for(function() return seen(body.event_id) == 1 end, 15), "the consumer did not resume")
  end)
end)
