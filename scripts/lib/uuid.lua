-- scripts/lib/uuid.lua: the one check of a textual UUID (8-4-4-4-12 hex digits, either case)
-- that handlers, stores and the event envelope share.
--
--   local uuid = require "lib.uuid"
--   if not uuid.valid(id) then return problem.not_found("product", id) end
local type = type

local _M = {}

_M.PATTERN = "^%x%x%x%x%x%x%x%x%-%x%x%x%x%-%x%x%x%x%-%x%x%x%x%-%x%x%x%x%x%x%x%x%x%x%x%x$"
local PATTERN = _M.PATTERN

-- Whether s is a UUID string.
function _M.valid(s) return type(s) == "string" and s:find(PATTERN) ~= nil end

return _M
