-- spec/integration/outbox_spec.lua: lib.outbox, lib.consumer and lib.inbox in a real mercato
-- (spec/fixtures/outbox, SERVICE=order) against the stack's PostgreSQL, Redis and RabbitMQ.
-- The fixture gets a database of its own (created and dropped here); its events are typed
-- spec<run>.* and its queues named spec.outbox.<run>.*, so nothing else sees them.
--   . <(scripts/dev/stack.sh env); export DATABASE_URL=$DATABASE_URL_PRODUCT
--   build/mercato lua spec/support/busted.lua -o TAP spec/integration/outbox_spec.lua
package.path = "scripts/?.lua;" .. package.path
local queue = require "queue"
local cache = require "cache"
local crypto = require "crypto"
local json = require "json"
local host = require "host"
local events = require "lib.events"
local outbox = require "lib.outbox"
local H = require "fixtures.outbox.helpers"

local base_url = assert(os.getenv("DATABASE_URL"), "DATABASE_URL must be set (scripts/dev/stack.sh env)")
assert(os.getenv("AMQP_URL") and os.getenv("REDIS_URL"), "AMQP_URL and REDIS_URL must be set (scripts/dev/stack.sh env)")

local run = H.run_id()
local prefix = "spec" .. run
local etype = prefix .. ".thing_created"
local things_q = "spec.outbox." .. run .. ".things"
local observer_q = "spec.outbox." .. run .. ".observer"
local dbname = "mercato_outbox_spec_" .. run
local url, srv

local function count(sql) return tonumber(H.psql(url, "SELECT count(*) FROM (" .. sql .. ") t")) end
local function seen_rows(event_id) return count(("SELECT 1 FROM seen WHERE event_id = '%s'"):format(event_id)) end
local function inbox_rows(event_id) return count(("SELECT 1 FROM inbox WHERE event_id = '%s'"):format(event_id)) end

-- The next message on the observer queue (acked), or nil after ms.
local function observe(ms)
  local m, err, code = queue.next(observer_q, ms or 5000)
  assert.is_nil(err, code)
  if m then assert(queue.ack(m.delivery_tag)) end
  return m
end

local function consumed(outcome)
  return H.metric(srv, ('events_consumed_total{consumer="outbox-spec",outcome="%s"}'):format(outcome))
end

