-- scripts/services/product/search_es.lua: the Elasticsearch back end of services.product.search
-- luacheck: max line length 170
-- (ELASTICSEARCH_URL set). The index is fed from the outbox's product.* events by a consumer
-- (consumers.lua: eventually consistent, retried through the broker) and rebuilt by
-- reindex.lua; queries answer ids in relevance order, which search.lua hydrates from
-- PostgreSQL. Uses only the REST calls spec/support/es_standin.lua speaks.
local db = require "db"
local host = require "host"
local http = require "http"
local json = require "json"
local log = require "log"
local pagination = require "lib.pagination"
local store = require "services.product.store"

local _M = {}

local TIMEOUT_MS = 5000

function _M.url() return (host.env("ELASTICSEARCH_URL") or ""):gsub("/+$", "") end
function _M.index_name() return host.env("ES_INDEX") or "products" end
function _M.cursor_tag(sort) return "es:" .. sort end

-- Analysis: lower case, accents folded, English stems; tags are exact keywords with a text
-- sub-field for matching.
_M.MAPPING = {
  settings = {
    number_of_shards = 1,
    analysis = {
      filter = { english_stemmer = { type = "stemmer", language = "english" } },
      analyzer = { product_text = { type = "custom", tokenizer = "standard", filter = { "lowercase", "asciifolding", "english_stemmer" } } },
    },
  },
  mappings = {
    dynamic = "strict",
    properties = {
      id = { type = "keyword" }, seller_id = { type = "keyword" }, category_id = { type = "keyword" },
      name = { type = "text", analyzer = "product_text" },
      description = { type = "text", analyzer = "product_text" },
      category_text = { type = "text", analyzer = "product_text" },
      tags = { type = "keyword", fields = { text = { type = "text", analyzer = "product_text" } } },
      price_cents = { type = "long" }, currency = { type = "keyword" }, created_at = { type = "date" },
    },
  },
}

-- One REST call → the decoded answer (or {}), or nil, err, code. 404 is `nil, "not found",
-- "not_found"`; other 4xx are "invalid" (a bug: logged), 5xx and transport "unavailable".
function _M.call(method, path, body, ctype)
  local res, err, code = http.request {
    method = method, url = _M.url() .. path, timeout_ms = TIMEOUT_MS,
    headers = { ["Content-Type"] = ctype or "application/json", Accept = "application/json" },
    body = body and (type(body) == "string" and body or json.encode(body)) or nil,
  }
  if not res then return nil, err, code end
  local doc = (res.body and res.body ~= "") and json.decode(res.body) or {}
  if res.status == 404 then return nil, "not found", "not_found" end
  if res.status >= 500 or res.status == 429 then return nil, "elasticsearch answered " .. res.status, "unavailable" end
  if res.status >= 400 then
    log.warn("elasticsearch refused a request", { method = method, path = path, status = res.status, body = tostring(res.body):sub(1, 500) })
    return nil, "elasticsearch answered " .. res.status, "invalid"
  end
  return type(doc) == "table" and doc or {}
end

local ready = {}   -- index name → true once known to exist (a cache: recreated if it is lost)

function _M.ensure_index(name)
  name = name or _M.index_name()
  if ready[name] then return true end
  local ok, err, code = _M.call("GET", "/" .. name)
  if not ok and code ~= "not_found" then return nil, err, code end
  if not ok then
    ok, err, code = _M.call("PUT", "/" .. name, _M.MAPPING)
    if not ok then return nil, err, code end
  end
  ready[name] = true
  return true
end

function _M.forget_index(name) ready[name or _M.index_name()] = nil end

-- The indexed document of a product row.
function _M.document(r)
  return {
    id = r.id, seller_id = r.seller_id, category_id = r.category_id ~= db.null and r.category_id or nil,
    name = r.name, description = r.description, category_text = r.category_text,
    tags = json.array(type(r.tags) == "table" and r.tags or {}), price_cents = r.price_cents,
    currency = r.currency, created_at = r.created_at,
  }
end

local ROW = "SELECT p.id, p.seller_id, p.category_id, p.name, p.description, p.category_text, to_jsonb(p.tags) AS tags, "
  .. "p.price_cents, p.currency, p.created_at, p.status FROM products p"

-- Make the index agree with PostgreSQL about one product: index it when active, remove it
-- otherwise. Reads the current row, so events may arrive late, twice or out of order.
function _M.sync(id)
  if not store.is_uuid(id) then return true end
  local row, err, code = db.query_one(ROW .. " WHERE p.id = $1", id)
  if err then return nil, err, code end
  local ok
  ok, err, code = _M.ensure_index()
  if not ok then return nil, err, code end
  local path = "/" .. _M.index_name() .. "/_doc/" .. id
  if row and row.status == "active" then
    ok, err, code = _M.call("PUT", path, _M.document(row))
  else
    ok, err, code = _M.call("DELETE", path)
    if code == "not_found" then ok = true end
  end
  if not ok then
    if code == "not_found" then _M.forget_index() end
    return nil, err, code == "invalid" and "invalid" or "unavailable"
  end
  return true
