-- spec/support/es_standin.lua: a STAND-IN for Elasticsearch — NOT Elasticsearch. A tiny
-- single-threaded HTTP/1.1 server (luasocket) that speaks the slice of the ES REST API that
-- services/product/search_es.lua uses, so the adapter can be tested where no ES can run:
--   GET / · GET|PUT|DELETE /{index} · PUT|DELETE /{index}/_doc/{id} · POST /_bulk (index) ·
--   POST /{index}/_search (bool should/filter; multi_match with fuzziness or bool_prefix;
--   term/terms/range filters; sort by _score/field + id; search_after; size)
-- Scoring is a crude imitation (per query word: exact 1, prefix 0.6, within edit distance 0.5,
-- times the field boost); ES's real BM25 and analyzers differ. Documents live in memory.
--
--   build/mercato lua spec/support/es_standin.lua PORT      (runs until killed)
local socket = require "socket"
local cjson = require "cjson"

local port = tonumber(arg and arg[1]) or 59200
local indices = {}     -- name → { mapping = {}, docs = { id → source } }

local function words(s)
  local out = {}
  s = tostring(s or ""):lower():gsub("\195[\160-\165]", "a"):gsub("\195[\168-\171]", "e"):gsub("\195[\172-\175]", "i")
    :gsub("\195[\178-\182]", "o"):gsub("\195[\185-\188]", "u"):gsub("\195\167", "c")
  for w in s:gmatch("[%w]+") do out[#out + 1] = w end   -- no stemming: fuzziness covers plurals
  return out
end

local function lev(a, b)
  if math.abs(#a - #b) > 2 then return 99 end
  local prev = {}
  for j = 0, #b do prev[j] = j end
  for i = 1, #a do
    local cur = { [0] = i }
    for j = 1, #b do
      cur[j] = math.min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (a:sub(i, i) == b:sub(j, j) and 0 or 1))
    end
    prev = cur
  end
  return prev[#b]
end

local function field_text(src, f)
  local name = f:gsub("%^.*$", ""):gsub("%.text$", "")
  local v = src[name]
  if type(v) == "table" then return table.concat(v, " ") end
  return v
end

-- Score of a multi_match on one document (nil: no match under operator "and").
local function multi_match(mm, src)
  local total = 0
  local qwords = words(mm.query)
  for qi, qw in ipairs(qwords) do
    local best = 0
    for _, f in ipairs(mm.fields or {}) do
      local boost = tonumber(f:match("%^([%d%.]+)$")) or 1
      for _, dw in ipairs(words(field_text(src, f))) do
        local s = 0
        if dw == qw then s = 1
        elseif (mm.type == "bool_prefix" and qi == #qwords) and dw:sub(1, #qw) == qw then s = 0.6
        elseif mm.fuzziness and #qw > 2 and lev(qw, dw) <= (#qw > 5 and 2 or 1) then s = 0.5 end
        best = math.max(best, s * boost)
      end
    end
    if best == 0 then return nil end
    total = total + best
  end
  return total
end

local function passes(filter, src)
  for _, f in ipairs(filter or {}) do
    if f.term then
      local k, v = next(f.term)
      local have = src[k]
      local ok = have == v
      if type(have) == "table" then for _, x in ipairs(have) do if x == v then ok = true end end end
      if not ok then return false end
    elseif f.terms then
      local k, vs = next(f.terms)
      local ok = false
      for _, v in ipairs(vs) do if src[k] == v then ok = true end end
      if not ok then return false end
    elseif f.range then
      local k, r = next(f.range)
      local v = src[k]
      if v == nil or (r.gte and v < r.gte) or (r.lte and v > r.lte) then return false end
    end
  end
  return true
end

local function search(idx, body)
  local b = body.query and body.query.bool or {}
  local hits = {}
  for id, src in pairs(idx.docs) do
    if passes(b.filter, src) then
      local score, any = 0, false
      for _, s in ipairs(b.should or {}) do
        local sc = s.multi_match and multi_match(s.multi_match, src)
        if sc then score, any = score + sc, true end
      end
      if any or not b.should then hits[#hits + 1] = { _id = id, _score = score, src = src } end
    end
  end
  local sorts = body.sort or { { _score = "desc" }, { id = "asc" } }
  local function key(h, field) if field == "_score" then return h._score end return h.src[field] end
  table.sort(hits, function(x, y)
    for _, s in ipairs(sorts) do
      local field, dir = next(s)
      local a, c = key(x, field), key(y, field)
      if a ~= c then if dir == "desc" then return a > c else return a < c end end
    end
    return false
  end)
  for _, h in ipairs(hits) do
    h.sort = {}
    for i, s in ipairs(sorts) do h.sort[i] = key(h, (next(s))) end
  end
  local start = 1
  if body.search_after then
    start = #hits + 1
    for i, h in ipairs(hits) do
      local after = false
      for k, s in ipairs(sorts) do
        local _, dir = next(s)
        local a, c = h.sort[k], body.search_after[k]
        if a ~= c then after = (dir == "desc") and a < c or (dir ~= "desc" and a > c); break end
      end
      if after then start = i break end
    end
  end
  local out = {}
  for i = start, math.min(#hits, start + (body.size or 10) - 1) do
    local h = hits[i]
    out[#out + 1] = { _index = "x", _id = h._id, _score = h._score, sort = h.sort }
  end
  return { took = 1, timed_out = false, hits = { hits = out } }
end

local function handle(method, path, body)
  local seg = {}
  for s in path:gsub("%?.*$", ""):gmatch("[^/]+") do seg[#seg + 1] = s end
  local doc = seg[1] ~= "_bulk" and body ~= "" and body:sub(1, 1) == "{" and cjson.decode(body) or nil
  if #seg == 0 then return 200, { name = "es-standin", version = { number = "8.0.0-standin" }, tagline = "not Elasticsearch" } end
  if seg[1] == "_bulk" then
    local lines = {}
    for l in body:gmatch("[^\n]+") do lines[#lines + 1] = cjson.decode(l) end
    local items = {}
    for i = 1, #lines, 2 do
      local a = lines[i].index
      local idx = indices[a._index]
      if not idx then idx = { docs = {} }; indices[a._index] = idx end
      idx.docs[a._id] = lines[i + 1]
      items[#items + 1] = { index = { _id = a._id, status = 201 } }
    end
    return 200, { errors = false, items = items }
  end
  local idx = indices[seg[1]]
  if #seg == 1 then
    if method == "PUT" then
      if idx then return 400, { error = { type = "resource_already_exists_exception" }, status = 400 } end
      indices[seg[1]] = { mapping = doc, docs = {} }
      return 200, { acknowledged = true, index = seg[1] }
    end
    if not idx then return 404, { error = { type = "index_not_found_exception" }, status = 404 } end
    if method == "DELETE" then indices[seg[1]] = nil; return 200, { acknowledged = true } end
    local n = 0
    for _ in pairs(idx.docs) do n = n + 1 end
    return 200, { [seg[1]] = { mappings = idx.mapping and idx.mapping.mappings or {}, standin_count = n } }
  end
  if not idx then return 404, { error = { type = "index_not_found_exception" }, status = 404 } end
  if seg[2] == "_doc" and seg[3] then
    if method == "PUT" then idx.docs[seg[3]] = doc; return 200, { _id = seg[3], result = "updated" } end
    if method == "DELETE" then
      if not idx.docs[seg[3]] then return 404, { result = "not_found" } end
      idx.docs[seg[3]] = nil
      return 200, { result = "deleted" }
    end
    if method == "GET" then
      if not idx.docs[seg[3]] then return 404, { found = false } end
      return 200, { _id = seg[3], found = true, _source = idx.docs[seg[3]] }
    end
  end
  if seg[2] == "_search" then return 200, search(idx, doc or {}) end
  if seg[2] == "_refresh" then return 200, { _shards = { failed = 0 } } end
  return 400, { error = { type = "standin_unsupported", reason = method .. " " .. path } }
end

local srv = assert(socket.bind("127.0.0.1", port))
io.stdout:write("es-standin listening on ", port, "\n")
io.stdout:flush()
while true do
  local c = srv:accept()
  if c then
    c:settimeout(5)
    local line = c:receive("*l")
    if line and line ~= "" then
      local method, path = line:match("^(%u+) (%S+)")
      local len = 0
      while true do
        local h = c:receive("*l")
        if not h or h == "" then break end
        local k, v = h:match("^([^:]+):%s*(.*)$")
        if k and k:lower() == "content-length" then len = tonumber(v) end
      end
      local body = len > 0 and c:receive(len) or ""
      local ok, status, doc = pcall(handle, method, path, body or "")
      if not ok then status, doc = 500, { error = { type = "standin_error", reason = tostring(status) } } end
      local out = cjson.encode(doc)
      -- One request per connection: a single thread must not sit on an idle keep-alive client.
      c:send(("HTTP/1.1 %d X\r\nContent-Type: application/json\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s")
        :format(status, #out, out))
    end
    c:close()
  end
end
