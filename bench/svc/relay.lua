-- bench/svc/relay.lua: the outbox relay and event latency scenarios of `make bench` (issue 17),
-- luacheck: max line length 160
-- run by bench/events.sh inside `mercato lua` with the private stack's env, against a real
-- mercato serving spec/fixtures/outbox (the real lib.outbox relay and lib.consumer; POST /things
-- writes a row and its event in one transaction, the consumer records each handling in `seen`)
-- on a throw-away database:
--   steady   BENCH_EVENTS_RATE (200) events/s for BENCH_EVENTS_STEADY_S (10) s, one POST each
--   burst    BENCH_EVENTS_BURST (1000) events committed in one transaction (as outbox.add_many)
-- For each: relay delay = outbox created_at → sent_at (the row's INSERT to the relay's UPDATE
-- after the broker confirmed it), event latency = envelope occurred_at → the consumer's
-- transaction (seen.seen_at), both per event from the database, p50/p99; and the p99 bucket of
-- the consumer's event_processing_latency_seconds histogram (occurred_at → committed).
-- Prints a markdown table.
package.path = "spec/?.lua;scripts/?.lua;" .. package.path
local host = require "host"
local H = require "fixtures.outbox.helpers"

local RATE = tonumber(os.getenv("BENCH_EVENTS_RATE") or "") or 200
local STEADY_S = tonumber(os.getenv("BENCH_EVENTS_STEADY_S") or "") or 10
local BURST = tonumber(os.getenv("BENCH_EVENTS_BURST") or "") or 1000

local base_url = assert(os.getenv("DATABASE_URL"), "DATABASE_URL must be set (scripts/dev/stack.sh env)")
local run = H.run_id()
local prefix = "bench" .. run
local etype = prefix .. ".thing_created"
local qname = "bench.events." .. run .. ".things"
local dbname = "mercato_events_bench_" .. run

local function sleep_until(t)
  local d = t - host.now()
  if d > 0 then host.sleep(d) end
end

-- p50 and p99 in ms of the SQL expression `secs` (seconds) over the events named `name`.
local function percentiles(url, secs, from, name)
  local out = H.psql(url, ("SELECT round((percentile_cont(0.5) WITHIN GROUP (ORDER BY %s) * 1000)::numeric, 2) || '|' || " ..
    "round((percentile_cont(0.99) WITHIN GROUP (ORDER BY %s) * 1000)::numeric, 2) || '|' || count(*) " ..
    "FROM %s WHERE o.payload->'data'->>'name' = '%s'"):format(secs, secs, from, name))
  local p50, p99, n = out:match("([%d%.%-]+)|([%d%.%-]+)|(%d+)")
  return tonumber(p50), tonumber(p99), tonumber(n)
end

local RELAY = "extract(epoch FROM o.sent_at - o.created_at)"
local LATENCY = "extract(epoch FROM s.seen_at - (o.payload->>'occurred_at')::timestamptz)"
local SEEN = "seen s JOIN outbox o ON o.id = s.event_id"

