-- spec/support/http_helpers.lua: start and stop real mercato instances on free loopback ports
-- for integration specs. MERCATO_BIN picks the binary (build/asan/mercato for sanitizer runs).
local http = require "http"
local cjson = require "cjson"

local M = {}

M.bin = os.getenv("MERCATO_BIN") or "build/mercato"
M.fixtures = "spec/fixtures/gateway/scripts"

function M.sleep(s) os.execute("sleep " .. s) end

function M.tmpdir()
  local p = assert(io.popen("mktemp -d /tmp/mercato-spec.XXXXXX"))
  local d = p:read("*l")
  p:close()
  return d
end

local function read_file(path)
  local f = io.open(path)
  if not f then return nil end
  local s = f:read("*a")
  f:close()
  return s
end

local function alive(pid) return os.execute("kill -0 " .. pid .. " 2>/dev/null") == 0 end

local seeded = false
local function random_port()
  if not seeded then
    local f = io.open("/dev/urandom", "rb")
    local b = f:read(4)
    f:close()
    math.randomseed(b:byte(1) * 16777216 + b:byte(2) * 65536 + b:byte(3) * 256 + b:byte(4))
    seeded = true
  end
  return math.random(20000, 60000)
end

-- A port nobody listens on (connection refused), for "upstream down" cases.
function M.closed_port()
  for _ = 1, 50 do
    local port = random_port()
    local _, _, code = http.get("http://127.0.0.1:" .. port .. "/", { timeout_ms = 500 })
    if code == "unavailable" then return port end
  end
  error("no closed port found")
end

-- Start `SERVICE=<env.SERVICE> mercato` with env on a free port (or env.PORT); wait for /health.
-- Returns { pid, port, url, log }. Stop it with M.stop.
function M.start(env, dir)
  for _ = 1, 5 do
    local port = tonumber(env.PORT) or M.closed_port()
    local name = (env.SERVICE or "x") .. "-" .. port
    local log, pidfile = dir .. "/" .. name .. ".log", dir .. "/" .. name .. ".pid"
    local vars = { "PORT=" .. port, "LISTEN_ADDR=127.0.0.1" }
    for k, v in pairs(env) do if k ~= "PORT" then vars[#vars + 1] = k .. "='" .. tostring(v) .. "'" end end
    os.execute(("env %s %s >%s 2>&1 & echo $! >%s"):format(table.concat(vars, " "), M.bin, log, pidfile))
    local pid = tonumber(read_file(pidfile))
    local inst = { pid = pid, port = port, url = "http://127.0.0.1:" .. port, log = log }
    for _ = 1, 200 do
      local res = http.get(inst.url .. "/health", { timeout_ms = 1000 })
      if res and res.status == 200 then return inst end
      if not alive(pid) then break end
      M.sleep(0.05)
    end
    if alive(pid) then os.execute("kill -9 " .. pid) end
    io.stderr:write("# instance did not start:\n", read_file(log) or "", "\n")
  end
  error("cannot start " .. tostring(env.SERVICE))
end

-- Stop an instance by its pid (SIGTERM, then SIGKILL after 10 s); returns its log.
function M.stop(inst)
  if not inst or not inst.pid then return "" end
  os.execute("kill " .. inst.pid .. " 2>/dev/null")
  for _ = 1, 200 do
    if not alive(inst.pid) then break end
    M.sleep(0.05)
  end
  if alive(inst.pid) then os.execute("kill -9 " .. inst.pid .. " 2>/dev/null") end
  inst.pid = nil
  return read_file(inst.log) or ""
end

-- The sanitizer reports (ASan, LeakSanitizer, UBSan) in a log, or nil.
function M.sanitizer_report(log)
  for _, pat in ipairs { "AddressSanitizer", "LeakSanitizer", "runtime error:" } do
    local at = log:find(pat, 1, true)
    if at then return log:sub(math.max(1, at - 200), at + 2000) end
  end
  return nil
end

function M.json(res) return cjson.decode(res.body) end

-- Set an environment variable of this process (svc.call reads host.env at call time).
local ffi = require "ffi"
ffi.cdef "int setenv(const char *name, const char *value, int overwrite); int unsetenv(const char *name);"
function M.setenv(k, v)
  if v == nil then ffi.C.unsetenv(k) else ffi.C.setenv(k, tostring(v), 1) end
end

return M
