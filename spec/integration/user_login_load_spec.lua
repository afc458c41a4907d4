-- spec/integration/user_login_load_spec.lua: argon2id never holds an HTTP thread. 50 clients
-- logging in at once and again as soon as answered (each login one argon2id verification, ~19
-- MiB and tens of ms of CPU), while GET /users/me is measured on the same user service: its p99
-- must stay within 5x of the same requests without the logins (issue 10, item 5). Then the
-- hashing pool's bounds (past its queue, 503 with Retry-After at once) and a stop while logins
-- are parked on it. Measured by this spec over its own requests: one process, sockets
-- multiplexed with select, the probes sent one at a time (a user's requests) on two keep-alive
-- connections, the logins on 50 keep-alive connections (the first 50 sent together), in rounds
-- of "alone, then with the logins". Prints the numbers as "# " lines.
-- Run: set -a; . <(scripts/dev/stack.sh env); set +a
--      build/mercato lua spec/support/busted.lua -o TAP spec/integration/user_login_load_spec.lua
local cjson = require "cjson.safe"
local socket = require "socket"
local raw = require "support.raw_http"
local U = require "support.user_helpers"

local LOGINS = 50
local PROBE_GAP_S = 0.002   -- between two GET /users/me: paced, not a flood
local SECONDS = 1          -- of probing per round, without and then with the logins
local ROUNDS = 4

local function bytes(method, path, headers, body)
  local lines = { method .. " " .. path .. " HTTP/1.1", "Host: 127.0.0.1" }
  for k, v in pairs(headers or {}) do lines[#lines + 1] = k .. ": " .. v end
  if body then lines[#lines + 1] = "Content-Length: " .. #body end
  return table.concat(lines, "\r\n") .. "\r\n\r\n" .. (body or "")
end

local stats = require "support.stats"
local percentile, ms = stats.percentile, stats.ms

-- Probe GET /users/me on two keep-alive connections, one request at a time, for `secs`
-- seconds. `logins` (optional) are keep-alive connections each with a login in flight: every
-- answer is counted by status and the connection sends its next login at once, so that many
-- stay in flight all along. Returns the probe latencies (seconds) and the login counts.
local function probe(srv, token, secs, logins, login_req)
  local req = bytes("GET", "/users/me", { Authorization = "Bearer " .. token })
  local conns = { assert(raw.connect(srv.port, 10)), assert(raw.connect(srv.port, 10)) }
  local lat, statuses, k = {}, {}, 0
  local stop = socket.gettime() + secs
  while socket.gettime() < stop do
    k = k + 1
    local c = conns[k % 2 + 1]
    local t0 = socket.gettime()
    assert(c:send(req))
    while true do
      local watch = { c }
      for _, s in ipairs(logins or {}) do watch[#watch + 1] = s end
      local ready = socket.select(watch, nil, 10)
      assert(#ready > 0, "nothing answered within 10 s")
      local done = false
      for _, s in ipairs(ready) do
        local res = assert(raw.read_response(s))
        if s == c then
          lat[#lat + 1] = socket.gettime() - t0
          assert.equal(200, res.status, res.body)
          done = true
        else
          statuses[res.status] = (statuses[res.status] or 0) + 1
          assert(s:send(login_req))
        end
      end
      if done then break end
    end
    socket.sleep(PROBE_GAP_S)
  end
  for _, c in ipairs(conns) do c:close() end
  return lat, statuses
end

-- n keep-alive connections, each with a login sent (all at once).
local function start_logins(srv, n, login_req)
  local socks = {}
  for i = 1, n do socks[i] = assert(raw.connect(srv.port, 30)) end
  for _, s in ipairs(socks) do assert(s:send(login_req)) end
  return socks
end

-- Read the answers still in flight on logins (counted into statuses) and close them.
local function finish_logins(logins, statuses)
  for _, s in ipairs(logins) do
    local res = assert(raw.read_response(s))
    statuses[res.status] = (statuses[res.status] or 0) + 1
    s:close()
  end
end

describe("argon2id on the hashing pool", function()
  local svc, s

  setup(function()
    -- A generous queue wait: on this shared 2-core machine 50 hashes take a few seconds.
    svc = U.start { ARGON2_WAIT_MS = "30000" }
    s = U.session(svc)
  end)
  teardown(function() assert.equal(0, U.stop(svc)) end)

  it("keeps GET /users/me's p99 within 5x while 50 logins hash at once", function()
    local login_req = bytes("POST", "/auth/login", { ["Content-Type"] = "application/json" },
      cjson.encode { email = s.email, password = s.password })
    for _ = 1, 50 do U.request(svc, "GET", "/users/me", { token = s.access }) end   -- warm up
    -- Rounds of "alone, then with the logins", so that what else the machine does weighs on
    -- both samples alike.
    local base, during, statuses, t0 = {}, {}, {}, socket.gettime()
    for _ = 1, ROUNDS do
      for _, x in ipairs(probe(svc, s.access, SECONDS)) do base[#base + 1] = x end
      local logins = start_logins(svc, LOGINS, login_req)
      local lat, st = probe(svc, s.access, SECONDS, logins, login_req)
      finish_logins(logins, st)
      for _, x in ipairs(lat) do during[#during + 1] = x end
      for code, c in pairs(st) do statuses[code] = (statuses[code] or 0) + c end
    end
    local took = socket.gettime() - t0
    local p50b, p99b = percentile(base, 0.5), percentile(base, 0.99)
    local p50d, p99d = percentile(during, 0.5), percentile(during, 0.99)
    local n = 0
    for _, c in pairs(statuses) do n = n + c end
    print(("# GET /users/me alone: %d requests, p50 %s, p99 %s"):format(#base, ms(p50b), ms(p99b)))
    print(("# GET /users/me with %d logins in flight: %d requests, p50 %s, p99 %s (%.1fx); %d logins in %d rounds (%.1f s)")
      :format(LOGINS, #during, ms(p50d), ms(p99d), p99d / p99b, n, ROUNDS, took))
    assert.same({ [200] = n }, statuses)
    assert.is_true(n >= ROUNDS * LOGINS)
    assert.is_true(p99d <= 5 * p99b, ("p99 %s during logins vs %s without"):format(ms(p99d), ms(p99b)))
  end)

  describe("past its bounds", function()
    local small

    setup(function()
      -- One hashing thread, two jobs may wait, and not for long.
      small = U.start { ARGON2_THREADS = "1", ARGON2_QUEUE = "2", ARGON2_WAIT_MS = "2000", SHUTDOWN_TIMEOUT_MS = "100" }
    end)
    teardown(function() if small and small.pid then small:stop() end end)

    it("answers 503 with Retry-After for the logins past the queue, at once, and recovers", function()
      local user = U.session(small)
      local login_req = bytes("POST", "/auth/login", { ["Content-Type"] = "application/json" },
        cjson.encode { email = user.email, password = user.password })
      local t0 = socket.gettime()
      local logins, statuses, last = start_logins(small, 20, login_req), {}, {}
      local open = {}
      for _, sock in ipairs(logins) do open[#open + 1] = sock end
      while #open > 0 do
        local ready = socket.select(open, nil, 10)
        assert(#ready > 0, "nothing answered within 10 s")
        for _, sock in ipairs(ready) do
          local res = assert(raw.read_response(sock))
          statuses[res.status] = (statuses[res.status] or 0) + 1
          last[res.status] = socket.gettime() - t0
          if res.status == 503 then
            assert.equal("application/problem+json", res.headers["content-type"])
            assert.equal(503, cjson.decode(res.body).status)
            assert.is_truthy(tonumber(res.headers["retry-after"]))
          end
          sock:close()
          for i, o in ipairs(open) do if o == sock then table.remove(open, i) break end end
        end
      end
      print(("# 20 logins at once on 1 hashing thread, queue 2: %d answered 200 (the last after %s), %d 503 (the last after %s)")
        :format(statuses[200] or 0, ms(last[200] or 0), statuses[503] or 0, ms(last[503] or 0)))
      assert.is_true(last[503] < last[200])             -- refused without waiting for the hashes
      assert.is_true((statuses[200] or 0) >= 3)        -- the one computed and the two that waited
      assert.is_true((statuses[503] or 0) >= 10)
      assert.equal(20, (statuses[200] or 0) + (statuses[503] or 0))
      assert.equal(200, U.post_json(small, "/auth/login", { email = user.email, password = user.password }).status)
    end)

    it("stops cleanly while logins are parked on the pool (their results are dropped)", function()
      local user = U.session(small)
      local login_req = bytes("POST", "/auth/login", { ["Content-Type"] = "application/json" },
        cjson.encode { email = user.email, password = user.password })
      local logins = start_logins(small, 3, login_req)
      socket.sleep(0.02)   -- parsed and parked: one hashing, two waiting
      assert.equal(0, small:stop())   -- SHUTDOWN_TIMEOUT_MS=100: the parked ones are cancelled
      for _, sock in ipairs(logins) do sock:close() end
      assert.is_falsy(small:log():find("AddressSanitizer", 1, true))
    end)
  end)
end)
