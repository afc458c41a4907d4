-- Handlers' statements on the HTTP thread's PostgreSQL pool: parked while the server works,
-- pipelined many to a connection, db.tx holding one connection, a bounded wait for one.
--   . <(scripts/dev/stack.sh env); export DATABASE_URL=$DATABASE_URL_PRODUCT
--   build/mercato lua spec/support/busted.lua spec/integration/db_pool_spec.lua
local cjson = require "cjson"
local socket = require "socket"
local raw = require "support.raw_http"
local server = require "support.server"
local H = require "fixtures.outbox.helpers"

local SCRIPTS = "spec/fixtures/dbpool/scripts"
local base_url = assert(os.getenv("DATABASE_URL"), "DATABASE_URL must be set (scripts/dev/stack.sh env)")
local dbname = "mercato_pool_spec_" .. H.run_id()
local url
local IDLE_IN_TX = "SELECT count(*) FROM pg_stat_activity"
  .. " WHERE datname = current_database() AND state LIKE 'idle in transaction%'"

local function start(env)
  local e = { DATABASE_URL = url }
  for k, v in pairs(env or {}) do e[k] = v end
  return server.start { service = "product", scripts = SCRIPTS, workers = 1, env = e, bin = os.getenv("MERCATO_BIN") }
end

-- Send every request at once on its own connection, then read every answer, in order.
local function all_at_once(port, reqs)
  local socks = {}
  for i, r in ipairs(reqs) do
    local s = assert(raw.connect(port))
    assert(s:send(("%s %s HTTP/1.1\r\nHost: x\r\nX-Request-Id: r%d\r\nContent-Length: 0\r\n\r\n"):format(r[1], r[2], i)))
    socks[i] = s
  end
  local out = {}
  for i, s in ipairs(socks) do
    local res = assert(raw.read_response(s))
    s:close()
    local ok, doc = pcall(cjson.decode, res.body)
    out[i] = { status = res.status, doc = ok and doc or res.body }
  end
  return out
end

