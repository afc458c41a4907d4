-- spec/support/raw_http.lua: HTTP/1.1 over a plain socket, for specs that must send exactly
-- the bytes they choose (malformed request lines, huge headers) or need no client library.
local socket = require "socket"

local M = {}

-- Read one response from sock: { status, reason, headers (lower-case names), body }.
local function read_response(sock)
  local line, err = sock:receive("*l")
  if not line then return nil, "no status line: " .. tostring(err) end
  local status, reason = line:match("^HTTP/1%.%d (%d%d%d) ?(.*)$")
  if not status then return nil, "bad status line: " .. line end
  local headers = {}
  while true do
    local h = sock:receive("*l")
    if not h or h == "" then break end
    local k, v = h:match("^([^:]+):%s*(.*)$")
    if k then headers[k:lower()] = v end
  end
  local body = ""
  local len = tonumber(headers["content-length"] or "")
  if len and len > 0 then
    body = sock:receive(len) or ""
  elseif headers["transfer-encoding"] == "chunked" then
    local parts = {}
    while true do
      local size = tonumber((sock:receive("*l") or "0"):match("^%x+") or "0", 16)
      if size == 0 then sock:receive("*l"); break end
      parts[#parts + 1] = sock:receive(size)
      sock:receive("*l")
    end
    body = table.concat(parts)
  end
  return { status = tonumber(status), reason = reason, headers = headers, body = body }
end

function M.connect(port, timeout)
  local sock = assert(socket.tcp())
  sock:settimeout(timeout or 5)
  local ok, err = sock:connect("127.0.0.1", port)
  if not ok then return nil, err end
  return sock
end

-- Send raw bytes on a new connection, read one response, close.
function M.raw(port, bytes, timeout)
  local sock, err = M.connect(port, timeout)
  if not sock then return nil, err end
  sock:send(bytes)
  local res, rerr = read_response(sock)
  sock:close()
  return res, rerr
end

-- A well-formed request: M.request(port, "POST", "/x", { headers = {...}, body = "..." }).
-- Pass opts.sock to reuse a keep-alive connection.
function M.request(port, method, path, opts)
  opts = opts or {}
  local lines = { method .. " " .. path .. " HTTP/1.1", "Host: 127.0.0.1" }
  local body = opts.body
  for k, v in pairs(opts.headers or {}) do lines[#lines + 1] = k .. ": " .. v end
  if body then lines[#lines + 1] = "Content-Length: " .. #body end
  local bytes = table.concat(lines, "\r\n") .. "\r\n\r\n" .. (body or "")
  local sock = opts.sock
  if not sock then
    local err
    sock, err = M.connect(port, opts.timeout)
    if not sock then return nil, err end
  end
  local ok, serr = sock:send(bytes)
  if not ok then return nil, serr end
  local res, err = read_response(sock)
  if not opts.sock then sock:close() end
  return res, err
end

-- Send every request on its own connection first, then read every answer, so the service
-- sees them at once. reqs = { { method, path, headers = {}, body = "" }, ... } → responses
-- (each as read_response gives it), in the order of reqs.
function M.concurrently(port, reqs)
  local socks, out = {}, {}
  for i, r in ipairs(reqs) do
    local lines = { r.method .. " " .. r.path .. " HTTP/1.1", "Host: 127.0.0.1" }
    for k, v in pairs(r.headers or {}) do lines[#lines + 1] = k .. ": " .. v end
    local body = r.body or ""
    lines[#lines + 1] = "Content-Length: " .. #body
    lines[#lines + 1] = ""
    lines[#lines + 1] = body
    socks[i] = assert(M.connect(port, 30))
    assert(socks[i]:send(table.concat(lines, "\r\n")))
  end
  for i, s in ipairs(socks) do
    out[i] = assert(read_response(s))
    s:close()
  end
  return out
end

M.read_response = read_response
return M
