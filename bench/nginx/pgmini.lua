-- pgmini: a minimal PostgreSQL client (wire protocol 3.0) over ngx.socket.tcp for the nginx + Lua
-- peer of `make bench`. Trust authentication only (the private stack's PostgreSQL uses trust).
--
--   local pg = require "pgmini"
--   local c = pg.new({ host = "127.0.0.1", port = 29432, user = "postgres", database = "mercato_bench",
--                      timeout = 5000, pool_size = 16, backlog = 1024, idle_ms = 60000 })
--   local rows, err = c:query("SELECT id, name FROM bench_items WHERE id = $1", 42)
--
-- Like mercato's db binding it uses the extended protocol with named prepared statements: on a
-- fresh connection (and after "prepared statement does not exist") one write carries
-- Parse + Describe + Bind + Execute + Sync; afterwards Bind + Execute + Sync only: one round trip
-- per query either way. Parameters and results are text; int2/int4/int8/oid/float4/float8/numeric
-- columns become Lua numbers, bool becomes a boolean, NULL becomes cjson.null, the rest strings.
-- Connections come from a cosocket keepalive pool (at most pool_size open per worker, further
-- requests wait in a backlog); any protocol or I/O error closes the connection.
local bit = require "bit"
local cjson = require "cjson"
local tcp = ngx.socket.tcp
local band, rshift, lshift, bor = bit.band, bit.rshift, bit.lshift, bit.bor
local char, byte, sub, find = string.char, string.byte, string.sub, string.find
local concat, tonumber, tostring = table.concat, tonumber, tostring
local crc32 = ngx.crc32_short

local M = {}
local mt = { __index = M }

-- Row descriptions by statement name, per nginx worker (a statement name is a hash of its SQL,
-- so every connection that prepared it yields the same description).
local descs = {}

local NUMERIC = { [20] = true, [21] = true, [23] = true, [26] = true, [700] = true, [701] = true, [1700] = true }
local BOOL = 16

local function i32(n)
  return char(band(rshift(n, 24), 255), band(rshift(n, 16), 255), band(rshift(n, 8), 255), band(n, 255))
end
local function i16(n) return char(band(rshift(n, 8), 255), band(n, 255)) end
local function get_i32(s, p)
  local a, b, c, d = byte(s, p, p + 3)
  return bor(lshift(a, 24), lshift(b, 16), lshift(c, 8), d) -- signed, as PostgreSQL's Int32
end
local function get_i16(s, p)
  local a, b = byte(s, p, p + 1)
  return bor(lshift(a, 8), b)
end

local function msg(t, body) return t .. i32(#body + 4) .. body end

function M.new(opts)
  local self = {
    host = opts.host or "127.0.0.1",
    port = opts.port or 5432,
    user = opts.user or "postgres",
    database = opts.database or opts.user or "postgres",
    timeout = opts.timeout or 5000,
    idle_ms = opts.idle_ms or 60000,
  }
  self.pool_opts = {
    pool = "pg:" .. self.host .. ":" .. self.port .. ":" .. self.database .. ":" .. self.user,
    pool_size = opts.pool_size or 16,
    backlog = opts.backlog or 1024,
  }
  return setmetatable(self, mt)
end

-- One backend message: type byte and body.
local function read_msg(sock)
  local hdr, err = sock:receive(5)
  if not hdr then return nil, err end
  local len = get_i32(hdr, 2) - 4
  if len == 0 then return sub(hdr, 1, 1), "" end
  local body
  body, err = sock:receive(len)
  if not body then return nil, err end
  return sub(hdr, 1, 1), body
end

-- ErrorResponse fields → "SQLSTATE: message".
local function error_text(body)
  local code, text = "", ""
  local p = 1
  while p <= #body do
    local f = sub(body, p, p)
    if f == "\0" then break end
    local z = find(body, "\0", p + 1, true)
    local v = sub(body, p + 1, z - 1)
    if f == "C" then code = v elseif f == "M" then text = v end
    p = z + 1
  end
  return code .. ": " .. text, code
end

local function startup(self, sock)
  local body = i32(196608) .. "user\0" .. self.user .. "\0database\0" .. self.database .. "\0\0"
  local ok, err = sock:send(i32(#body + 4) .. body)
  if not ok then return nil, err end
  while true do
    local t, b = read_msg(sock)
    if not t then return nil, b end
    if t == "R" then
      local code = get_i32(b, 1)
      if code ~= 0 then return nil, "authentication method " .. code .. " not supported (trust only)" end
    elseif t == "E" then
      return nil, (error_text(b))
    elseif t == "Z" then
      return true
    end -- S (ParameterStatus), K (BackendKeyData), N (notice): ignored
  end
end

-- RowDescription → { names = {...}, numeric = {...}, bool = {...}, n = ncols }
local function parse_desc(b)
  local n = get_i16(b, 1)
  local d = { names = {}, numeric = {}, bool = {}, n = n }
  local p = 3
  for i = 1, n do
    local z = find(b, "\0", p, true)
    d.names[i] = sub(b, p, z - 1)
    local oid = get_i32(b, z + 7) -- after table oid (4) and column number (2)
    d.numeric[i] = NUMERIC[oid] or false
    d.bool[i] = oid == BOOL
    p = z + 19 -- name\0, table oid 4, attnum 2, type oid 4, typlen 2, typmod 4, format 2
  end
  return d
end

local function parse_row(b, d)
  local row = {}
  local p = 3
  for i = 1, d.n do
    local len = get_i32(b, p)
    p = p + 4
    local v
    if len < 0 then
      v = cjson.null
    else
      v = sub(b, p, p + len - 1)
      p = p + len
      if d.numeric[i] then v = tonumber(v) elseif d.bool[i] then v = v == "t" end
    end
    row[d.names[i]] = v
  end
  return row
end

local function bind_execute(name, args, n, describe)
  local parts = { "\0", name, "\0", i16(0), i16(n) }
  for i = 1, n do
    local a = args[i]
    if a == nil or a == cjson.null then
      parts[#parts + 1] = i32(-1)
    else
      a = tostring(a)
      parts[#parts + 1] = i32(#a)
      parts[#parts + 1] = a
    end
  end
  parts[#parts + 1] = i16(0)
  local out = msg("B", concat(parts))
  if describe then out = out .. msg("D", "P\0") end
  return out .. msg("E", "\0" .. i32(0)) .. msg("S", "")
end

-- Reads until ReadyForQuery. → rows, or nil, err, sqlstate (the connection is still usable
-- when sqlstate is set), or nil, err (I/O: close it).
local function collect(sock, name)
  local rows, d, nrows, qerr, qcode = {}, descs[name], 0, nil, nil
  while true do
    local t, b = read_msg(sock)
    if not t then return nil, b end
    if t == "D" then
      nrows = nrows + 1
      rows[nrows] = parse_row(b, d)
    elseif t == "T" then
      d = parse_desc(b)
      descs[name] = d
    elseif t == "E" then
      qerr, qcode = error_text(b)
    elseif t == "Z" then
      if qerr then return nil, qerr, qcode end
      return rows
    end -- 1 ParseComplete, 2 BindComplete, t ParameterDescription, n NoData, C CommandComplete, N notice
  end
end

-- c:query(sql, ...) → array of rows, or nil, err.
function M.query(self, sql, ...)
  local sock = tcp()
  sock:settimeouts(self.timeout, self.timeout, self.timeout)
  local ok, err = sock:connect(self.host, self.port, self.pool_opts)
  if not ok then return nil, "pg connect: " .. tostring(err) end
  local fresh = sock:getreusedtimes() == 0
  if fresh then
    ok, err = startup(self, sock)
    if not ok then sock:close(); return nil, "pg startup: " .. tostring(err) end
  end
  local name = "pgmini_" .. crc32(sql)
  local args, n = { ... }, select("#", ...)
  local parse = fresh or not descs[name]
  for _ = 1, 2 do
    local out = bind_execute(name, args, n, false)
    if parse then
      out = msg("P", name .. "\0" .. sql .. "\0" .. i16(0)) .. msg("D", "S" .. name .. "\0") .. out
    end
    ok, err = sock:send(out)
    if not ok then sock:close(); return nil, "pg send: " .. tostring(err) end
    local rows, qerr, code = collect(sock, name)
    if rows then
      sock:setkeepalive(self.idle_ms)
      return rows
    end
    if not code then sock:close(); return nil, "pg: " .. tostring(qerr) end
    if code ~= "26000" or parse then -- 26000: prepared statement does not exist here
      sock:setkeepalive(self.idle_ms)
      return nil, qerr
    end
    parse = true
  end
end

return M
