-- scripts/lib/pagination.lua: keyset pagination for list endpoints (CONTRACT §3:
-- ?limit= default 20, max 100; ?cursor= opaque; {"items": [...], "next_cursor": "..." | null}).
--
--   local page, status, body, headers = pagination.params(req.query)
--   if not page then return status, body, headers end
--   -- page.limit, page.after (the decoded cursor table, or nil on the first page)
--   local rows = db.query("... WHERE id > $1 ORDER BY id LIMIT $2", page.after and page.after.id or "", page.limit + 1)
--   return 200, pagination.result(rows, page.limit, function(row) return { id = row.id } end)
--
-- A cursor is base64url(JSON of the last item's sort key): opaque to clients, never trusted —
-- a cursor that does not decode to an object is a 400. A limit above the maximum is clamped
-- (as GitHub does); one that is not a positive integer is a 400.
local crypto = require "crypto"
local json = require "json"
local problem = require "lib.problem"

local _M = { default_limit = 20, max_limit = 100 }

function _M.encode(key) return crypto.base64url_encode(json.encode(key)) end

-- Decoded cursor table, or nil.
function _M.decode(cursor)
  if type(cursor) ~= "string" or cursor == "" or #cursor > 1024 or cursor:find("[^%w_-]") then return nil end
  local raw = crypto.base64url_decode(cursor)
  if not raw then return nil end
  local key = json.decode(raw)
  if type(key) ~= "table" or json.is_array(key) then return nil end
  return key
end

-- The 400 for a cursor this endpoint did not give out (also for one that decodes but whose key
-- does not fit the endpoint's sort key): status, body, headers.
function _M.bad_cursor()
  return problem.bad_request("cursor is not a cursor this endpoint gave out.", { { field = "cursor", message = "is invalid" } })
end

-- pagination.params(query[, opts]) → { limit, after } | nil, problem. opts: default_limit, max_limit.
function _M.params(query, opts)
  local default, max = (opts and opts.default_limit) or _M.default_limit, (opts and opts.max_limit) or _M.max_limit
  local page = { limit = default }
  local l = query.limit
  if l ~= nil and l ~= "" then
    local n = l:match("^%d+$") and tonumber(l)
    if not n or n < 1 then
      return nil, problem.bad_request("limit must be a positive integer.",
        { { field = "limit", message = "must be a positive integer" } })
    end
    page.limit = math.min(n, max)
  end
  local c = query.cursor
  if c ~= nil and c ~= "" then
    page.after = _M.decode(c)
    if not page.after then return nil, _M.bad_cursor() end
  end
  return page
end

-- pagination.result(rows, limit, key_of) → { items, next_cursor }: rows fetched with LIMIT
-- limit + 1, so a further row means there is a next page. key_of(row) → the row's sort key.
-- opts.map(row) shapes each item.
function _M.result(rows, limit, key_of, map)
  local items = json.array({})
  for i = 1, math.min(#rows, limit) do items[i] = map and map(rows[i]) or rows[i] end
  local next_cursor = json.null
  if #rows > limit then next_cursor = _M.encode(key_of(rows[limit])) end
  return { items = items, next_cursor = next_cursor }
end

return _M