-- The consumer histogram's cumulative buckets: { {le, count}, ... } ascending.
local function histogram(srv)
  local _, text = H.call(srv, "GET", "/metrics")
  local b = {}
  for le, n in text:gmatch('event_processing_latency_seconds_bucket{consumer="outbox%-spec",le="([^"]+)"} (%d+)') do
    b[#b + 1] = { le = le == "+Inf" and math.huge or tonumber(le), n = tonumber(n) }
  end
  table.sort(b, function(x, y) return x.le < y.le end)
  return b
end

-- The upper bound (ms) of the bucket holding the 99th percentile of what was observed between
-- two snapshots.
local function histogram_p99(before, after)
  local base = {}
  for _, x in ipairs(before) do base[x.le] = x.n end
  local total = after[#after] and after[#after].n - (base[math.huge] or 0) or 0
  for _, x in ipairs(after) do
    if total > 0 and x.n - (base[x.le] or 0) >= 0.99 * total then return x.le * 1000 end
  end
end

local function wait_seen(url, name, n, timeout)
  return H.wait_for(function()
    return tonumber(H.psql(url, ("SELECT count(*) FROM %s WHERE o.payload->'data'->>'name' = '%s'"):format(SEEN, name))) >= n
  end, timeout, 0.1)
end

local function loadavg()
  local f = io.open("/proc/loadavg")
  local s = f and f:read("*l") or "?"
  if f then f:close() end
  return s:match("^(%S+ %S+ %S+)") or s
end

print("| scenario | what | events | relay p50 | relay p99 | event p50 | event p99 | note |")
print("|---|---|---|---|---|---|---|---|")

local url = H.create_db(base_url, dbname)
local srv
local ok, err = pcall(function()
  srv = H.start(url, prefix, qname, { LOG_LEVEL = "warn" })
  -- Warm-up: the consumer's queue exists (an event before it would be routed nowhere) and the
  -- first-use costs (connections, compiled templates) are paid.
  -- The consumer declares its queue once it runs: until then events go nowhere, so probe.
  assert(H.wait_for(function()
    assert(H.call(srv, "POST", "/things", { name = "probe" }) == 201)
    return wait_seen(url, "probe", 1, 1)
  end, 30, 0), "the consumer never saw an event")
  for _ = 1, 20 do assert(H.call(srv, "POST", "/things", { name = "warmup" }) == 201) end
  assert(wait_seen(url, "warmup", 20, 30), "the warm-up events were not consumed")

  -- steady: one POST every 1/RATE s on a fixed schedule (a late one does not shift the rest)
  local h0 = histogram(srv)
  local n = math.floor(RATE * STEADY_S)
  local t0 = host.now()
  for i = 0, n - 1 do
    sleep_until(t0 + i / RATE)
    local status = H.call(srv, "POST", "/things", { name = "steady" })
    assert(status == 201, "POST /things: " .. tostring(status))
  end
  local took = host.now() - t0
  assert(wait_seen(url, "steady", n, 60), "the steady events were not all consumed")
  local r50, r99 = percentiles(url, RELAY, "outbox o", "steady")
  local e50, e99, seen = percentiles(url, LATENCY, SEEN, "steady")
  local hp99 = histogram_p99(h0, histogram(srv))
  print(("| steady | %d events/s for %g s, one POST /things each (achieved %.0f/s) | %d | %.2f ms | %.2f ms | %.2f ms | %.2f ms | "
    .. "histogram p99 ≤ %s ms; load %s |"):format(RATE, STEADY_S, n / took, seen, r50, r99, e50, e99, tostring(hp99), loadavg()))

  -- burst: BURST events in one transaction, each envelope's occurred_at its INSERT time
  h0 = histogram(srv)
  H.psql(url, ("BEGIN; INSERT INTO outbox (id, type, payload) SELECT id, '%s', jsonb_build_object('id', id, 'type', '%s', " ..
    "'version', 1, 'occurred_at', to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"'), " ..
    "'source', 'order', 'correlation_id', gen_random_uuid(), " ..
    "'traceparent', '00-' || replace(gen_random_uuid()::text, '-', '') || '-' || substr(md5(g::text), 1, 16) || '-01', " ..
    "'data', jsonb_build_object('thing_id', g, 'name', 'burst')) " ..
    "FROM (SELECT g, gen_random_uuid() AS id FROM generate_series(1, %d) g) t; SELECT pg_notify('mercato_outbox', ''); COMMIT;")
    :format(etype, etype, BURST))
  if not wait_seen(url, "burst", BURST, 120) then
    error("the burst was not all consumed: " .. H.psql(url, "SELECT count(*) FILTER (WHERE sent_at IS NOT NULL) || ' sent, ' || " ..
      "count(*) FILTER (WHERE attempts > 0) || ' failed, last error ' || coalesce(max(last_error), '-') FROM outbox o " ..
      "WHERE payload->'data'->>'name' = 'burst'") .. "; seen " .. H.psql(url, "SELECT count(*) FROM seen"), 0)
  end
  r50, r99 = percentiles(url, RELAY, "outbox o", "burst")
  e50, e99, seen = percentiles(url, LATENCY, SEEN, "burst")
  hp99 = histogram_p99(h0, histogram(srv))
  local drain = H.psql(url, "SELECT round((extract(epoch FROM max(sent_at) - min(created_at)) * 1000)::numeric, 1) " ..
    "FROM outbox o WHERE payload->'data'->>'name' = 'burst'")
  print(("| burst | %d events committed at once (one transaction) | %d | %.2f ms | %.2f ms | %.2f ms | %.2f ms | "
    .. "all sent %s ms after the first INSERT; histogram p99 ≤ %s ms; load %s |"):format(BURST, seen, r50, r99, e50, e99, drain, tostring(hp99), loadavg()))
  local pending = H.psql(url, "SELECT count(*) FILTER (WHERE sent_at IS NULL) || ' unsent, ' || coalesce(sum(attempts), 0) " ..
    "|| ' failed attempts' FROM outbox")
  print(("\nOutbox after the runs: %s."):format(pending))
end)
if srv then srv:stop() end
H.drop_db(base_url, dbname)
H.cleanup()
os.execute("scripts/dev/stack.sh rabbitmqctl delete_queue -q '" .. qname .. "' >/dev/null 2>&1; " ..
  "scripts/dev/stack.sh rabbitmqctl delete_queue -q '" .. qname .. ".dlq' >/dev/null 2>&1")
if not ok then error(err, 0) end
