-- A worker thread that fails to start (KNOWN): the server stops the others and exits non-zero
-- naming it, closing each listening socket exactly once — the shared one, or each thread's
-- SO_REUSEPORT socket — traced with strace. SERVER_TEST_FAIL_WORKER makes worker 1 fail
-- after its HTTP daemon is up (the path where MHD_stop_daemon used to close the listener
-- the server closes again).
local server = require "support.server"

local BIN = os.getenv("MERCATO_BIN") or "build/mercato"

-- Run the binary under strace until it exits; → exit status, its output, the trace.
local function run_traced(env)
  local port = server.free_port()
  local dir = ".run/test/start-failure"
  os.execute("mkdir -p " .. dir)
  local trace, log = dir .. "/" .. port .. ".strace", dir .. "/" .. port .. ".log"
  local vars = { SERVICE = "product", SCRIPTS_DIR = "spec/fixtures/host/scripts", PORT = port, LISTEN_ADDR = "127.0.0.1",
    WORKERS = 3, SERVER_TEST_FAIL_WORKER = 1 }
  for k, v in pairs(env or {}) do vars[k] = v end
  local parts = {}
  for k, v in pairs(vars) do parts[#parts + 1] = k .. "='" .. tostring(v) .. "'" end
  local cmd = ("env %s timeout 60 strace -f -qq -e trace=%%desc,%%network -o %s %s > %s 2>&1; echo $?")
    :format(table.concat(parts, " "), trace, BIN, log)
  local p = io.popen(cmd)
  local status = tonumber(p:read("*l"))
  p:close()
  local function read(path) local f = io.open(path) local s = f:read("*a") f:close() return s end
  return status, read(log), read(trace), port
end

-- How many sockets were bound to port, and the closes of a descriptor that was not open
-- (EBADF: closed twice — or worse, a second close that hit whatever reused the number).
local function sockets_and_bad_closes(trace, port)
  local bound, bad = 0, {}
  for _ in trace:gmatch("bind%(%d+, {sa_family=AF_INET, sin_port=htons%(" .. port .. "%)") do bound = bound + 1 end
  for line in trace:gmatch("[^\n]+") do
    if line:find("close(", 1, true) and line:find("EBADF", 1, true) then bad[#bad + 1] = line end
  end
  return bound, bad
end

describe("a worker thread that fails to start", function()
  it("stops the server with a message naming it, closing the shared listening socket once", function()
    local status, log, trace, port = run_traced()
    assert.is_true(status ~= 0, log)
    assert.matches("cannot start the HTTP daemon on worker 1", log)
    assert.is_nil(log:find("Fatal error", 1, true), log)   -- MHD aborted on the closed listener
    local bound, bad = sockets_and_bad_closes(trace, port)
    assert.equal(1, bound)
    assert.same({}, bad)
  end)

  it("closes each thread's own socket once with LISTEN_MODE=reuseport", function()
    local status, log, trace, port = run_traced { LISTEN_MODE = "reuseport" }
    assert.is_true(status ~= 0, log)
    assert.matches("cannot start the HTTP daemon on worker 1", log)
    local bound, bad = sockets_and_bad_closes(trace, port)
    assert.equal(3, bound)
    assert.same({}, bad)
  end)
end)