describe("handlers on the database pool", function()
  local srv

  setup(function()
    url = H.create_db(base_url, dbname)
    srv = start()
  end)

  teardown(function()
    if srv then assert.equal(0, srv:stop()) end
    H.drop_db(base_url, dbname)
  end)

  it("answer 300 concurrent reads on one thread, each with its own row, on at most 4 connections", function()
    local reqs = {}
    for i = 1, 300 do reqs[i] = { "GET", "/item/" .. i } end
    local out = all_at_once(srv.port, reqs)
    for i = 1, 300 do
      assert.equal(200, out[i].status)
      assert.same({ id = i, label = "item " .. i, rid = "r" .. i }, out[i].doc)
    end
    local conns = H.metric(srv, "db_connections")
    assert.is_true(conns >= 1 and conns <= 4, "db_connections = " .. conns)
  end)

  it("keep a failing statement's error to its own request when pipelined with others", function()
    local reqs = {}
    for i = 1, 120 do
      reqs[i] = i % 2 == 0 and { "POST", "/insert/" .. i } or { "GET", "/item/" .. i }
    end
    local out = all_at_once(srv.port, reqs)
    for i = 1, 120 do
      if i % 2 == 0 then
        assert.equal(409, out[i].status)   -- ids 1..1000 exist: a unique violation
        assert.equal("23505", out[i].doc.sqlstate)
      else
        assert.equal(200, out[i].status)
        assert.equal(i, out[i].doc.id)
      end
    end
  end)

  it("run db.tx on one connection across its waits, nested levels rolling back alone", function()
    local reqs = {}
    for i = 1, 40 do reqs[i] = { "POST", "/tx/" .. (2000 + i) } end
    local out = all_at_once(srv.port, reqs)
    for i = 1, 40 do
      assert.equal(201, out[i].status)
      assert.same({ seen = 1, in_tx = true, after = false }, out[i].doc)
    end
    assert.equal("40", H.psql(url, "SELECT count(*) FROM pool_items WHERE id BETWEEN 2001 AND 2040 AND label = 'outer'"))
    assert.equal("0", H.psql(url, "SELECT count(*) FROM pool_items WHERE id > 100000"))
  end)

  it("run a statement from a coroutine the handler made inside its db.tx in that transaction", function()
    local reqs = {}
    for i = 1, 20 do reqs[i] = { "POST", "/tx-coroutine/" .. (7000 + i) .. (i > 10 and "?rollback=1" or "") } end
    local out = all_at_once(srv.port, reqs)
    for i = 1, 20 do
      if i <= 10 then
        assert.equal(201, out[i].status, out[i].body)
        assert.same({ seen = 2 }, out[i].doc)   -- the coroutine's row is visible inside the transaction
      else
        assert.equal(422, out[i].status, out[i].body)
      end
    end
    assert.equal("10", H.psql(url, "SELECT count(*) FROM pool_items WHERE id BETWEEN 7001 AND 7010"))
    assert.equal("10", H.psql(url, "SELECT count(*) FROM pool_items WHERE id BETWEEN 57001 AND 57010"))
    assert.equal("0", H.psql(url, "SELECT count(*) FROM pool_items WHERE id BETWEEN 7011 AND 7020 OR id BETWEEN 57011 AND 57020"))
  end)

  it("roll back a transaction whose function raised, and answer 500", function()
    local status = H.call(srv, "GET", "/tx-then-raise?id=3001")
    assert.equal(500, status)
    assert.equal("0", H.psql(url, "SELECT count(*) FROM pool_items WHERE id = 3001"))
    assert.equal("0", H.psql(url, IDLE_IN_TX))
  end)

  it("return the failed statement's error from db.tx, committing nothing, when the function went on", function()
    local status, doc = H.call(srv, "GET", "/tx-ignored?id=6001")
    assert.equal(409, status, cjson.encode(doc))
    assert.equal("23505", doc.sqlstate)
    assert.equal("0", H.psql(url, "SELECT count(*) FROM pool_items WHERE id = 6001"))
    assert.equal(200, (H.call(srv, "GET", "/item/6")))
  end)

  it("refuse a COMMIT by hand inside db.tx", function()
    assert.equal(500, (H.call(srv, "GET", "/tx-raw-commit")))
    assert.matches("the statement ended the transaction of db.tx", srv:log(), 1, true)
    assert.equal("0", H.psql(url, IDLE_IN_TX))
    assert.equal(200, (H.call(srv, "GET", "/item/6")))
  end)

  it("refuse a raw BEGIN without losing the writes pipelined behind it", function()
    local reqs = { { "GET", "/raw-begin" } }
    for i = 2, 30 do reqs[i] = { "POST", "/insert/" .. (5000 + i) } end
    local out = all_at_once(srv.port, reqs)
    assert.equal(500, out[1].status)
    assert.matches("transaction control statements are not allowed", srv:log(), 1, true)
    for i = 2, 30 do
      -- Behind the BEGIN on its connection, a statement fails with the closed connection
      -- (503), or ran in a transaction of its own and is committed: never answered 201 from
      -- inside the stray transaction and then lost with it.
      local id = 5000 + i
      local committed = H.psql(url, "SELECT count(*) FROM pool_items WHERE id = " .. id)
      if out[i].status == 201 then
        assert.equal("1", committed, "insert " .. id .. " answered 201 but is not committed")
      else
        assert.equal(503, out[i].status, cjson.encode(out[i]))
        assert.equal("0", committed)
      end
    end
    assert.equal("0", H.psql(url, IDLE_IN_TX))
    assert.equal(201, (H.call(srv, "POST", "/insert/5100")))
    assert.equal("1", H.psql(url, "SELECT count(*) FROM pool_items WHERE id = 5100"))
  end)

  it("do not queue behind a slow statement on a shared connection", function()
    local one = start()   -- one connection open: the next statement would pipeline behind
    finally(function() one:stop() end)
    assert.equal(200, (H.call(one, "GET", "/item/1")))
    assert.equal(1, H.metric(one, "db_connections"))
    local slow = assert(raw.connect(one.port))
    assert(slow:send("GET /slow?ms=2500 HTTP/1.1\r\nHost: x\r\n\r\n"))
    socket.sleep(0.7)   -- past the 500 ms a busy connection may go without an answer
    local t0 = socket.gettime()
    local status, doc = H.call(one, "GET", "/item/9")
    local took = socket.gettime() - t0
    assert.equal(200, status, cjson.encode(doc))
    assert.is_true(took < 0.8, "waited " .. took .. " s behind the slow statement")
    assert.equal(200, assert(raw.read_response(slow)).status)
    slow:close()
  end)

  it("reconnect after the server ended its sessions", function()
    assert.equal(200, (H.call(srv, "GET", "/item/7")))
    H.psql(url, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
      .. " WHERE datname = current_database() AND pid <> pg_backend_pid()")
    socket.sleep(0.2)
    local status, doc = H.call(srv, "GET", "/item/7")
    assert.equal(200, status, cjson.encode(doc))
    assert.equal(7, doc.id)
  end)
end)

