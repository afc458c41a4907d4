-- spec/integration/cache_spec.lua: the cache binding against the real Redis from stack.sh.
-- REDIS_URL=redis://127.0.0.1:29379/0 build/mercato lua spec/support/busted.lua -o TAP spec/integration/cache_spec.lua
local cache = require "cache"

local url = os.getenv("REDIS_URL")
local hostport = ((url or ""):match("^redis://([^/]*)") or ""):gsub("^.*@", "")
local host, port = hostport:match("^([^:]+):?(%d*)$")
port = port ~= "" and port or "6379"
math.randomseed(os.time() + tonumber(tostring({}):match("0x(%x+)"), 16) % 100000)
local prefix = ("spec:cache:%d:%d:"):format(os.time(), math.random(1e9))
local function key(k) return prefix .. k end

-- Run a command on a second connection (redis-cli), as another client would.
local function redis_cli(...)
  local args = {}
  for i, a in ipairs({ ... }) do args[i] = "'" .. tostring(a):gsub("'", "'\\''") .. "'" end
  local p = assert(io.popen(("redis-cli -h %s -p %s %s 2>&1"):format(host, port, table.concat(args, " "))))
  local out = p:read("*a")
  p:close()
  return (out:gsub("%s+$", ""))
end

describe("cache", function()
  assert(url, "REDIS_URL must be set (scripts/dev/stack.sh env)")

  teardown(function()
    local keys = cache.call("KEYS", prefix .. "*")
    if keys and #keys > 0 then cache.call("DEL", unpack(keys)) end
  end)

  describe("call", function()
    it("maps a status reply to a string", function()
      assert.are.equal("OK", cache.call("SET", key("s"), "v"))
      assert.are.equal("PONG", cache.call("PING"))
    end)

    it("round-trips a bulk string byte for byte, zero bytes included", function()
      local bin = "a\0b\255\n" .. ("x"):rep(100000)
      assert.are.equal("OK", cache.call("SET", key("bin"), bin))
      assert.are.equal(bin, cache.call("GET", key("bin")))
    end)

    it("maps an integer reply to a number", function()
      assert.are.equal(1, cache.call("INCR", key("n")))
      assert.are.equal(42, cache.call("INCRBY", key("n"), 41))
      assert.are.equal("number", type(cache.call("STRLEN", key("s"))))
    end)

    it("returns a bare nil, not an error, for a missing key", function()
      local n = select("#", cache.call("GET", key("missing")))
      local v, err = cache.call("GET", key("missing"))
      assert.is_nil(v)
      assert.is_nil(err)
      assert.are.equal(1, n)
    end)

    it("maps an array reply to a table, with false for nil elements", function()
      cache.call("RPUSH", key("l"), "a", "b", "c")
      assert.are.same({ "a", "b", "c" }, cache.call("LRANGE", key("l"), 0, -1))
      assert.are.same({}, cache.call("LRANGE", key("nolist"), 0, -1))
      assert.are.same({ "v", false }, cache.call("MGET", key("s"), key("missing")))
    end)

    it("formats number arguments exactly (no 1e+15)", function()
      cache.call("SET", key("big"), 1e15)
      assert.are.equal("1000000000000000", cache.call("GET", key("big")))
      cache.call("SET", key("half"), 0.5)
      assert.are.equal("0.5", cache.call("GET", key("half")))
    end)

    it("returns nil, msg, 'invalid' for an error reply", function()
      local v, err, code = cache.call("INCR", key("s"))
      assert.is_nil(v)
      assert.matches("not an integer", err)
      assert.are.equal("invalid", code)
      v, err, code = cache.call("LPUSH", key("s"), "x")
      assert.is_nil(v)
      assert.matches("^WRONGTYPE", err)
      assert.are.equal("invalid", code)
      -- the connection is still good after an error reply
      assert.are.equal("v", cache.call("GET", key("s")))
    end)

    it("raises on misuse, naming the function", function()
      assert.has_error(function() cache.call() end)
      assert.has_error(function() cache.call(42) end)
      local ok, err = pcall(cache.call, "GET", {})
      assert.is_false(ok)
      assert.matches("cache.call: expecting a string or number, got table", err, 1, true)
      assert.has_error(function() cache.call("SET", key("x"), true) end)
    end)
  end)

  describe("pipeline", function()
    it("returns every reply in order, errors and nils in place", function()
      local r = cache.pipeline({
        { "SET", key("p"), "1" },
        { "INCR", key("p") },
        { "GET", key("p") },
        { "GET", key("missing") },
        { "INCR", key("s") },
        { "LRANGE", key("l"), 0, 1 },
      })
      assert.are.equal(6, #r)
      assert.are.equal("OK", r[1])
      assert.are.equal(2, r[2])
      assert.are.equal("2", r[3])
      assert.is_false(r[4])
      assert.are.equal("table", type(r[5]))
      assert.matches("not an integer", r[5].err)
      assert.are.same({ "a", "b" }, r[6])
    end)

    it("raises on misuse before sending anything", function()
      assert.has_error(function() cache.pipeline({}) end)
      assert.has_error(function() cache.pipeline({ { "SET", key("never"), "1" }, "GET" }) end)
      assert.has_error(function() cache.pipeline({ { "SET", key("never"), {} } }) end)
      assert.is_nil(cache.call("GET", key("never")))
    end)
  end)

  describe("eval", function()
    local script = "redis.call('SET', KEYS[1], ARGV[1]); return { KEYS[1], ARGV[1], tonumber(ARGV[2]) + 1 }"

    it("runs a script with keys and args", function()
      assert.are.same({ key("e"), "hello", 8 }, cache.eval(script, { key("e") }, { "hello", 7 }))
      assert.are.equal("hello", cache.call("GET", key("e")))
    end)

    it("falls back to EVAL after SCRIPT FLUSH (NOSCRIPT) and the script is cached again", function()
      local sha = cache.call("SCRIPT", "LOAD", script)
      assert.are.same({ key("e"), "one", 2 }, cache.eval(script, { key("e") }, { "one", 1 }))
      assert.are.equal("OK", cache.call("SCRIPT", "FLUSH"))
      assert.are.same({ 0 }, cache.call("SCRIPT", "EXISTS", sha))
      assert.are.same({ key("e"), "two", 3 }, cache.eval(script, { key("e") }, { "two", 2 }))
      assert.are.same({ 1 }, cache.call("SCRIPT", "EXISTS", sha))
    end)

    it("returns nil, msg, 'invalid' when the script fails", function()
      local v, err, code = cache.eval("return redis.call('INCR', KEYS[1])", { key("s") })
      assert.is_nil(v)
      assert.matches("not an integer", err)
      assert.are.equal("invalid", code)
    end)

    it("returns nil for a script returning nil", function()
      assert.is_nil(cache.eval("return redis.call('GET', KEYS[1])", { key("missing") }, {}))
    end)

    it("raises on misuse", function()
      assert.has_error(function() cache.eval(nil) end)
      assert.has_error(function() cache.eval("return 1", "k") end)
      assert.has_error(function() cache.eval("return 1", { {} }) end)
    end)
  end)

  describe("connection", function()
    it("reconnects on the next call after the server killed the connection", function()
      local id = cache.call("CLIENT", "ID")
      assert.are.equal("1", redis_cli("CLIENT", "KILL", "ID", id))
      assert.are.equal("PONG", cache.call("PING"))
      local id2 = cache.call("CLIENT", "ID")
      assert.are_not.equal(id, id2)
      -- twice in a row, with a pipeline this time
      assert.are.equal("1", redis_cli("CLIENT", "KILL", "ID", id2))
      assert.are.same({ "PONG", "v" }, cache.pipeline({ { "PING" }, { "GET", key("s") } }))
    end)

    it("gives up at the command deadline with 'timeout', then works again", function()
      local limit = tonumber(os.getenv("REDIS_TIMEOUT_MS") or "1000")
      if limit >= 3000 then pending("REDIS_TIMEOUT_MS is too high for this check") return end
      local t0 = os.time()
      local v, err, code = cache.call("BLPOP", key("nothing"), 4)
      assert.is_nil(v)
      assert.are.equal("timeout", code, err)
      assert.is_true(os.time() - t0 <= 3)
      assert.are.equal("PONG", cache.call("PING"))
    end)
  end)
end)
