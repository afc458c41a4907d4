-- redis_mini: a minimal Redis client over ngx.socket.tcp for the nginx + Lua peer of `make bench`
-- (lua-resty-redis is not packaged in Debian). RESP2 only: enough for GET and HGETALL.
--
--   local redis = require "redis_mini"
--   local r = redis.new({ host = "127.0.0.1", port = 29379, db = 0, timeout = 1000,
--                         pool_size = 32, backlog = 1024, idle_ms = 60000 })
--   local v, err = r:call("HGETALL", "bench:product:42")   -- flat array k1, v1, k2, v2, ...
--
-- Connections come from a cosocket keepalive pool (one per nginx worker and pool name; at most
-- pool_size open connections per worker, further requests wait in a backlog), as lua-resty-redis
-- does. A connection is put back with setkeepalive after a complete reply and closed after any
-- error. A nil bulk reply is returned as nil; an error reply as nil, "ERR ...".
local tcp = ngx.socket.tcp
local sub, byte, tonumber, concat = string.sub, string.byte, tonumber, table.concat

local M = {}
local mt = { __index = M }

function M.new(opts)
  local self = {
    host = opts.host or "127.0.0.1",
    port = opts.port or 6379,
    db = opts.db or 0,
    timeout = opts.timeout or 1000,
    idle_ms = opts.idle_ms or 60000,
  }
  self.pool_opts = {
    pool = "redis:" .. self.host .. ":" .. self.port .. ":" .. self.db,
    pool_size = opts.pool_size or 32,
    backlog = opts.backlog or 1024,
  }
  return setmetatable(self, mt)
end

local function read_reply(sock)
  local line, err = sock:receive() -- one line, CRLF stripped
  if not line then return nil, err, true end
  local t = byte(line)
  if t == 36 then -- '$' bulk string
    local n = tonumber(sub(line, 2))
    if n < 0 then return nil end
    local data, rerr = sock:receive(n + 2)
    if not data then return nil, rerr, true end
    return sub(data, 1, n)
  elseif t == 42 then -- '*' array
    local n = tonumber(sub(line, 2))
    if n < 0 then return nil end
    local arr = {}
    for i = 1, n do
      local v, verr, fatal = read_reply(sock)
      if fatal then return nil, verr, true end
      if v == nil and verr == nil then v = false end -- nil element, as mercato's cache binding
      arr[i] = v
    end
    return arr
  elseif t == 58 then -- ':' integer
    return tonumber(sub(line, 2))
  elseif t == 43 then -- '+' status
    return sub(line, 2)
  elseif t == 45 then -- '-' error
    return nil, sub(line, 2)
  end
  return nil, "bad reply: " .. line, true
end

local function encode(args)
  local n = #args
  local out = { "*", n, "\r\n" }
  local k = 3
  for i = 1, n do
    local a = tostring(args[i])
    out[k + 1], out[k + 2], out[k + 3], out[k + 4] = "$", #a, "\r\n", a
    out[k + 5] = "\r\n"
    k = k + 5
  end
  return concat(out)
end

-- r:call(cmd, ...) → reply, or nil, err.
function M.call(self, ...)
  local sock = tcp()
  sock:settimeouts(self.timeout, self.timeout, self.timeout)
  local ok, err = sock:connect(self.host, self.port, self.pool_opts)
  if not ok then return nil, "redis connect: " .. tostring(err) end
  if self.db ~= 0 and sock:getreusedtimes() == 0 then
    sock:send(encode({ "SELECT", self.db }))
    local _, serr = read_reply(sock)
    if serr then sock:close(); return nil, "redis select: " .. serr end
  end
  local sent, serr = sock:send(encode({ ... }))
  if not sent then sock:close(); return nil, "redis send: " .. tostring(serr) end
  local v, rerr, fatal = read_reply(sock)
  if fatal then sock:close(); return nil, "redis: " .. tostring(rerr) end
  sock:setkeepalive(self.idle_ms)
  return v, rerr
end

return M