describe("a pool's prepared statements and deadlines", function()
  local srv

  setup(function()
    url = H.create_db(base_url, dbname)
    srv = start { DB_STMT_CACHE = 2, DB_STATEMENT_TIMEOUT_MS = 300, DB_POOL_SIZE = 1 }
  end)

  teardown(function()
    if srv then assert.equal(0, srv:stop()) end
    H.drop_db(base_url, dbname)
  end)

  it("keeps answering right while a small cache evicts statements pipelined behind each other", function()
    local reqs = {}
    for i = 1, 90 do reqs[i] = { "GET", ("/variant?k=%d&x=%d"):format(i % 5, i) } end
    local out = all_at_once(srv.port, reqs)
    for i = 1, 90 do
      assert.equal(200, out[i].status, cjson.encode(out[i]))
      assert.equal(i + i % 5, out[i].doc.v)
    end
    -- The server holds no more than the cache: evicted statements were deallocated.
    local status, doc = H.call(srv, "GET", "/variant?k=9&x=1")
    assert.equal(200, status)
    assert.equal(10, doc.v)
  end)

  it("prepares again when the server forgot its statements", function()
    assert.equal(200, (H.call(srv, "GET", "/item/3")))
    assert.equal(200, (H.call(srv, "GET", "/forget")))
    local status, doc = H.call(srv, "GET", "/item/3")
    assert.equal(200, status, cjson.encode(doc))
    assert.equal(3, doc.id)
  end)

  it("prepares again when a migration changed the table under a cached plan", function()
    assert.same({ id = 8, label = "item 8" }, select(2, H.call(srv, "GET", "/star/8")))
    H.psql(url, "ALTER TABLE pool_items ADD COLUMN extra integer DEFAULT 7")
    local status, doc = H.call(srv, "GET", "/star/8")
    assert.equal(200, status, cjson.encode(doc))
    assert.same({ id = 8, label = "item 8", extra = 7 }, doc)
  end)

  it("keeps its other statements when a statement pipelined behind a failed Parse finds no statement (KNOWN)", function()
    local bigger = start { DB_STMT_CACHE = 50, DB_POOL_SIZE = 1 }
    finally(function() bigger:stop() end)
    local function prepared() local doc = select(2, H.call(bigger, "GET", "/prepared")) return doc.n, doc.list end
    for _, path in ipairs({ "/item/1", "/star/1", "/variant?k=1&x=1", "/variant?k=2&x=1" }) do
      assert.equal(200, (H.call(bigger, "GET", path)))
    end
    local before, list = prepared()
    -- the first prepares and fails; those pipelined behind it ran its name: 26000 on the server
    local reqs = {}
    for i = 1, 12 do reqs[i] = { "GET", "/bad" } end
    for _, r in ipairs(all_at_once(bigger.port, reqs)) do
      assert.equal(422, r.status, cjson.encode(r))
      assert.matches("no_such_column", r.doc.err, 1, true)   -- the real error, never 26000's
      assert.is_nil(r.doc.err:find("prepared statement", 1, true))
    end
    for _, path in ipairs({ "/item/1", "/star/1", "/variant?k=1&x=1", "/variant?k=2&x=1" }) do
      assert.equal(200, (H.call(bigger, "GET", path)))
    end
    -- nothing prepared twice: the cache was not dropped while the server kept its statements
    local after, now = prepared()
    assert.equal(before, after, list .. "\n→ " .. tostring(now))
  end)

  it("answers timeout for a statement past statement_timeout, and the next one runs", function()
    local status, doc = H.call(srv, "GET", "/slow?ms=2000")
    assert.equal(422, status)
    assert.equal("timeout", doc.code)
    status = H.call(srv, "GET", "/item/4")
    assert.equal(200, status)
  end)
end)

