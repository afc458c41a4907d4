-- spec/support/server.lua: start a real mercato process for a spec and stop it by PID.
--   local srv = server.start{ service = "product", scripts = "spec/fixtures/host/scripts", env = {...} }
--   ... srv.port ...; srv:stop()  → exit status
local socket = require "socket"

local M = {}

local BIN = os.getenv("MERCATO_BIN") or "build/mercato"

-- A port nothing listens on right now (the kernel picks it).
function M.free_port()
  local s = assert(socket.bind("127.0.0.1", 0))
  local _, port = s:getsockname()
  s:close()
  return tonumber(port)
end

local function sh_quote(s) return "'" .. tostring(s):gsub("'", "'\\''") .. "'" end

local function read_file(path)
  local f = io.open(path)
  if not f then return nil end
  local s = f:read("*a")
  f:close()
  return s
end

local function alive(pid)
  local st = io.popen("ps -o stat= -p " .. pid .. " 2>/dev/null"):read("*l")
  return st ~= nil and st ~= "" and not st:match("^Z")
end

local Server = {}
Server.__index = Server

-- Wait until GET /health answers (or the process dies, or timeout seconds pass).
function Server:wait_ready(timeout)
  local deadline = socket.gettime() + (timeout or 10)
  while socket.gettime() < deadline do
    local c = socket.tcp()
    c:settimeout(0.2)
    if c:connect("127.0.0.1", self.port) then
      c:close()
      return true
    end
    c:close()
    if not alive(self.pid) then return false, "mercato exited during start-up:\n" .. self:log() end
    socket.sleep(0.02)
  end
  return false, "mercato did not listen within " .. tostring(timeout) .. " s:\n" .. self:log()
end

function Server:log() return read_file(self.log_path) or "" end

-- SIGTERM (or sig), wait for the exit; returns the exit status (nil if it had to be killed).
function Server:stop(sig)
  if not self.pid then return nil end
  os.execute("kill -" .. (sig or "TERM") .. " " .. self.pid .. " 2>/dev/null")
  local deadline = socket.gettime() + 15
  while alive(self.pid) and socket.gettime() < deadline do socket.sleep(0.02) end
  if alive(self.pid) then
    os.execute("kill -KILL " .. self.pid)
    self.pid = nil
    return nil
  end
  -- The wrapper writes the status just after mercato is gone: on a busy machine, a moment later.
  local status = tonumber(read_file(self.status_path) or "")
  deadline = socket.gettime() + 5
  while not status and socket.gettime() < deadline do
    socket.sleep(0.02)
    status = tonumber(read_file(self.status_path) or "")
  end
  self.pid = nil
  return status
end

-- Stop (SIGTERM, or sig: "KILL" for a crash) and start again with the same options on the same
-- port; waits for it to listen. → the old process's exit status (nil if killed)
function Server:restart(sig)
  local status = self:stop(sig)
  local opts = {}
  for k, v in pairs(self.opts) do opts[k] = v end
  opts.port = self.port
  local fresh = M.start(opts)
  self.pid = fresh.pid
  return status
end

function M.start(opts)
  local port = opts.port or M.free_port()
  local dir = ".run/test/servers"
  os.execute("mkdir -p " .. dir)
  local tag = opts.tag or ((opts.service or "lua") .. "-" .. port)   -- opts.tag: two processes on one port
  local self = setmetatable({
    opts = opts,
    port = port,
    log_path = dir .. "/" .. tag .. ".log",
    status_path = dir .. "/" .. tag .. ".status",
  }, Server)
  local env = {
    SERVICE = opts.service, PORT = port, LISTEN_ADDR = "127.0.0.1",
    SCRIPTS_DIR = opts.scripts, WORKERS = opts.workers or 2, LOG_LEVEL = opts.log_level or "info",
  }
  for k, v in pairs(opts.env or {}) do env[k] = v end
  local parts = {}
  for k, v in pairs(env) do
    if v ~= false then parts[#parts + 1] = k .. "=" .. sh_quote(v) end
  end
  os.remove(self.status_path)
  -- A subshell that records the exit status; `exec`-free so the status can be written, and
  -- the PID we keep is mercato's own (the inner `$!`).
  local cmd = string.format(
    "( env %s %s %s > %s 2>&1 & pid=$!; echo $pid; wait $pid; echo $? > %s ) &",
    table.concat(parts, " "), opts.wrapper or "", opts.bin or BIN, sh_quote(self.log_path), sh_quote(self.status_path))
  local p = io.popen(cmd)
  self.pid = tonumber(p:read("*l"))
  p:close()
  if opts.wait ~= false then
    local ok, err = self:wait_ready(opts.timeout or 10)
    if not ok then self:stop("KILL"); error(err, 2) end
  end
  return self
end

return M
