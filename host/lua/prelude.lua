-- host/lua/prelude.lua: the Lua half of the host, run first in every state. Returns what the
-- C half needs: the request metatable, the message handler and the body encoder.
local creq = require "mercato.request"   -- C: reads the request being served by this thread
local json = require "json"

local char, gsub, tonumber = string.char, string.gsub, tonumber

-- application/x-www-form-urlencoded decoding ('+' is a space, %XX a byte), shared with
-- scripts (lib.validate's form bodies) as the module "mercato.form".
local function unescape(s)
  s = gsub(s, "+", " ")
  return (gsub(s, "%%(%x%x)", function(h) return char(tonumber(h, 16)) end))
end

-- Query strings: first value wins in `req.query`; `req:query_all(name)` lists every value.
local function parse_query(qs)
  local q = {}
  if not qs or qs == "" then return q end
  for pair in qs:gmatch("[^&]+") do
    local k, v = pair:match("^([^=]*)=?(.*)$")
    k = unescape(k)
    if k ~= "" and q[k] == nil then q[k] = unescape(v) end
  end
  return q
end
-- (parse_query is shared too: tests/fuzz/fuzz_lua_form.c calls both on arbitrary bytes.)
package.preload["mercato.form"] = function() return { unescape = unescape, parse_query = parse_query } end

local methods = {}

-- req:header("Content-Type") → value or nil (case-insensitive name).
function methods.header(_, name) return creq.header(name) end

function methods.query_all(self, name)
  local out, qs = {}, creq.query_string()
  if not qs then return out end
  for pair in qs:gmatch("[^&]+") do
    local k, v = pair:match("^([^=]*)=?(.*)$")
    if unescape(k) == name then out[#out + 1] = unescape(v) end
  end
  return out
end

-- req:json() → the decoded body, or nil and a message saying why it is not a JSON document.
function methods.json(self)
  local body = self.body
  if body == "" then return nil, "request body is empty" end
  local v, err = json.decode(body)
  if err then return nil, "request body is not valid JSON (" .. err:gsub("^invalid JSON ", "") .. ")" end
  return v
end

local lazy = {
  query = function() return parse_query(creq.query_string()) end,
  body = function() return creq.body() end,
  headers = function() return creq.headers() end,
  remote_addr = function() return creq.remote_addr() end,
  -- the socket peer, or the right-most untrusted X-Forwarded-For hop behind TRUSTED_PROXIES
  client_ip = function() return creq.client_ip() end,
  claims = function() return creq.claims() or false end,
}

local request_mt = {
  __index = function(self, k)
    local m = methods[k]
    if m then return m end
    local f = lazy[k]
    if not f then return nil end
    local v = f()
    rawset(self, k, v)
    return v
  end,
}

local function traceback(msg)
  if type(msg) ~= "string" then
    local mt = getmetatable(msg)
    local ok, text = false, nil
    if mt and mt.__tostring then ok, text = pcall(tostring, msg) end   -- a __tostring may raise
    msg = ok and type(text) == "string" and text
      or ("error object: " .. type(msg) .. (mt and mt.__tostring and " (its __tostring failed)" or ""))
  end
  return debug.traceback(msg, 2)
end

-- Globals are fixed once the service is loaded: a stray assignment is a bug, not state.
local function lock_globals()
  setmetatable(_G, {
    __newindex = function(_, k) error("assignment to undeclared global '" .. tostring(k) .. "'", 2) end,
  })
end

-- LUA_COVERAGE=<dir>: count executed lines (a line hook: slow, for coverage runs only) and
-- write them out when the state closes; scripts/dev/coverage.lua merges them into lcov.
local at_close = function() end
local coverage_dir = os.getenv("LUA_COVERAGE")
if coverage_dir and coverage_dir ~= "" then
  local counts, getinfo = {}, debug.getinfo
  debug.sethook(function(_, line)
    local src = getinfo(2, "S").source
    local t = counts[src]
    if not t then t = {}; counts[src] = t end
    t[line] = (t[line] or 0) + 1
  end, "l")
  at_close = function()
    debug.sethook()
    local name = string.format("%s/cov.%s.txt", coverage_dir, require("crypto").uuid4())
    local f = io.open(name, "w")
    if not f then return end
    for src, lines in pairs(counts) do
      if src:sub(1, 1) == "@" then
        for line, n in pairs(lines) do f:write(src:sub(2), "\t", line, "\t", n, "\n") end
      end
    end
    f:close()
  end
end

return {
  at_close = at_close,
  request_mt = request_mt,
  traceback = traceback,
  encode = json.encode,
  lock_globals = lock_globals,
}
