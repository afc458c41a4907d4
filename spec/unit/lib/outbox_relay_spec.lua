-- lib.outbox's relay pass with stubbed db, queue, metrics and log bindings: the batch is
-- published without waiting, its confirms collected once, only confirmed rows are marked sent,
-- and every other outcome (nack, lost connection, missing confirm, a row's own failure) is
-- counted on its row exactly as a failed publish always was. The real binding and broker:
-- tests/test_queue.c and spec/integration/outbox_spec.lua.
local STUBBED = { "db", "queue", "metrics", "log" }

local function new_world(rows, plan)
  -- plan[message_id]: "nack" | "missing" (no confirm reported) | "down" (the publish fails,
  -- the connection is lost: the batch's earlier publishes are reported lost) | "raise" |
  -- "invalid"; anything else is confirmed.
  local w = { calls = {}, execs = {}, published = {}, counters = {}, delays = {}, warnings = 0 }
  local next_tag, batch = 1000, {}

  w.db = {
    in_tx = function() return true end,
    tx = function(fn, ...) return fn(...) end,
    query = function(sql, limit)
      assert(sql:find("FOR UPDATE SKIP LOCKED", 1, true), "the relay takes rows with SKIP LOCKED")
      local out = {}
      for i = 1, math.min(limit, #rows) do out[i] = rows[i] end
      return out
    end,
    exec = function(sql, ...)
      if w.fail_exec and sql:find(w.fail_exec, 1, true) then return nil, "connection lost", "unavailable" end
      w.execs[#w.execs + 1] = { sql = sql, args = { ... } }
      return 1
    end,
    query_one = function() return { n = 0 } end,
  }

  w.queue = {
    publish = function(rk, body, opts)
      assert.are.equal(false, opts.wait, "the relay must not wait for each confirm")
      -- as the binding does: a property or header that is not a string is misuse
      if opts.correlation_id ~= nil and type(opts.correlation_id) ~= "string" then error("correlation_id must be a string") end
      for _, v in pairs(opts.headers or {}) do
        if type(v) ~= "string" then error("headers must map string names to strings, numbers or booleans") end
      end
      w.calls[#w.calls + 1] = "publish " .. opts.message_id
      local p = plan[opts.message_id]
      if p == "raise" then error("queue.publish: message_id is longer than 255 bytes") end
      if p == "invalid" then return nil, "refused", "invalid" end
      if p == "down" then
        for _, b in ipairs(batch) do b.lost = true end
        return nil, "amqp publish: connection reset", "unavailable"
      end
      next_tag = next_tag + 1
      batch[#batch + 1] = { tag = next_tag, id = opts.message_id, rk = rk, body = body }
      w.published[#w.published + 1] = opts
      return next_tag
    end,
    confirms = function()
      w.calls[#w.calls + 1] = "confirms"
      local confirmed, failed = {}, {}
      for _, b in ipairs(batch) do
        local p = plan[b.id]
        if b.lost then
          failed[b.tag] = { error = "the publishing connection closed before the broker confirmed", code = "unavailable" }
        elseif p == "nack" then
          failed[b.tag] = { error = "amqp publish: the broker refused the message (nack)", code = "unavailable" }
        elseif p ~= "missing" then
          confirmed[b.tag] = true
        end
      end
      batch = {}
      return confirmed, failed
    end,
  }

  local function counter(name)
    return { inc = function(_, n, label)
      w.counters[name .. " " .. label] = (w.counters[name .. " " .. label] or 0) + n
    end, set = function() end }
  end
  w.metrics = {
    counter = function(name) return counter(name) end,
    gauge = function(name) return counter(name) end,
    histogram = function() return { observe = function(_, v) w.delays[#w.delays + 1] = v end } end,
  }
  w.log = { warn = function() w.warnings = w.warnings + 1 end, info = function() end, debug = function() end,
    error = function() end }
  return w
end

local saved = {}
local function load_outbox(w)
  for _, name in ipairs(STUBBED) do
    if saved[name] == nil then saved[name] = package.loaded[name] or false end
    package.loaded[name] = w[name]
  end
  return dofile("scripts/lib/outbox.lua")   -- a fresh module: its metrics come from this world's stub
end

local function row(id, etype)
  return { id = id, type = etype or "order.created", body = '{"id":"' .. id .. '"}', attempts = 2, age = 0.25 }
end

-- The ids a MARK_SENT statement marked, and the (id, error) of each MARK_FAILED.
local function marks(w)
  local sent, failed = {}, {}
  for _, e in ipairs(w.execs) do
    if e.sql:find("SET sent_at", 1, true) then
      for id in e.args[1]:gmatch("[^{},]+") do sent[#sent + 1] = id end
    elseif e.sql:find("attempts = attempts + 1", 1, true) then
      failed[#failed + 1] = { e.args[1], e.args[2] }
    end
  end
  return sent, failed
end

describe("lib.outbox relay pass", function()
  teardown(function()
    for name, v in pairs(saved) do package.loaded[name] = v or nil end
  end)

  it("publishes the whole batch, waits once for the confirms, and marks the rows sent in one statement", function()
    local w = new_world({ row("a"), row("b"), row("c"), row("d"), row("e") }, {})
    local outbox = load_outbox(w)
    local n, err = outbox.relay_once(100)
    assert.is_nil(err)
    assert.are.equal(5, n)
    assert.are.same({ "publish a", "publish b", "publish c", "publish d", "publish e", "confirms" }, w.calls)
    local sent, failed = marks(w)
    assert.are.same({ "a", "b", "c", "d", "e" }, sent)
    assert.are.same({}, failed)
    assert.are.equal(1, #w.execs)
    assert.are.equal(5, w.counters["events_published_total order.created"])
    -- each confirmed row's delay: its age when read (0.25 s here) plus the publish and confirms
    assert.are.equal(5, #w.delays)
    for _, d in ipairs(w.delays) do assert.is_true(d >= 0.25 and d < 5) end
    -- every property still goes with the message
    assert.are.equal("a", w.published[1].message_id)
    assert.are.equal("order.created", w.published[1].type)
  end)

  it("never marks a nacked row sent: the failure is counted on it and the pass reports the broker", function()
    local w = new_world({ row("a"), row("b", "order.paid"), row("c") }, { b = "nack" })
    local outbox = load_outbox(w)
    local n, err, code = outbox.relay_once(100)
    assert.are.equal(2, n)
    assert.are.equal("unavailable", code)
    assert.matches("nack", err)
    local sent, failed = marks(w)
    assert.are.same({ "a", "c" }, sent)
    assert.are.same({ { "b", "amqp publish: the broker refused the message (nack) (unavailable)" } }, failed)
    assert.are.equal(1, w.counters["events_publish_failures_total order.paid"])
    assert.are.equal(2, w.counters["events_published_total order.created"])
    assert.are.equal(2, #w.delays)   -- the nacked row has no delay: it has not left
    assert.are.equal(1, w.warnings)
  end)

  it("marks nothing sent when the connection is lost mid-batch, and publishes no further", function()
    local w = new_world({ row("a"), row("b"), row("c"), row("d") }, { c = "down" })
    local outbox = load_outbox(w)
    local n, err, code = outbox.relay_once(100)
    assert.are.equal(0, n)
    assert.are.equal("unavailable", code)
    assert.is_string(err)
    assert.are.same({ "publish a", "publish b", "publish c", "confirms" }, w.calls)   -- d never tried
    local sent, failed = marks(w)
    assert.are.same({}, sent)
    assert.are.same({
      { "a", "the publishing connection closed before the broker confirmed (unavailable)" },
      { "b", "the publishing connection closed before the broker confirmed (unavailable)" },
      { "c", "amqp publish: connection reset (unavailable)" },
    }, failed)
    assert.are.equal(3, w.counters["events_publish_failures_total order.created"])
    assert.is_nil(w.counters["events_published_total order.created"])
  end)

  it("does not take a confirm that was never reported for one", function()
    local w = new_world({ row("a"), row("b") }, { a = "missing" })
    local outbox = load_outbox(w)
    local n, _, code = outbox.relay_once(100)
    assert.are.equal(1, n)
    assert.are.equal("unavailable", code)
    local sent, failed = marks(w)
    assert.are.same({ "b" }, sent)
    assert.are.same({ { "a", "no confirm reported for the publish (unavailable)" } }, failed)
  end)

  it("goes on past a row's own failure (the binding raises or refuses it)", function()
    local w = new_world({ row("a"), row("b"), row("c"), row("d") }, { b = "raise", c = "invalid" })
    local outbox = load_outbox(w)
    local n, err = outbox.relay_once(100)
    assert.is_nil(err)
    assert.are.equal(2, n)
    local sent, failed = marks(w)
    assert.are.same({ "a", "d" }, sent)
    assert.are.equal(2, #failed)
    assert.are.equal("b", failed[1][1])
    assert.matches("longer than 255 bytes.*%(invalid%)$", failed[1][2])
    assert.are.same({ "c", "refused (invalid)" }, failed[2])
  end)

  it("publishes a row whose traceparent and correlation_id are SQL NULL without them", function()
    local sql_null = newproxy and newproxy() or setmetatable({}, {})   -- stands for db.null (a lightuserdata)
    local bare = row("a")
    bare.traceparent, bare.correlation_id = sql_null, sql_null
    local full = row("b")
    full.traceparent, full.correlation_id = "00-" .. ("ab"):rep(16) .. "-" .. ("cd"):rep(8) .. "-01", "corr-1"
    local w = new_world({ bare, full }, {})
    local outbox = load_outbox(w)
    local n, err = outbox.relay_once(100)
    assert.is_nil(err)
    assert.are.equal(2, n)
    assert.is_nil(w.published[1].correlation_id)
    assert.is_nil(w.published[1].headers)
    assert.are.equal("corr-1", w.published[2].correlation_id)
    assert.are.equal(full.traceparent, w.published[2].headers.traceparent)
  end)

  it("takes at most limit rows, and neither publishes nor waits when there is nothing to send", function()
    local w = new_world({ row("a"), row("b"), row("c") }, {})
    local outbox = load_outbox(w)
    assert.are.equal(2, outbox.relay_once(2))
    assert.are.same({ "publish a", "publish b", "confirms" }, w.calls)
    local empty = new_world({}, {})
    outbox = load_outbox(empty)
    assert.are.equal(0, outbox.relay_once(100))
    assert.are.same({}, empty.calls)
  end)

  it("returns the database's error when marking fails (the transaction rolls back: nothing is sent)", function()
    local w = new_world({ row("a") }, {})
    w.fail_exec = "SET sent_at"
    local outbox = load_outbox(w)
    local n, err, code = outbox.relay_once(100)
    assert.is_nil(n)
    assert.are.equal("connection lost", err)
    assert.are.equal("unavailable", code)
  end)
end)
