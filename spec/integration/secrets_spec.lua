-- Dependency URLs (and the passwords in them) never appear in a response or a log line: not
-- when they fail to parse, not when their server is down, not in /ready.
--   build/mercato lua spec/support/busted.lua spec/integration/secrets_spec.lua
local cjson = require "cjson"
local raw = require "support.raw_http"
local server = require "support.server"

local SCRIPTS = "spec/fixtures/host/scripts"

-- Every place a secret or a URL could leak to: the text must hold neither.
local function assert_clean(text, what)
  assert.is_nil(text:find("s3cret", 1, true), what .. " shows a password:\n" .. text)
  assert.is_nil(text:find("://", 1, true), what .. " shows a URL:\n" .. text)
end

local function ready(srv)
  local res = assert(raw.request(srv.port, "GET", "/ready"))
  return res, cjson.decode(res.body)
end

describe("a dependency URL", function()
  local cases = {
    { "a Redis URL of an unsupported scheme", { REDIS_URL = "rediss://:s3cret@127.0.0.1:1/0" }, "cache" },
    { "a Redis URL with a bad port", { REDIS_URL = "redis://:s3cret@127.0.0.1:x1/0" }, "cache" },
    { "a Redis URL whose server is down", { REDIS_URL = "redis://:s3cret@127.0.0.1:1/0" }, "cache" },
    { "an AMQP URL of an unsupported scheme", { AMQP_URL = "amqps://guest:s3cret@127.0.0.1:1/" }, "queue" },
    { "an AMQP URL that does not parse", { AMQP_URL = "amqp://guest:s3cret@127.0.0.1:notaport/" }, "queue" },
    { "an AMQP URL whose server is down", { AMQP_URL = "amqp://guest:s3cret@127.0.0.1:1/" }, "queue" },
  }
  for _, c in ipairs(cases) do
    it("is never shown in /ready or the log: " .. c[1], function()
      local srv = server.start { service = "product", scripts = SCRIPTS, workers = 1, env = c[2] }
      finally(function() srv:stop() end)
      local res, doc = ready(srv)
      assert.equal(503, res.status)
      assert.matches("^down", doc.checks[c[3]])
      assert_clean(res.body, "/ready")
      assert.equal(200, assert(raw.request(srv.port, "GET", "/hello")).status)
      assert.equal(0, srv:stop())
      assert_clean(srv:log(), "the log")
    end)
  end

  it("is never shown in /ready or the log when DATABASE_URL does not parse or its server is down", function()
    for _, url in ipairs { "postgresq://u:s3cret@127.0.0.1:1/db", "postgresql://u:s3cret@127.0.0.1:1/db",
                           "postgresql://u:s3cret@127.0.0.1:1/db?sslmode=bogus",
                           "host=127.0.0.1 port=1 password=s3cret junk" } do
      local srv = server.start { service = "product", scripts = SCRIPTS, workers = 1, env = { DATABASE_URL = url } }
      finally(function() srv:stop() end)
      local res, doc = ready(srv)
      assert.equal(503, res.status)
      assert.matches("^down", doc.checks.db)
      assert_clean(res.body, "/ready for " .. url)
      assert.equal(0, srv:stop())
      assert_clean(srv:log(), "the log for " .. url)
    end
  end)
end)