describe("a pool's statement deadline", function()
  setup(function() url = H.create_db(base_url, dbname) end)
  teardown(function() H.drop_db(base_url, dbname) end)

  it("starts when a statement reaches the head of its connection, not when it was queued", function()
    -- 40 statements of 100 ms pipelined on one connection: the last is answered after ~4 s,
    -- though none ran for longer than 100 ms (the deadline is 1000 ms + 2 s of grace).
    local srv = start { DB_STATEMENT_TIMEOUT_MS = 1000 }
    finally(function() srv:stop() end)
    assert.equal(200, (H.call(srv, "GET", "/item/1")))
    local reqs = {}
    for i = 1, 40 do reqs[i] = { "GET", "/slow?ms=100" } end
    local out = all_at_once(srv.port, reqs)
    local statuses = {}
    for i = 1, 40 do statuses[out[i].status] = (statuses[out[i].status] or 0) + 1 end
    assert.same({ [200] = 40 }, statuses)
    assert.equal(0, H.metric(srv, "db_reconnects_total"))
    assert.equal(0, srv:stop())
  end)

  it("still drops a connection whose server stops answering, at statement_timeout plus grace", function()
    local srv = start { DB_STATEMENT_TIMEOUT_MS = 300, DB_POOL_SIZE = 1 }
    finally(function() srv:stop() end)
    local _, doc = H.call(srv, "GET", "/backend")
    local pid = assert(tonumber(doc.pid))
    os.execute("kill -STOP " .. pid)
    finally(function() os.execute("kill -CONT " .. pid .. " 2>/dev/null") end)
    local t0 = socket.gettime()
    local status, res = H.call(srv, "GET", "/item/2")
    local waited = socket.gettime() - t0
    os.execute("kill -CONT " .. pid)
    assert.equal(422, status, cjson.encode(res))   -- the fixture answers a timeout as 422
    assert.equal("timeout", res.code)
    assert.is_true(waited > 2.2 and waited < 4, "waited " .. waited)
    assert.equal(200, (H.call(srv, "GET", "/item/2")))
    assert.equal(0, srv:stop())
  end)
end)

describe("a pool with every connection held", function()
  local srv

  setup(function()
    url = H.create_db(base_url, dbname)
    srv = start { DB_POOL_SIZE = 1, DB_POOL_WAIT_MS = 200 }
  end)

  teardown(function()
    if srv then assert.equal(0, srv:stop()) end
    H.drop_db(base_url, dbname)
  end)

  it("makes a statement wait at most DB_POOL_WAIT_MS, then answers 503, and serves again after", function()
    local hold = assert(raw.connect(srv.port))
    assert(hold:send("POST /hold?ms=1500 HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n"))
    socket.sleep(0.2)   -- the transaction holds the only connection
    local t0 = socket.gettime()
    local status, doc = H.call(srv, "GET", "/item/5")
    local waited = socket.gettime() - t0
    assert.equal(503, status)
    assert.equal("unavailable", doc.code)
    assert.matches("DB_POOL_WAIT_MS", doc.err, 1, true)
    assert.is_true(waited >= 0.19 and waited < 1.0, "waited " .. waited)
    local held = assert(raw.read_response(hold))
    hold:close()
    assert.equal(200, held.status)
    assert.equal(200, (H.call(srv, "GET", "/item/5")))
    assert.is_true(H.metric(srv, "db_pool_wait_timeouts_total") >= 1)
    assert.equal(0, H.metric(srv, "db_pool_waiting"))
  end)

  it("rolls back a transaction still parked at the shutdown deadline, and exits 0", function()
    local short = start { SHUTDOWN_TIMEOUT_MS = 300 }
    finally(function() short:stop("KILL") end)
    local hold = assert(raw.connect(short.port))
    assert(hold:send("POST /hold?ms=3000 HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n"))
    socket.sleep(0.3)
    assert.equal(0, short:stop())   -- SIGTERM: the parked transaction is cut at 300 ms
    hold:close()
    socket.sleep(0.2)
    assert.equal("0", H.psql(url, IDLE_IN_TX))
  end)

  it("is checked against the connections the server has left at start-up", function()
    local big = start { DB_POOL_SIZE = 5000 }
    assert.equal(0, big:stop())
    assert.matches("may open 5001 PostgreSQL connections", big:log(), 1, true)
    assert.matches("lower DB_POOL_SIZE or raise max_connections", big:log(), 1, true)
  end)

  it("lets waiting statements through in order once the connection is free", function()
    local hold = assert(raw.connect(srv.port))
    assert(hold:send("POST /hold?ms=100 HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n"))
    socket.sleep(0.03)
    local reqs = {}
    for i = 1, 50 do reqs[i] = { "GET", "/item/" .. (100 + i) } end
    local out = all_at_once(srv.port, reqs)
    for i = 1, 50 do
      assert.equal(200, out[i].status)
      assert.equal(100 + i, out[i].doc.id)
    end
    assert.equal(200, assert(raw.read_response(hold)).status)
    hold:close()
  end)
end)
