-- spec/chaos/load.lua: the steady purchase load of one chaos round — a few buyer processes
-- (spec/chaos/buyer.lua), started together, stopped together through a stop file, their
-- per-attempt JSON lines read back.
--
--   local h = load.start(w, { tokens = {...}, products = {...}, seed = 42, dir = ".run/chaos/r1" })
--   ... ; local records = load.stop(h)
local cjson = require "cjson.safe"
local socket = require "socket"

local M = {}

local function q(s) return "'" .. tostring(s):gsub("'", "'\\''") .. "'" end

function M.start(w, opts)
  os.execute("mkdir -p " .. q(opts.dir))
  local h = { stop = opts.dir .. "/stop", out = opts.dir .. "/buyers.jsonl", pids = {} }
  os.remove(h.stop)
  os.remove(h.out)
  local bin = os.getenv("MERCATO_BIN") or "build/mercato"
  for i, token in ipairs(opts.tokens) do
    local cmd = ("CHAOS_GATEWAY=%s CHAOS_STANDIN=%s CHAOS_TOKEN=%s CHAOS_PRODUCTS=%s CHAOS_SEED=%d CHAOS_STOP=%s CHAOS_OUT=%s "
      .. "%s lua spec/chaos/buyer.lua >> %s 2>&1 & echo $!"):format(q(w.gateway.url), q(w.standin.url), q(token),
      q(table.concat(opts.products, ",")), opts.seed * 100 + i, q(h.stop), q(h.out), bin, q(opts.dir .. "/buyers.log"))
    local p = io.popen(cmd)
    h.pids[#h.pids + 1] = tonumber(p:read("*l"))
    p:close()
  end
  return h
end

local function alive(pid)
  local st = io.popen("ps -o stat= -p " .. pid .. " 2>/dev/null"):read("*l")
  return st ~= nil and st ~= "" and not st:match("^Z")
end

-- Ask every buyer to stop after its current purchase; wait for them (at most `timeout` s, then
-- SIGKILL: a buyer stuck that long is itself a finding, reported). → records, killed buyers
function M.stop(h, timeout)
  local f = assert(io.open(h.stop, "w"))
  f:close()
  local deadline = socket.gettime() + (timeout or 90)
  local killed = 0
  for _, pid in ipairs(h.pids) do
    while alive(pid) and socket.gettime() < deadline do socket.sleep(0.1) end
    if alive(pid) then
      os.execute("kill -KILL " .. pid .. " 2>/dev/null")
      killed = killed + 1
    end
  end
  local records = {}
  local rf = io.open(h.out)
  if rf then
    for line in rf:lines() do records[#records + 1] = cjson.decode(line) end
    rf:close()
  end
  return records, killed
end

return M