describe("outbox, inbox and consumer", function()
  setup(function()
    url = H.create_db(base_url, dbname)
    -- The observer sees every event of this run, as another service's queue would.
    assert(queue.declare_consumer_queue(observer_q, { bindings = { prefix .. ".*" }, prefetch = 50 }))
    srv = H.start(url, prefix, things_q)
  end)

  teardown(function()
    if srv then srv:stop() end
    H.drop_db(base_url, dbname)
    H.cleanup()
  end)

  it("ships the outbox and inbox tables as the migrations a service copies", function()
    local function read(p) local f = assert(io.open(p)); local s = f:read("*a"); f:close(); return s end
    local mig = H.scripts .. "/services/order/migrations/"
    assert.are.equal(read("scripts/lib/sql/outbox.sql"), read(mig .. "001_outbox.sql"))
    assert.are.equal(read("scripts/lib/sql/inbox.sql"), read(mig .. "002_inbox.sql"))
    local idx = H.psql(url, "SELECT indexdef FROM pg_indexes WHERE indexname = 'outbox_unsent_idx'")
    assert.matches("WHERE (sent_at IS NULL)", idx, 1, true)
  end)

  it("publishes a committed event within a fraction of a second, with the CONTRACT §7 envelope", function()
    local trace = ("ab"):rep(16)
    local t0 = host.now()
    local status, body = H.call(srv, "POST", "/things", { name = "first" },
      { traceparent = "00-" .. trace .. "-" .. ("cd"):rep(8) .. "-01" })
    assert.are.equal(201, status)
    local m = assert(observe(5000), "no event published")
    local took = host.now() - t0
    assert.is_true(took < 1, ("the event left %.3f s after the request"):format(took))

    local ev = json.decode(m.body)
    assert.are.same({ "correlation_id", "data", "id", "occurred_at", "source", "traceparent", "type", "version" },
      (function() local k = {} for key in pairs(ev) do k[#k + 1] = key end table.sort(k) return k end)())
    assert.are.equal(body.event_id, ev.id)
    assert.matches("^%x+%-%x+%-7%x%x%x%-[89ab]%x%x%x%-%x+$", ev.id)   -- uuid v7
    assert.are.equal(etype, ev.type)
    assert.are.equal(1, ev.version)
    assert.matches("^%d%d%d%d%-%d%d%-%d%dT%d%d:%d%d:%d%d%.%d%d%dZ$", ev.occurred_at)
    assert.is_true(math.abs(events.parse_time(ev.occurred_at) - t0) < 5)
    assert.are.equal("order", ev.source)
    assert.is_true(events.valid_uuid(ev.correlation_id))
    assert.are.equal(body.correlation_id, ev.correlation_id)
    assert.is_true(events.valid_traceparent(ev.traceparent))
    assert.are.equal(trace, ev.traceparent:sub(4, 35))   -- the request's trace, a new span
    assert.are.same({ thing_id = body.id, name = "first" }, ev.data)

    assert.are.equal(etype, m.routing_key)
    assert.are.equal("mercato.events", m.exchange)
    assert.are.equal(ev.id, m.message_id)
    assert.are.equal(etype, m.type)
    assert.are.equal(ev.correlation_id, m.correlation_id)
    assert.are.equal("application/json", m.content_type)
    assert.are.equal(2, m.delivery_mode)
    assert.are.equal(ev.traceparent, m.headers.traceparent)

    local row = H.rows(url, ("SELECT sent_at, attempts FROM outbox WHERE id = '%s'"):format(ev.id))[1]
    assert.is_string(row.sent_at)
    assert.are.equal(0, row.attempts)
    assert.is_true(H.wait_for(function() return H.metric(srv, ('events_published_total{type="%s"}'):format(etype)) >= 1 end))
    -- written → confirmed by the broker, per row: what an operator watches for a slow relay
    assert.is_true(H.metric(srv, "outbox_relay_delay_seconds_count") >= 1)
    local sum = H.metric(srv, "outbox_relay_delay_seconds_sum")
    assert.is_true(sum > 0 and sum < 30 * H.metric(srv, "outbox_relay_delay_seconds_count"))
  end)

  it("publishes a row whose envelope has no traceparent or correlation_id (SQL NULL in the relay's row)", function()
    local ev = events.envelope(etype, { thing_id = -2, name = "bare" }, {})
    ev.traceparent, ev.correlation_id = nil, nil
    H.psql(url, ("INSERT INTO outbox (id, type, payload) VALUES ('%s', '%s', %s::jsonb); SELECT pg_notify('%s', '')")
      :format(ev.id, etype, H.q(events.encode(ev)), outbox.CHANNEL))
    local m = assert(observe(5000), "the row was not published")
    assert.are.equal(ev.id, m.message_id)
    assert.is_nil(m.correlation_id)
    assert.is_nil(m.headers.traceparent)
    assert.is_true(H.wait_for(function()
      return count(("SELECT 1 FROM outbox WHERE id = '%s' AND sent_at IS NOT NULL AND attempts = 0"):format(ev.id)) == 1
    end, 5), "the row was not marked sent at its first attempt")
  end)

  it("publishes nothing when the transaction rolls back", function()
    local status = H.call(srv, "POST", "/things-fail", { name = "doomed" })
    assert.are.equal(500, status)
    assert.are.equal(0, count("SELECT 1 FROM things WHERE name = 'doomed'"))
    assert.are.equal(0, count("SELECT 1 FROM outbox WHERE payload->'data'->>'name' = 'doomed'"))
    assert.is_nil(observe(1000))
    -- and the relay is not stuck: the next committed event still flows
    local _, body = H.call(srv, "POST", "/things", { name = "after-rollback" })
    local m = assert(observe(5000))
    assert.are.equal(body.event_id, m.message_id)
  end)

  it("hands each event to its consumer once, in the transaction that records it in the inbox", function()
    local _, body = H.call(srv, "POST", "/things", { name = "consumed", correlation_id = "corr-42" })
    assert(observe(5000))
    assert.is_true(H.wait_for(function() return seen_rows(body.event_id) == 1 end, 5), "the consumer never saw it")
    assert.are.equal(1, inbox_rows(body.event_id))
    local s = H.rows(url, ("SELECT thing_id, correlation_id, type FROM seen WHERE event_id = '%s'"):format(body.event_id))[1]
    assert.are.same({ thing_id = body.id, correlation_id = "corr-42", type = etype }, s)
    assert.is_true(H.metric(srv, 'event_processing_latency_seconds_count{consumer="outbox-spec"}') >= 1)
  end)

  it("skips a duplicate of an event it already processed (same id published twice)", function()
    local dup_before = consumed("duplicate")
    local ev = events.envelope(etype, { thing_id = -1, name = "twice" }, {})
    local bodytext = events.encode(ev)
    for _ = 1, 2 do
      assert(queue.publish(etype, bodytext, { message_id = ev.id, type = etype }))
    end
    assert(observe(5000)); assert(observe(5000))
    assert.is_true(H.wait_for(function() return consumed("duplicate") >= dup_before + 1 end, 5), "no duplicate counted")
    assert.are.equal(1, seen_rows(ev.id))
    assert.are.equal(1, inbox_rows(ev.id))
  end)

  it("processes once an event whose ack was lost when the consumer's connection died after the commit", function()
    local dup_before = consumed("duplicate")
    local _, body = H.call(srv, "POST", "/things", { name = "reset", reset = true })
    assert(observe(5000))
    assert.is_true(H.wait_for(function() return consumed("duplicate") >= dup_before + 1 end, 10),
      "the redelivery was not recognised as a duplicate")
    assert.are.equal(1, seen_rows(body.event_id))
  end)

  it("processes once an event whose consumer process was killed mid-handling", function()
    local _, body = H.call(srv, "POST", "/things", { name = "killed", slow = 3 })
    assert(observe(5000))
    local key = "outbox-spec:inflight:" .. body.event_id
    assert.is_true(H.wait_for(function() return cache.call("GET", key) ~= nil end, 5), "the handler never started")
    srv:stop("KILL")   -- inside the handler's transaction: no commit, no ack
    srv = H.start(url, prefix, things_q)
    assert.is_true(H.wait_for(function() return seen_rows(body.event_id) == 1 end, 15), "not processed after the restart")
    -- No copy can come later: the broker holds nothing for the queue, neither ready nor unacked
    -- (evidence, where a sleep would only be hope).
    assert.is_true(H.wait_for(function()
      local out = H.sh("scripts/dev/stack.sh rabbitmqctl list_queues -q --no-table-headers " ..
        "name messages_ready messages_unacknowledged")
      return out:match(things_q:gsub("%p", "%%%0") .. "%s+0%s+0") ~= nil
    end, 15, 0.2), "the queue still holds a copy of the event")
    assert.are.equal(1, seen_rows(body.event_id))
    assert.are.equal(1, inbox_rows(body.event_id))
  end)

  it("dead-letters a poison event after delivery_limit failed attempts, leaving no trace of them", function()
    local failed_before = consumed("failed")
    local _, body = H.call(srv, "POST", "/things", { name = "poison", poison = true })
    assert(observe(5000))
    local d = assert(queue.next(things_q .. ".dlq", 15000), "nothing in the DLQ")
    assert(queue.ack(d.delivery_tag))
    assert.are.equal(body.event_id, d.message_id)
    assert.are.equal(body.event_id, json.decode(d.body).id)
    assert.is_true(consumed("failed") >= failed_before + 3)   -- first delivery + 2 redeliveries
    assert.are.equal(0, seen_rows(body.event_id))
    assert.are.equal(0, inbox_rows(body.event_id))
  end)

  it("dead-letters at once a message that is not an envelope", function()
    local invalid_before = consumed("invalid")
    local id = crypto.uuid7()
    assert(queue.publish(prefix .. ".garbage", "this is not JSON", { message_id = id }))
    assert(observe(5000))
    local d = assert(queue.next(things_q .. ".dlq", 5000), "nothing in the DLQ")
    assert(queue.ack(d.delivery_tag))
    assert.are.equal(id, d.message_id)
    assert.are.equal("rejected", d.headers["x-death"][1].reason)
    assert.is_true(H.wait_for(function() return consumed("invalid") >= invalid_before + 1 end, 3))
  end)

  it("leaves nothing pending and counts what it published", function()
    assert.is_true(H.wait_for(function() return H.metric(srv, "outbox_pending") == 0 end, 5))
    assert.are.equal(0, count("SELECT 1 FROM outbox WHERE sent_at IS NULL"))
    assert.is_true(H.metric(srv, ('events_published_total{type="%s"}'):format(etype)) >= 1)
  end)

  it("raises on misuse before touching the database", function()
    assert.has_error(function() outbox.add("no dots", {}) end)
    assert.has_error(function() outbox.add("order.*", {}) end)
    assert.has_error(function() outbox.add("order.created", "not a table") end)
    assert.has_error(function() outbox.add("order.created", {}, { traceparent = "00-bad" }) end)
    assert.has_error(function() outbox.relay_once(0) end)
  end)
end)
