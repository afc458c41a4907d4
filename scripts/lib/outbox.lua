-- scripts/lib/outbox.lua: the transactional outbox — an event is published if and only if the
-- transaction that wrote it committed (CONTRACT §7, ARCHITECTURE.md "Events and the saga").
--
--   local outbox = require "lib.outbox"
--   local order, err, code = db.tx(function()
--     local o = assert(db.query_one("INSERT INTO orders (...) VALUES (...) RETURNING *", ...))
--     assert(outbox.add("order.created", { order_id = o.id, ... }))
--     return o
--   end)
--
--   -- services/<name>/consumers.lua
--   return { outbox.relay_entry(), ... }
--
-- Tables: copy scripts/lib/sql/outbox.sql unchanged into services/<name>/migrations/NNN_outbox.sql.
--
-- outbox.add(type, data, opts) builds the envelope (lib.events) and INSERTs it; it must run
-- inside db.tx, which it checks with db.in_tx() when the db binding has it (misuse raises).
-- Returns the envelope, or nil, err, code when the INSERT fails (the caller's db.tx decides).
--
-- The relay (one runner thread) takes unsent rows oldest first with FOR UPDATE SKIP LOCKED (so
-- replicas share the work and never publish a row twice at once), publishes the whole batch
-- without waiting (queue.publish{wait = false}), then waits once for the broker's publisher
-- confirms (queue.confirms) — one round trip per batch instead of one per row — and marks only
-- the confirmed rows sent, in the same transaction. Delivery is at least once: a crash between
-- the confirms and the COMMIT publishes those rows again, and the consumers' inbox drops the
-- copies; a nack, a lost connection or a missing confirm never marks a row sent. A failed
-- publish is counted on its row (attempts, last_error) and retried on the next pass; rows are
-- never dropped.
local db = require "db"
local host = require "host"
local json = require "json"
local log = require "log"
local metrics = require "metrics"
local queue = require "queue"
local events = require "lib.events"

local _M = {}

local DEFAULT_LIMIT = 100
local IDLE_SLEEP = 0.15        -- seconds between passes that found nothing to do (no NOTIFY support)
local IDLE_WAIT = 1            -- at most this long asleep waiting for a NOTIFY (a missed one costs this)
local ERROR_SLEEP = 1          -- seconds after a pass that failed (database or broker down)
local PENDING_EVERY = 1        -- seconds between refreshes of the outbox_pending gauge
local LOG_EVERY = 10           -- seconds between repeated failure log lines

-- The NOTIFY wakes the relay (it LISTENs: db.wait_notify) when the transaction commits, never
-- before, and not at all if it rolls back; one per row, merged by PostgreSQL within a transaction.
_M.CHANNEL = "mercato_outbox"
local INSERT = "INSERT INTO outbox (id, type, payload) VALUES ($1, $2, $3::jsonb) RETURNING pg_notify('" ..
  _M.CHANNEL .. "', '')"
local SELECT_UNSENT = [[SELECT id::text AS id, type, payload::text AS body, payload->>'correlation_id' AS correlation_id,
  payload->>'traceparent' AS traceparent, attempts,
  extract(epoch FROM clock_timestamp() - created_at)::float8 AS age
  FROM outbox WHERE sent_at IS NULL ORDER BY created_at, id LIMIT $1 FOR UPDATE SKIP LOCKED]]
local MARK_SENT = "UPDATE outbox SET sent_at = clock_timestamp() WHERE id = ANY($1::uuid[])"
local MARK_FAILED = "UPDATE outbox SET attempts = attempts + 1, last_error = $2 WHERE id = $1"
local COUNT_PENDING = "SELECT count(*) AS n FROM outbox WHERE sent_at IS NULL"
local PURGE = "DELETE FROM outbox WHERE sent_at IS NOT NULL AND sent_at < now() - make_interval(secs => $1)"

-- outbox_relay_delay_seconds: a NOTIFY-woken relay takes a few ms; seconds mean a backlog or a
-- broker that confirms slowly.
local DELAY_BUCKETS = { 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60 }

-- Metrics are process-wide and survive reloads; declared on first use (not at module load,
-- which also runs in the scratch state that checks scripts).
local m
local function meters()
  if not m then
    m = {
      published = metrics.counter("events_published_total", "Events published from the outbox, by type.", { "type" }),
      failed = metrics.counter("events_publish_failures_total", "Outbox rows whose publish failed (retried).", { "type" }),
      pending = metrics.gauge("outbox_pending", "Outbox rows not yet published (refreshed by the relay)."),
      delay = metrics.histogram("outbox_relay_delay_seconds",
        "From an outbox row's INSERT to the broker's confirm of its publish.", nil, DELAY_BUCKETS),
    }
  end
  return m
end

-- ---- adding ----------------------------------------------------------------------------------

-- outbox.add(type, data, opts) → envelope, or nil, err, code. opts: correlation_id, traceparent.
function _M.add(etype, data, opts)
  if db.in_tx and not db.in_tx() then
    error("outbox.add must run inside db.tx (the event must commit with the change it announces)", 2)
  end
  local ev = events.envelope(etype, data, opts)
  local n, err, code = db.exec(INSERT, ev.id, ev.type, events.encode(ev))
  if not n then return nil, err, code end
  return ev
end

-- outbox.insert_part(type, data, opts, first, from) → sql, id, type, payload: the event's INSERT
-- written as a part of the caller's own statement (a data-modifying WITH), one event per row of
-- `from` (a CTE of that statement: no row, no event) — so the event commits with the change it
-- announces, in one statement and without a db.tx. The event takes parameters $first to
-- $first + 2: the caller passes id, type and payload there. It wakes the relay like add.
--   local ev, id, etype, payload = outbox.insert_part("order.created", data, nil, 4, "o")
--   db.query_one("WITH o AS (UPDATE orders ... RETURNING ...), e AS (" .. ev .. ") " ..
--     "SELECT o.*, (SELECT count(*) FROM e) AS announced FROM o", a, b, c, id, etype, payload)
function _M.insert_part(etype, data, opts, first, from)
  if type(first) ~= "number" or type(from) ~= "string" or not from:match("^[%a_][%w_]*$") then
    error("outbox.insert_part: expecting the first parameter number and a CTE name", 2)
  end
  local ev = events.envelope(etype, data, opts)
  local sql = ("INSERT INTO outbox (id, type, payload) SELECT $%d::uuid, $%d, $%d::jsonb FROM %s RETURNING pg_notify('%s', '')")
    :format(first, first + 1, first + 2, from, _M.CHANNEL)
  return sql, ev.id, ev.type, events.encode(ev)
end

local INSERT_MANY = "INSERT INTO outbox (id, type, payload) " ..
  "SELECT (e->>'id')::uuid, e->>'type', e FROM jsonb_array_elements($1::jsonb) AS e"

-- outbox.add_many(type, { data, ... }, opts) → the number of events, or nil, err, code: one
-- event per data table, all in one INSERT (a write that touches many rows announces them
-- without a statement per row). Same rules as add.
function _M.add_many(etype, list, opts)
  if db.in_tx and not db.in_tx() then
    error("outbox.add_many must run inside db.tx (the events must commit with the change they announce)", 2)
  end
  if #list == 0 then return 0 end
  local envs = {}
  for i, data in ipairs(list) do envs[i] = events.envelope(etype, data, opts) end
  -- Wakes the relay at COMMIT like add's INSERT, where this module has a NOTIFY channel.
  local sql = _M.CHANNEL and (INSERT_MANY .. " RETURNING pg_notify('" .. _M.CHANNEL .. "', '')") or INSERT_MANY
  local n, err, code = db.exec(sql, json.encode(json.array(envs)))
  if not n then return nil, err, code end
  return #envs
end

-- ---- relaying --------------------------------------------------------------------------------

local last_log = {}
local function log_limited(key, level, msg, fields)
  local now = host.now()
  if (last_log[key] or 0) + LOG_EVERY > now then return end
  last_log[key] = now
  log[level](msg, fields)
end

-- Publish one row without waiting for its confirm → its tag for queue.confirms, or nil, err,
-- code (a raise in the binding is a failure too).
local function publish(row)
  -- An envelope without them (written by other code than outbox.add) has SQL NULLs here, which
  -- come as db.null, not nil: sent as such they would fail the row on every pass.
  local correlation_id = type(row.correlation_id) == "string" and row.correlation_id or nil
  local traceparent = type(row.traceparent) == "string" and row.traceparent or nil
  local ok, res, err, code = pcall(queue.publish, row.type, row.body, {
    message_id = row.id, type = row.type, correlation_id = correlation_id,
    headers = traceparent and { traceparent = traceparent } or nil, wait = false,
  })
  if not ok then return nil, tostring(res), "invalid" end
  if not res then return nil, err, code end
  return res
end

local function broker_down(code) return code == "unavailable" or code == "timeout" end

-- Publish rows, then wait once for their confirms → outcome per row index: true (confirmed),
-- { err, code } (failed), or nil (not attempted: the broker failed earlier in the batch).
local function publish_batch(rows)
  local tags, outcome = {}, {}
  for i, row in ipairs(rows) do
    local tag, perr, pcode = publish(row)
    if tag then
      tags[i] = tag
    else
      outcome[i] = { perr, pcode }
      -- The broker is down or slow: the rest of the batch would fail the same way. Any other
      -- failure belongs to this row alone; go on, so one bad row never holds the others back.
      if broker_down(pcode) then break end
    end
  end
  if next(tags) == nil then return outcome end
  local confirmed, failed, ccode = queue.confirms()
  if not confirmed then   -- out of memory in the binding: nothing is known confirmed
    local cerr = failed
    confirmed, failed = {}, {}
    for _, tag in pairs(tags) do failed[tag] = { error = tostring(cerr), code = ccode or "unavailable" } end
  end
  for i, tag in pairs(tags) do
    local f = failed[tag]
    if confirmed[tag] then outcome[i] = true
    elseif f then outcome[i] = { f.error, f.code }
    else outcome[i] = { "no confirm reported for the publish", "unavailable" } end   -- never assume one
  end
  return outcome
end

-- One pass in one transaction: → the number of rows published (0: nothing to do), or nil,
-- err, code when the database failed (nothing is marked; the rows stay for the next pass).
local function pass(limit)
  local mm = meters()
  local res, err, code = db.tx(function()
    local rows, qerr, qcode = db.query(SELECT_UNSENT, limit)
    if not rows then return nil, qerr, qcode end
    local selected = host.now()
    local outcome = #rows > 0 and publish_batch(rows) or {}
    local confirmed_after = host.now() - selected   -- the row's age when read, plus this: its delay
    local sent, broker_err = {}, nil
    for i, row in ipairs(rows) do
      local o = outcome[i]
      if o == true then
        sent[#sent + 1] = row.id
        mm.published:inc(1, row.type)
        mm.delay:observe(math.max(0, (tonumber(row.age) or 0) + confirmed_after))
      elseif o then
        mm.failed:inc(1, row.type)
        local e = ("%s (%s)"):format(o[1], o[2])
        local n, uerr, ucode = db.exec(MARK_FAILED, row.id, e:sub(1, 1000))
        if not n then return nil, uerr, ucode end
        log_limited("publish", "warn", "outbox: publish failed; the row stays and is retried",
          { event_id = row.id, type = row.type, attempts = row.attempts + 1, error = e })
        if broker_down(o[2]) then broker_err = broker_err or e end
      end
    end
    if #sent > 0 then
      local n, uerr, ucode = db.exec(MARK_SENT, "{" .. table.concat(sent, ",") .. "}")
      if not n then return nil, uerr, ucode end
    end
    return { published = #sent, taken = #rows, broker_err = broker_err }
  end)
  if not res then return nil, err, code end
  return res
end

-- outbox.relay_once(limit) → the number of events published, or nil, err, code.
function _M.relay_once(limit)
  limit = limit or DEFAULT_LIMIT
  if type(limit) ~= "number" or limit < 1 or limit ~= math.floor(limit) then
    error("outbox.relay_once: limit must be a positive integer", 2)
  end
  local res, err, code = pass(limit)
  if not res then return nil, err, code end
  if res.broker_err then return res.published, res.broker_err, "unavailable" end
  return res.published
end

-- outbox.pending() → the number of unsent rows (also sets the outbox_pending gauge).
function _M.pending()
  local row, err, code = db.query_one(COUNT_PENDING)
  if not row then return nil, err, code end
  meters().pending:set(row.n)
  return row.n
end

-- Sleep until an outbox row commits (a NOTIFY on CHANNEL) or `wait` seconds pass; without
-- db.wait_notify (an older host), or when it fails, a plain poll of `idle` seconds.
local function wait_for_rows(wait, idle)
  if db.wait_notify then
    local _, err = db.wait_notify(_M.CHANNEL, wait)
    if err == nil then return end
    log_limited("listen", "warn", "outbox relay: LISTEN failed; polling", { error = err })
  end
  host.sleep(idle)
end

-- outbox.relay_entry(opts) → a consumers.lua entry { name = "outbox-relay", loop = ... }.
-- opts: name, limit (rows per pass, 100), wait (seconds asleep at most between passes that found
-- nothing: a commit's NOTIFY wakes the relay at once, so an event leaves a few milliseconds after
-- its commit; 1), idle (the poll interval when NOTIFY is unavailable, 0.15).
function _M.relay_entry(opts)
  opts = opts or {}
  local limit, idle, wait = opts.limit or DEFAULT_LIMIT, opts.idle or IDLE_SLEEP, opts.wait or IDLE_WAIT
  local next_pending = 0
  return {
    name = opts.name or "outbox-relay",
    loop = function()
      local deadline = host.now() + 1
      repeat
        local n, err, code = _M.relay_once(limit)
        if err then
          log_limited("relay", "warn", "outbox relay: pass failed; retrying", { error = err, code = code })
          host.sleep(ERROR_SLEEP)
          return
        end
        if host.now() >= next_pending then
          next_pending = host.now() + PENDING_EVERY
          _M.pending()
        end
        if n < limit then wait_for_rows(wait, idle) end
      until host.now() >= deadline
    end,
  }
end

-- outbox.purge(keep_seconds) → rows deleted: sent rows older than keep_seconds (default 7 days).
function _M.purge(keep_seconds)
  return db.exec(PURGE, keep_seconds or 7 * 86400)
end

-- outbox.purge_entry{ every = 3600, keep = 7 * 86400 } → a jobs.lua entry.
function _M.purge_entry(opts)
  opts = opts or {}
  return {
    name = opts.name or "outbox-purge",
    every = opts.every or 3600,
    run = function()
      local n, err, code = _M.purge(opts.keep)
      if err then log.warn("outbox purge failed", { error = err, code = code }) end
      return n
    end,
  }
end

return _M
