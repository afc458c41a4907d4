-- spec/integration/queue_spec.lua: the queue binding against the real RabbitMQ 3.10 from stack.sh.
--   AMQP_URL=amqp://guest:guest@127.0.0.1:29672/ \
--   build/mercato lua spec/support/busted.lua -o TAP spec/integration/queue_spec.lua
local queue = require "queue"
local host = require "host"

math.randomseed(os.time() + tonumber(tostring({}):match("0x(%x+)"), 16) % 100000)
local run = ("%d%d"):format(os.time(), math.random(1e6))
local function qname(what) return ("spec.queue.%s.%s"):format(run, what) end
local function rkey(what) return ("spec%s.%s"):format(run, what) end

local function sh(cmd)
  local p = assert(io.popen(cmd .. " 2>&1"))
  local out = p:read("*a")
  p:close()
  return out
end

local function sleep(s) os.execute("sleep " .. s) end

local function my_pid()
  local f = assert(io.open("/proc/self/stat"))
  local pid = f:read("*n")
  f:close()
  return pid
end

-- The broker-side ids of this process's connections (their connection_name names our pid).
local function my_connections()
  local out = sh("scripts/dev/stack.sh rabbitmqctl list_connections -q --no-table-headers pid client_properties")
  local pids = {}
  for line in out:gmatch("[^\n]+") do
    if line:find("mercato pid=" .. my_pid() .. " ", 1, true) then pids[#pids + 1] = line:match("^(%S+)") end
  end
  return pids
end

-- Have the broker close this process's connections (as a restart or an operator would).
local function broker_closes_mine()
  local pids = my_connections()
  for _, pid in ipairs(pids) do
    sh("scripts/dev/stack.sh rabbitmqctl close_connection '" .. pid .. "' 'queue_spec: simulated broker drop'")
  end
  return pids
end

local function declare(what, opts)
  local name = qname(what)
  opts = opts or {}
  opts.bindings = opts.bindings or { rkey(what) .. ".*" }
  assert(queue.declare_consumer_queue(name, opts))
  return name
end

local function publish(what, body, props)
  return queue.publish(rkey(what) .. ".happened", body, props)
end

describe("queue", function()
  assert(os.getenv("AMQP_URL"), "AMQP_URL must be set (scripts/dev/stack.sh env)")

  it("publishes with a confirm and delivers every property, then ack settles it", function()
    local q = declare("roundtrip", { prefetch = 10, delivery_limit = 5 })
    local body = '{"id":"m-1","type":"order.created","data":{"n":1}}'
    assert.is_true(publish("roundtrip", body, {
      message_id = "m-1", type = "order.created", correlation_id = "c-1",
      headers = { traceparent = "00-abc-def-01", attempt = 3, replay = false },
    }))
    local m, err = queue.next(q, 5000)
    assert.is_nil(err)
    assert.is_table(m)
    assert.are.equal(body, m.body)
    assert.are.equal(rkey("roundtrip") .. ".happened", m.routing_key)
    assert.are.equal("mercato.events", m.exchange)
    assert.are.equal("m-1", m.message_id)
    assert.are.equal("order.created", m.type)
    assert.are.equal("c-1", m.correlation_id)
    assert.are.equal("application/json", m.content_type)
    assert.are.equal(2, m.delivery_mode)
    assert.is_false(m.redelivered)
    assert.are.equal("00-abc-def-01", m.headers.traceparent)
    assert.are.equal(3, m.headers.attempt)
    assert.is_false(m.headers.replay)
    assert.is_true(queue.ack(m.delivery_tag))
    assert.is_nil(queue.next(q, 300))   -- acked: gone
  end)

  it("publishes a batch without waiting and reports each publish's confirm once", function()
    local q = declare("batch", { prefetch = 100 })
    local tags = {}
    for i = 1, 50 do
      local tag, err = publish("batch", ('{"n":%d}'):format(i), { message_id = "b-" .. i, wait = false })
      assert.is_nil(err)
      assert.is_number(tag)
      if i > 1 then assert.are.equal(tags[i - 1] + 1, tag) end
      tags[i] = tag
    end
    local confirmed, failed = queue.confirms(5000)
    assert.are.same({}, failed)
    for i = 1, 50 do assert.is_true(confirmed[tags[i]], "publish " .. i .. " not confirmed") end
    local again, failed_again = queue.confirms(100)
    assert.are.same({}, again)
    assert.are.same({}, failed_again)
    local seen = {}
    for _ = 1, 50 do
      local m = assert(queue.next(q, 5000))
      seen[m.message_id] = true
      assert.are.equal(2, m.delivery_mode)
      assert.is_true(queue.ack(m.delivery_tag))
    end
    for i = 1, 50 do assert.is_true(seen["b-" .. i], "b-" .. i .. " not delivered") end
  end)

  it("reports the publishes of a connection lost before their confirms as failed, never confirmed", function()
    local q = declare("lost")
    local tags = {}
    for i = 1, 5 do tags[i] = assert(publish("lost", "{}", { message_id = "l-" .. i, wait = false })) end
    queue.reset()   -- the connection goes before anyone read the confirms
    local confirmed, failed = queue.confirms(1000)
    assert.are.same({}, confirmed)
    for i = 1, 5 do
      assert.is_table(failed[tags[i]], "publish " .. i .. " not reported")
      assert.are.equal("unavailable", failed[tags[i]].code)
    end
    -- the next batch goes on a new connection, and its tags are new ones
    local tag = assert(publish("lost", "{}", { message_id = "l-6", wait = false }))
    assert.is_true(tag > tags[5])
    confirmed = queue.confirms(5000)
    assert.is_true(confirmed[tag])
    -- whatever reached the queue is delivered (at least once: l-1..l-5 may or may not be there)
    local got = {}
    repeat
      local m = queue.next(q, 500)
      if m then got[m.message_id] = true; assert(queue.ack(m.delivery_tag)) end
    until not m
    assert.is_true(got["l-6"])
  end)

  it("returns a bare nil when nothing arrives before the timeout", function()
    local q = declare("empty")
    local t0 = host.now()
    local m, err = queue.next(q, 200)
    local took = host.now() - t0
    assert.is_nil(m)
    assert.is_nil(err)
    assert.is_true(took >= 0.19 and took < 0.6, "waited " .. took .. " s")
  end)

  it("redelivers a message consumed but never acked when the consumer's connection dies", function()
    local q = declare("crash")
    assert.is_true(publish("crash", "{}", { message_id = "m-crash" }))
    local m = assert(queue.next(q, 5000))
    assert.are.equal("m-crash", m.message_id)
    assert.is_false(m.redelivered)
    queue.reset()   -- the consumer "crashes": connection closed, no ack
    local again = assert(queue.next(q, 5000))
    assert.are.equal("m-crash", again.message_id)
    assert.is_true(again.redelivered)
    -- the old tag belongs to the dead connection: settling it is refused, not sent
    local ok, err, code = queue.ack(m.delivery_tag)
    assert.is_nil(ok)
    assert.are.equal("conflict", code, err)
    assert.is_true(queue.ack(again.delivery_tag))
    assert.is_nil(queue.next(q, 300))
  end)

  it("dead-letters a message nacked without requeue into <name>.dlq", function()
    local q = declare("nack")
    assert.is_true(publish("nack", '{"bad":true}', { message_id = "m-nack", type = "test.nack" }))
    local m = assert(queue.next(q, 5000))
    assert.is_true(queue.nack(m.delivery_tag, false))
    local d = assert(queue.next(q .. ".dlq", 5000))
    assert.are.equal("m-nack", d.message_id)
    assert.are.equal('{"bad":true}', d.body)
    assert.are.equal("test.nack", d.type)
    assert.is_table(d.headers["x-death"])
    assert.are.equal("rejected", d.headers["x-death"][1].reason)
    assert.is_true(queue.ack(d.delivery_tag))
    assert.is_nil(queue.next(q, 300))
  end)

  it("sends a poison message to the DLQ once it exceeds delivery_limit", function()
    local q = declare("poison", { delivery_limit = 2 })
    assert.is_true(publish("poison", "{}", { message_id = "m-poison" }))
    local deliveries = 0
    for _ = 1, 10 do
      local m = queue.next(q, 1000)
      if not m then break end
      assert.are.equal("m-poison", m.message_id)
      deliveries = deliveries + 1
      assert.is_true(queue.nack(m.delivery_tag, true))   -- the handler keeps failing
    end
    assert.are.equal(3, deliveries)   -- the first delivery plus delivery_limit redeliveries
    local d = assert(queue.next(q .. ".dlq", 5000))
    assert.are.equal("m-poison", d.message_id)
    assert.is_true(queue.ack(d.delivery_tag))
  end)

  it("reconnects after the broker closes its connections", function()
    local q = declare("reconnect")
    assert.is_true(publish("reconnect", "{}", { message_id = "m-before" }))
    local m = assert(queue.next(q, 5000))
    assert.is_true(queue.ack(m.delivery_tag))
    local before = broker_closes_mine()
    assert.are.equal(2, #before)   -- the publishing and the consuming connection
    sleep(0.2)
    assert.is_true(publish("reconnect", "{}", { message_id = "m-after" }))
    m = assert(queue.next(q, 5000))
    assert.are.equal("m-after", m.message_id)
    assert.is_true(queue.ack(m.delivery_tag))
    local after = my_connections()
    assert.are.equal(2, #after)
    for _, pid in ipairs(after) do
      for _, old in ipairs(before) do assert.are_not.equal(old, pid) end
    end
  end)

  it("answers 'conflict' when a queue exists with other arguments", function()
    local q = declare("conflict", { delivery_limit = 5 })
    local ok, err, code = queue.declare_consumer_queue(q, { delivery_limit = 6 })
    assert.is_nil(ok)
    assert.are.equal("conflict", code)
    assert.matches("PRECONDITION_FAILED", err)
    assert.is_true(publish("conflict", "{}", {}))   -- and the next call works
  end)

  it("raises on misuse", function()
    assert.has_error(function() queue.publish(nil, "{}") end)
    assert.has_error(function() queue.publish("k", {}) end)
    assert.has_error(function() queue.publish("k", "{}", { message_id = 1 }) end)
    assert.has_error(function() queue.publish("k", "{}", { headers = { x = {} } }) end)
    assert.has_error(function() queue.publish("k", "{}", { wait = "no" }) end)
    assert.has_error(function() queue.confirms(-1) end)
    assert.has_error(function() queue.declare_consumer_queue("") end)
    assert.has_error(function() queue.declare_consumer_queue("q", { prefetch = 0 }) end)
    assert.has_error(function() queue.declare_consumer_queue("q", { bindings = { 1 } }) end)
    assert.has_error(function() queue.next(nil, 10) end)
    assert.has_error(function() queue.ack("tag") end)
    assert.has_error(function() queue.ack(12345) end)
  end)

  teardown(function()
    -- Best effort: the run's queues are durable; delete them so runs do not accumulate.
    local names = {}
    for _, w in ipairs({ "roundtrip", "batch", "lost", "empty", "crash", "nack", "poison", "reconnect", "conflict" }) do
      names[#names + 1] = qname(w)
      names[#names + 1] = qname(w) .. ".dlq"
    end
    queue.reset()
    -- in the background: each rabbitmqctl boots an Erlang VM (~1.5 s)
    local cmds = {}
    for _, n in ipairs(names) do cmds[#cmds + 1] = "scripts/dev/stack.sh rabbitmqctl delete_queue -q '" .. n .. "'" end
    os.execute("(" .. table.concat(cmds, "; ") .. ") >/dev/null 2>&1 &")
  end)
end)