end

-- Index every active product into index `name` with _bulk, batch rows at a time. → count
function _M.bulk_all(name, batch)
  batch = batch or 500
  local after, total = "00000000-0000-0000-0000-000000000000", 0
  while true do
    local rows, err, code = db.query(ROW .. " WHERE p.status = 'active' AND p.id > $1 ORDER BY p.id LIMIT $2", after, batch)
    if not rows then return nil, err, code end
    if #rows == 0 then return total end
    local lines = {}
    for _, r in ipairs(rows) do
      lines[#lines + 1] = json.encode({ index = { _index = name, _id = r.id } })
      lines[#lines + 1] = json.encode(_M.document(r))
    end
    local res
    res, err, code = _M.call("POST", "/_bulk", table.concat(lines, "\n") .. "\n", "application/x-ndjson")
    if not res then return nil, err, code end
    if res.errors then return nil, "bulk indexing reported errors", "invalid" end
    total = total + #rows
    after = rows[#rows].id
  end
end

-- The search body for params (see search.params) and a page.
function _M.query(params, page)
  local fields = { "name^3", "tags.text^2", "category_text^2", "description" }
  local filter = json.array({})
  if params.category_ids then filter[#filter + 1] = { terms = { category_id = json.array(params.category_ids) } } end
  if params.tag then filter[#filter + 1] = { term = { tags = params.tag } } end
  if params.seller then filter[#filter + 1] = { term = { seller_id = params.seller } } end
  if params.min_price or params.max_price then
    filter[#filter + 1] = { range = { price_cents = { gte = params.min_price, lte = params.max_price } } }
  end
  local sorts = {
    relevance = json.array({ { _score = "desc" }, { id = "asc" } }),
    price = json.array({ { price_cents = "asc" }, { id = "asc" } }),
    ["-price"] = json.array({ { price_cents = "desc" }, { id = "desc" } }),
    newest = json.array({ { created_at = "desc" }, { id = "desc" } }),
  }
  local body = {
    size = page.limit + 1, _source = false, track_total_hits = false,
    query = { bool = {
      should = json.array({
        { multi_match = { query = params.q, fields = json.array(fields), fuzziness = "AUTO", prefix_length = 1, operator = "and" } },
        { multi_match = { query = params.q, fields = json.array(fields), type = "bool_prefix", operator = "and" } },
      }),
      minimum_should_match = 1, filter = filter,
    } },
    sort = sorts[params.sort],
  }
  if page.after then body.search_after = page.after.a end
  return body
end

-- → { items, next_cursor } | nil, err, code | false, problem
function _M.list(params, page)
  if page.after and (not json.is_array(page.after.a) or #page.after.a ~= 2) then
    return false, require("lib.pagination").bad_cursor()
  end
  local res, err, code = _M.call("POST", "/" .. _M.index_name() .. "/_search", _M.query(params, page))
  if not res then
    if code == "not_found" then return { items = json.array({}), next_cursor = json.null } end
    return nil, err, code == "invalid" and "unavailable" or code
  end
  local hits = (res.hits and res.hits.hits) or {}
  local ids = {}
  for i, h in ipairs(hits) do ids[i] = h._id end
  local rows = {}
  if #ids > 0 then
    local got
    got, err, code = db.query("SELECT " .. store.COLUMNS .. " FROM " .. store.FROM
      .. " WHERE p.id = ANY($1::uuid[]) AND p.status = 'active'", "{" .. table.concat(ids, ",") .. "}")
    if not got then return nil, err, code end
    local by_id = {}
    for _, r in ipairs(got) do by_id[r.id] = r end
    -- Keep the index's order; a hit PostgreSQL no longer has (deleted, not yet unindexed) is
    -- dropped, keeping its sort values for the cursor.
    for i, h in ipairs(hits) do rows[#rows + 1] = { row = by_id[h._id], sort = h.sort, n = i } end
  end
  local items = json.array({})
  local limit = page.limit
  for i = 1, math.min(#rows, limit) do
    if rows[i].row then items[#items + 1] = store.public(rows[i].row) end
  end
  local next_cursor = json.null
  if #hits > limit then
    next_cursor = pagination.encode({ o = _M.cursor_tag(params.sort), a = json.array(hits[limit].sort) })
  end
  return { items = items, next_cursor = next_cursor }
end

return _M
