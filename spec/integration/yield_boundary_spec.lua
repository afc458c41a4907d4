-- A handler's waiting binding called where its coroutine cannot yield (inside a C function's
-- callback: string.gsub, table.sort) takes the blocking path instead of registering I/O and
-- failing to park — which used to free the request while the reply was still to come back to
-- it (a use-after-free that ASan sees; test.sh runs this file against build/asan/mercato too).
--   . <(scripts/dev/stack.sh env); export DATABASE_URL=$DATABASE_URL_PRODUCT
--   build/mercato lua spec/support/busted.lua spec/integration/yield_boundary_spec.lua
local cache = require "cache"
local cjson = require "cjson"
local socket = require "socket"
local raw = require "support.raw_http"
local server = require "support.server"

local SCRIPTS = "spec/fixtures/boundary/scripts"
local redis_url = assert(os.getenv("REDIS_URL"), "REDIS_URL must be set (scripts/dev/stack.sh env)")
local db_url = assert(os.getenv("DATABASE_URL"), "DATABASE_URL must be set (scripts/dev/stack.sh env)")

describe("a waiting binding called inside a C function's callback", function()
  local srv
  local run = ("%d%d"):format(os.time(), math.random(1e6))

  setup(function()
    assert(cache.call("SET", "spec:boundary:" .. run, "from redis"))
    srv = server.start { service = "product", scripts = SCRIPTS, workers = 1,
                         env = { REDIS_URL = redis_url, DATABASE_URL = db_url } }
  end)

  teardown(function()
    cache.call("DEL", "spec:boundary:" .. run)
    if srv then assert.equal(0, srv:stop()) end
  end)

  local function get(path)
    local res = assert(raw.request(srv.port, "GET", path))
    local ok, doc = pcall(cjson.decode, res.body)
    return res.status, ok and doc or res.body
  end

  local function server_alive()
    local res = raw.request(srv.port, "GET", "/health")
    return res and res.status == 200
  end

  it("answers cache.call from a string.gsub callback by blocking", function()
    local st, doc = get("/gsub/cache/" .. run)
    assert.equal(200, st)
    assert.same({ v = "from redis" }, doc)
    assert.is_true(server_alive())
  end)

  it("answers cache.call from a table.sort comparator by blocking", function()
    local st, doc = get("/sort/cache")
    assert.equal(200, st)
    assert.same({ list = { 1, 2, 3 }, pinged = true }, doc)
  end)

  it("answers db.query_one from a string.gsub callback and a table.sort comparator by blocking", function()
    local st, doc = get("/gsub/db")
    assert.equal(200, st)
    assert.same({ v = "42" }, doc)
    st, doc = get("/sort/db")
    assert.equal(200, st)
    assert.same({ list = { 1, 2, 3 } }, doc)
  end)

  it("leaves no wait behind when the handler goes on after the call in the callback", function()
    -- Before the fix: the binding sent its command, failed to park, the handler caught that
    -- and ended; the reply (or its timer) then wrote into the freed request.
    for _ = 1, 20 do
      local st, doc = get("/pcall-gsub/cache/" .. run)
      assert.equal(200, st)
      assert.same({ ok = true, v = "from redis" }, doc)
      st, doc = get("/pcall-gsub/db")
      assert.equal(200, st)
      assert.same({ ok = true, v = "7" }, doc)
    end
    socket.sleep(0.2)
    -- The thread still serves parked requests, and the process never saw a bad access.
    for i = 1, 20 do
      local st, doc = get(i % 2 == 0 and "/cache/" .. run or "/cache/" .. run .. i)
      assert.equal(200, st)
      assert.same({ v = i % 2 == 0 and "from redis" or false }, doc)
    end
    assert.is_true(server_alive())
    assert.is_nil(srv:log():find("AddressSanitizer", 1, true))
    assert.is_nil(srv:log():find("yield across", 1, true))
  end)
end)
