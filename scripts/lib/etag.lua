-- scripts/lib/etag.lua: the ETag of a versioned resource ("<version>") and the If-Match /
-- If-None-Match lists that name versions (RFC 9110 §8.8.3, §13.1.1, §13.1.2).
--
--   local etag = require "lib.etag"
--   headers.ETag = etag.of(row.version)                          -- "7"
--   local want = etag.versions(req:header("If-Match"))           -- "*" | { 7, 8 } | nil (absent)
--   if want ~= "*" and not etag.matches(want, row.version) then return 412 end
--
-- If-Match uses the strong comparison: a weak tag (W/"7") never matches, and neither does
-- anything that is not an entity-tag (a bare 7): both leave the list without that version, so
-- the precondition fails (412), as it would for a stale version.
local tonumber = tonumber

local _M = {}

function _M.of(version) return ('"%d"'):format(version) end

-- A header value → "*", or the list of versions it names (weak tags only with weak_ok, for
-- If-None-Match's weak comparison); nil when the header is absent.
function _M.versions(value, weak_ok)
  if not value then return nil end
  value = value:match("^%s*(.-)%s*$")
  if value == "*" then return "*" end
  local out = {}
  for item in value:gmatch("[^,]+") do
    item = item:match("^%s*(.-)%s*$")
    local weak, v = item:match('^(W/)"(%d+)"$')
    if not weak then v = item:match('^"(%d+)"$') end
    if v and #v <= 15 and (weak == nil or weak_ok) then out[#out + 1] = tonumber(v) end
  end
  return out
end

-- Whether a list from versions() admits `version`.
function _M.matches(list, version)
  if list == "*" then return true end
  for _, v in ipairs(list) do if v == version then return true end end
  return false
end

return _M
