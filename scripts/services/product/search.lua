-- scripts/services/product/search.lua: GET /products behind one interface, two back ends.
-- luacheck: max line length 170
--
--   local search = require "services.product.search"
--   local params, status, body, headers = search.params(req.query)   -- 400 on bad filters
--   local result, err, code = search.list(params, page)              -- { items, next_cursor }
--
-- PostgreSQL (search_pg) is the default and the truth: filters and browse orders always run
-- there. With ELASTICSEARCH_URL set, a query with `q` is answered by Elasticsearch
-- (search_es: ids in relevance order, eventually consistent), then hydrated from PostgreSQL so
-- prices, stock and deletions are never stale. Cursors are opaque and name their back end and
-- order; one from another order is refused with 400.
local db = require "db"
local host = require "host"
local json = require "json"
local pagination = require "lib.pagination"
local problem = require "lib.problem"
local uuid = require "lib.uuid"
local validate = require "lib.validate"
local S = require "services.product.schema"
local pg = require "services.product.search_pg"

local _M = {}

local SORTS = { relevance = true, price = true, ["-price"] = true, newest = true }
local MAX_Q = 200

function _M.es_enabled()
  local u = host.env("ELASTICSEARCH_URL")
  return u ~= nil and u ~= ""
end

local function bad(field, message)
  return nil, problem.bad_request(("Invalid query parameter %s."):format(field), { { field = field, message = message } })
end

local function money(q, field)
  local v = q[field]
  if v == nil or v == "" then return true, nil end
  local n = v:match("^%d+$") and tonumber(v)
  if not n or n > S.MAX_PRICE_CENTS then return false end
  return true, n
end

-- The query string → validated search parameters, or nil, problem (400).
function _M.params(q)
  local p = {}
  if q.q and q.q ~= "" then
    local n = validate.utf8_len(q.q)
    if not n or q.q:find("%z") then return bad("q", "must be valid UTF-8") end
    if n > MAX_Q then return bad("q", "must be at most " .. MAX_Q .. " characters") end
    if q.q:find("%S") then p.q = q.q end
  end
  local ok
  ok, p.min_price = money(q, "min_price")
  if not ok then return bad("min_price", "must be a whole number of cents between 0 and " .. S.MAX_PRICE_CENTS) end
  ok, p.max_price = money(q, "max_price")
  if not ok then return bad("max_price", "must be a whole number of cents between 0 and " .. S.MAX_PRICE_CENTS) end
  if q.seller and q.seller ~= "" then
    if not uuid.valid(q.seller) then return bad("seller", "must be a seller id") end
    p.seller = q.seller:lower()
  end
  if q.tag and q.tag ~= "" then
    local t, why = S.tag(q.tag)
    if not t then return bad("tag", why) end
    p.tag = t
  end
  if q.category and q.category ~= "" then
    if #q.category > 64 or not (uuid.valid(q.category) or q.category:match("^[a-z0-9%-]+$")) then
      return bad("category", "must be a category id or slug")
    end
    p.category = q.category
  end
  local sort = q.sort
  if sort == nil or sort == "" then sort = p.q and "relevance" or "newest" end
  if not SORTS[sort] then return bad("sort", "must be one of relevance, price, -price, newest") end
  if sort == "relevance" and not p.q then sort = "newest" end   -- nothing to rank by
  p.sort = sort
  return p
end

-- The ids of a category (by id or slug) and of every category under it; an empty list when
-- there is no such category. → ids | nil, err, code
function _M.category_ids(ref)
  local rows, err, code = db.query([[
    WITH RECURSIVE sub(id) AS (
      SELECT id FROM categories WHERE ($2 AND id::text = lower($1::text)) OR slug = $1::text
      UNION SELECT c.id FROM categories c JOIN sub ON c.parent_id = sub.id)
    SELECT id FROM sub]], ref, uuid.valid(ref))
  if not rows then return nil, err, code end
  local ids = {}
  for i, r in ipairs(rows) do ids[i] = r.id end
  return ids
end

local function backend(params)
  if params.q and _M.es_enabled() then return require("services.product.search_es") end
  return pg
end

-- search.list(params, page) → { items, next_cursor } | nil, err, code | false, problem...
function _M.list(params, page)
  if params.category then
    local ids, err, code = _M.category_ids(params.category)
    if not ids then return nil, err, code end
    if #ids == 0 then return { items = json.array({}), next_cursor = json.null } end
    params.category_ids = ids
  end
  local b = backend(params)
  if page.after and page.after.o ~= b.cursor_tag(params.sort) then
    return false, pagination.bad_cursor()   -- another order's (or back end's) cursor
  end
  return b.list(params, page)
end

return _M
