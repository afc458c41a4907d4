-- The host over real HTTP: routing, problems, limits, request ids, built-in endpoints, and a
-- host that keeps serving whatever a client sends.
local cjson = require "cjson"
local raw = require "support.raw_http"
local server = require "support.server"

describe("the host", function()
  local srv

  setup(function()
    srv = server.start { service = "product", scripts = "spec/fixtures/host/scripts" }
  end)

  teardown(function()
    assert.equal(0, srv:stop())
  end)

  local function get(path, headers) return assert(raw.request(srv.port, "GET", path, { headers = headers })) end

  local function problem(res, status)
    assert.equal(status, res.status)
    assert.equal("application/problem+json", res.headers["content-type"])
    local p = cjson.decode(res.body)
    assert.equal(status, p.status)
    assert.is_string(p.title)
    assert.equal(res.headers["x-request-id"], p.request_id)
    return p
  end

  it("answers a Lua route with JSON, a generated request id and keep-alive", function()
    local sock = assert(raw.connect(srv.port))
    local a = assert(raw.request(srv.port, "GET", "/hello", { sock = sock }))
    local b = assert(raw.request(srv.port, "GET", "/hello", { sock = sock }))
    sock:close()
    assert.equal(200, a.status)
    assert.equal("application/json", a.headers["content-type"])
    assert.same({ hello = "world" }, cjson.decode(a.body))
    assert.matches("^%x+$", a.headers["x-request-id"])
    assert.not_equal(a.headers["x-request-id"], b.headers["x-request-id"])
    assert.is_nil(a.headers["connection"])   -- not "close"
  end)

  it("echoes a client's request id and replaces an unsafe one", function()
    assert.equal("abc-123.x", get("/hello", { ["X-Request-Id"] = "abc-123.x" }).headers["x-request-id"])
    local res = get("/hello", { ["X-Request-Id"] = "bad id\"<script>" })
    assert.matches("^%x+$", res.headers["x-request-id"])
  end)

  it("passes path params, decoded, and the query string", function()
    local res = get("/items/a%20b?q=x%26y&tag=1&tag=2")
    assert.equal(200, res.status)
    assert.same({ id = "a b", q = "x&y", tags = { "1", "2" }, method = "GET" }, cjson.decode(res.body))
  end)

  it("gives the handler the raw body, its JSON and headers", function()
    local res = assert(raw.request(srv.port, "POST", "/echo", {
      headers = { ["Content-Type"] = "application/json", ["X-Agent"] = "spec" }, body = '{"a":[1,2]}' }))
    local doc = cjson.decode(res.body)
    assert.equal('{"a":[1,2]}', doc.body)
    assert.same({ a = { 1, 2 } }, doc.doc)
    assert.equal("application/json", doc.ctype)
    assert.equal("spec", doc.agent)
    assert.equal(res.headers["x-request-id"], doc.request_id)
    local bad = cjson.decode(assert(raw.request(srv.port, "POST", "/echo", { body = "{nope" })).body)
    assert.matches("^request body is not valid JSON %(at byte 2", bad.err)
  end)

  it("lets handlers set headers and answer without a body", function()
    local t = get("/text")
    assert.equal("text/plain", t.headers["content-type"])
    assert.equal("1", t.headers["x-extra"])
    assert.equal("plain text", t.body)
    local c = assert(raw.request(srv.port, "POST", "/created", { body = "" }))
    assert.equal(201, c.status)
    assert.equal("/items/1", c.headers["location"])
    assert.equal("", c.body)
  end)

  it("answers unknown paths 404 and wrong methods 405 with Allow, as problems", function()
    problem(get("/nowhere"), 404)
    local res = assert(raw.request(srv.port, "DELETE", "/items/1"))
    problem(res, 405)
    assert.equal("GET, HEAD", res.headers["allow"])
  end)

  it("turns a handler error into a 500 problem with the request id, and logs the traceback", function()
    local res = get("/boom", { ["X-Request-Id"] = "boom-1" })
    local p = problem(res, 500)
    assert.equal("boom-1", p.request_id)
    assert.is_nil(res.body:find("kaboom"))   -- no internals in the response
    problem(get("/bad-status"), 500)
    problem(get("/bad-body"), 500)
    local deadline = os.time() + 3
    local log
    repeat log = srv:log() until log:find("boom-1", 1, true) or os.time() > deadline
    assert.truthy(log:find('"request_id":"boom-1"', 1, true))
    assert.truthy(log:find("kaboom", 1, true))
    assert.truthy(log:find("stack traceback", 1, true))
  end)

  it("turns an error object whose __tostring raises into a 500 problem, and keeps serving", function()
    local res = get("/boom-tostring", { ["X-Request-Id"] = "boom-tostring-1" })
    assert.equal("boom-tostring-1", problem(res, 500).request_id)
    assert.equal(200, get("/hello").status)
    local sync = server.start { service = "product", scripts = "spec/fixtures/host/scripts", env = { ASYNC = 0 } }
    res = assert(raw.request(sync.port, "GET", "/boom-tostring"))
    assert.equal(500, res.status)
    assert.equal("application/problem+json", res.headers["content-type"])
    assert.equal(200, assert(raw.request(sync.port, "GET", "/hello")).status)
    assert.equal(0, sync:stop())
  end)

  it("refuses bodies over the limit with 413, by Content-Length or while streaming", function()
    problem(assert(raw.request(srv.port, "POST", "/upload", { body = string.rep("x", 2049) })), 413)
    assert.equal(201, assert(raw.request(srv.port, "POST", "/upload", { body = string.rep("x", 2048) })).status)
    -- chunked, no Content-Length: cut off as soon as it passes the limit
    local chunk = string.rep("y", 1500)
    local bytes = "POST /upload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n" ..
      string.format("%x\r\n%s\r\n", #chunk, chunk):rep(2) .. "0\r\n\r\n"
    problem(assert(raw.raw(srv.port, bytes)), 413)
    -- the process default (1 MiB) applies to other routes
    local big = "POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 1048577\r\n\r\n"
    problem(assert(raw.raw(srv.port, big)), 413)
  end)

  it("survives malformed requests, answering each with the right status", function()
    local cases = {
      { "GET /hello\r\n\r\n", 400 },                                   -- no HTTP version
      { "GET /hello HTTP/1.1\r\n\r\n", 400 },                          -- HTTP/1.1 without Host
      { "GET /hello HTTP/1.1\r\nHost: x\r\nNo colon here\r\n\r\n", 400 },
      { "GET /hello HTTP/9.9\r\nHost: x\r\n\r\n", 505 },
      { "GET /hello HTTP/1.1\r\nHost: x\r\nX-Big: " .. string.rep("a", 100000) .. "\r\n\r\n", 431 },
      { "G@T /hello HTTP/1.1\r\nHost: x\r\n\r\n", 501 },
      { "OPTIONSX /hello HTTP/1.1\r\nHost: x\r\n\r\n", 501 },   -- not OPTIONS cut to 7 bytes (KNOWN)
      { "GETGETGETGET /hello HTTP/1.1\r\nHost: x\r\n\r\n", 501 },
    }
    for _, c in ipairs(cases) do
      local res = assert(raw.raw(srv.port, c[1]))
      assert.equal(c[2], res.status, c[1]:sub(1, 30))
    end
    -- A request line with no target at all is not HTTP: libmicrohttpd closes the connection
    -- (RFC 9112 §3 allows it). What matters is that the host goes on serving.
    local res, err = raw.raw(srv.port, "GARBAGE\r\n\r\n")
    assert.is_nil(res)
    assert.matches("closed", err)
    assert.equal(200, get("/hello").status)
  end)

  it("serves /health, /ready, /openapi.json and Prometheus /metrics", function()
    assert.same({ status = "ok" }, cjson.decode(get("/health").body))
    local ready = get("/ready")
    assert.equal(200, ready.status)
    assert.equal("ready", cjson.decode(ready.body).status)
    assert.equal("3.1.0", cjson.decode(get("/openapi.json").body).openapi)
    local m = get("/metrics")
    assert.equal(200, m.status)
    assert.matches("^text/plain; version=0.0.4", m.headers["content-type"])
    assert.matches('http_requests_total{route="/hello",method="GET",status="200"} %d+', m.body)
    assert.matches('http_request_duration_seconds_bucket{route="/items/{id}",method="GET",le="%+Inf"} %d+', m.body)
    assert.matches('lua_handler_errors_total %d+', m.body)
  end)

  it("serves /metrics that promtool accepts without a lint finding", function()
    get("/hello"); get("/nowhere"); get("/boom")
    local path = os.tmpname()
    local f = assert(io.open(path, "w"))
    f:write(get("/metrics").body)
    f:close()
    local p = io.popen("promtool check metrics < " .. path .. " 2>&1; echo rc=$?")
    local out = p:read("*a")
    p:close()
    os.remove(path)
    assert.equal("rc=0\n", out)
  end)

  it("runs the service's jobs and consumers in background threads, counting failures", function()
    local socket = require "socket"
    socket.sleep(0.7)
    local m = get("/metrics").body
    assert.is_true(tonumber(m:match("fixture_job_ticks_total (%d+)")) >= 3)
    assert.is_true(tonumber(m:match("fixture_consumer_polls_total (%d+)")) >= 5)
    assert.is_true(tonumber(m:match('runner_errors_total{runner="fail"} (%d+)')) >= 1)
    assert.truthy(srv:log():find("the fixture job fails on purpose", 1, true))
  end)

  it("writes one JSON access line per request", function()
    get("/hello", { ["X-Request-Id"] = "access-line-1" })
    local deadline = os.time() + 3
    local line
    repeat
      line = srv:log():match('[^\n]*"request_id":"access%-line%-1"[^\n]*')
    until line or os.time() > deadline
    assert.truthy(line)
    local rec = cjson.decode(line)
    assert.equal("access", rec.type)
    assert.equal("/hello", rec.route)
    assert.equal(200, rec.status)
    assert.is_number(rec.duration_ms)
  end)
end)
