-- scripts/services/product/handlers/products.lua: the catalogue — browse and search (public),
-- luacheck: max line length 170
-- create (seller/admin), PATCH and DELETE (the owner or an admin; roles checked in C on the
-- route, ownership here).
--
-- Ownership refusals are 403, not 404: products are public, so hiding that one exists would
-- protect nothing (CONTRACT §3 keeps 404 for another user's *private* resource).
-- Preconditions: PATCH needs If-Match (428 without); a stale one is 412. RFC 9110 §13.2.1 has
-- 404/403 and body errors (400/415/422) win over 412. DELETE honours If-Match when sent.
local crypto = require "crypto"
local json = require "json"
local etag_lib = require "lib.etag"
local ownership = require "lib.ownership"
local pagination = require "lib.pagination"
local problem = require "lib.problem"
local validate = require "lib.validate"
local pcache = require "services.product.cache"
local S = require "services.product.schema"
local search = require "services.product.search"
local store = require "services.product.store"
local uuid = require "lib.uuid"

local _M = {}

local etag = etag_lib.of

local function doc_headers(row, extra)
  local h = { ETag = etag(row.version), ["Content-Type"] = "application/json" }
  for k, v in pairs(extra or {}) do h[k] = v end
  return h
end

-- Whether the caller may change a product owned by row.seller_id.
local function owns(claims, row) return ownership.may_change(claims, row.seller_id) end

local etag_versions, matches = etag_lib.versions, etag_lib.matches

-- ---- reads -----------------------------------------------------------------------------------

local MAX_IDS = 100

local function bad_ids(message)
  return problem.bad_request("Invalid query parameter ids.", { { field = "ids", message = message } })
end

-- "a,b,c" → the lower-case ids, first occurrence kept, or nil, why.
local function id_list(raw)
  local out, seen, n = {}, {}, 0
  for item in (raw .. ","):gmatch("([^,]*),") do
    n = n + 1
    if n > MAX_IDS then return nil, "must list at most " .. MAX_IDS .. " product ids" end
    item = item:match("^%s*(.-)%s*$")
    if not uuid.valid(item) then return nil, "must be 1 to " .. MAX_IDS .. " product ids (UUIDs) separated by commas" end
    local id = item:lower()
    if not seen[id] then seen[id] = true; out[#out + 1] = id end
  end
  return out
end

-- GET /products?ids=a,b,c (the cart's read): the active ones among those products, in the order
-- given, each the document GET /products/{id} shows; unknown and deleted ids are left out.
-- Hits come from the read cache in one MGET, the misses from one query (then cached), and the
-- answer is spliced from the documents' JSON texts. Not a search: no other parameter, no pages;
-- a repeated ids parameter adds to the list.
local function by_ids(req)
  for k in pairs(req.query) do
    if k ~= "ids" then
      return problem.bad_request("ids cannot be combined with other parameters.", { { field = k, message = "is not allowed with ids" } })
    end
  end
  local ids, why = id_list(table.concat(req:query_all("ids"), ","))   -- ids=a&ids=b is ids=a,b
  if not ids then return bad_ids(why) end
  local texts = pcache.get_many(ids)
  local missing = {}
  for _, id in ipairs(ids) do if not texts[id] then missing[#missing + 1] = id end end
  if #missing > 0 then
    local rows, err, code = store.get_many(missing)
    if not rows then return problem.from(code, err) end
    local fresh = {}
    for i, row in ipairs(rows) do
      local text = json.encode(store.public(row))
      texts[row.id] = text
      fresh[i] = { row.id, row.version, text }
    end
    pcache.put_many(fresh)
  end
  local parts = {}
  for _, id in ipairs(ids) do parts[#parts + 1] = texts[id] end
  return 200, '{"items":[' .. table.concat(parts, ",") .. '],"next_cursor":null}', { ["Content-Type"] = "application/json" }
end

function _M.list(req)
  if req.query.ids ~= nil then return by_ids(req) end
  local page, status, body, headers = pagination.params(req.query)
  if not page then return status, body, headers end
  local params, pst, pbody, pheaders = search.params(req.query)
  if not params then return pst, pbody, pheaders end
  local res, a, b, c = search.list(params, page)
  if res == false then return a, b, c end       -- a problem (a cursor of another order)
  if not res then return problem.from(b, a) end
  return 200, res
end

-- A product that is not active: 404 to everyone but its owner and admins (CONTRACT §6), who
-- see its document with status "deleted" and deleted_at — never cached, never shared.
local function deleted_view(req, id)
  local claims = req.claims
  if not (claims and (claims.role == "admin" or claims.role == "seller")) then return problem.not_found("product", id) end
  local row, err, code = store.get_any(id)
  if err then return problem.from(code, err) end
  if not row or not ownership.may_change(claims, row.seller_id) then return problem.not_found("product", id) end
  local doc = store.public(row)
  doc.status, doc.deleted_at = row.status, row.deleted_at
  return 200, doc, doc_headers(row, { ["Cache-Control"] = "private, no-store" })
end

-- GET /products/{id}: from the Redis read cache when it has it (the cached JSON is sent as
-- it is), else PostgreSQL, then cached. 304 when If-None-Match names the current version.
function _M.show(req)
  local id = req.params.id
  if not uuid.valid(id) then return problem.not_found("product", id) end
  id = id:lower()
  local inm = etag_versions(req:header("If-None-Match"), true)
  local version, cached = pcache.get(id)
  if cached then
    do
      if inm and matches(inm, version) then return 304, nil, { ETag = etag(version) } end
      return 200, cached, { ETag = etag(version), ["Content-Type"] = "application/json", ["X-Cache"] = "hit" }
    end
  end
  local row, err, code = store.get(id)
  if err then return problem.from(code, err) end
  if not row then return deleted_view(req, id) end
  if inm and matches(inm, row.version) then return 304, nil, { ETag = etag(row.version) } end
  local text = json.encode(store.public(row))
  pcache.put(id, row.version, text)
  return 200, text, doc_headers(row, { ["X-Cache"] = "miss" })
end

-- ---- writes ----------------------------------------------------------------------------------

-- Turn a store write's refusal into its problem.
local function refused(res, id)
  if res.refused == "category" then return problem.validation({ { field = "category_id", message = "no such category" } }) end
  if res.refused == "gone" then return problem.not_found("product", id) end
  if res.refused == "forbidden" then return problem.forbidden("Only the product's seller or an admin may change it.") end
  return problem.new(412, "The product has changed since that version; fetch it again.", nil,
    { ETag = etag(res.current) })
end

function _M.create(req)
  local doc, status, body, headers = validate.body(req, S.product_create)
  if not doc then return status, body, headers end
  local errors = S.check_product(doc, {})
  if #errors > 0 then return problem.validation(errors) end
  if doc.category_id == json.null then doc.category_id = nil end
  if doc.category_id then doc.category_id = doc.category_id:lower() end
  local seller = req.claims.sub
  if not uuid.valid(seller) then
    return problem.forbidden("Only a seller account (a token whose subject is a user id) can own products.")
  end
  local id = crypto.uuid7()
  local row, err, code = store.create(id, seller:lower(), doc)
  if not row then return problem.from(code, err) end
  if row.refused then return refused(row, id) end
  return 201, store.public(row), doc_headers(row, { Location = "/products/" .. id })
end

function _M.update(req)
  local id = req.params.id
  if not uuid.valid(id) then return problem.not_found("product", id) end
  id = id:lower()
  local cur, err, code = store.get(id)
  if err then return problem.from(code, err) end
  if not cur then return problem.not_found("product", id) end
  if not owns(req.claims, cur) then return problem.forbidden("Only the product's seller or an admin may change it.") end
  local raw_if = req:header("If-Match")
  if not raw_if or raw_if:match("^%s*$") then
    return problem.new(428, 'This request must be conditional: send If-Match: "<version>" from the ETag of GET /products/{id}.')
  end
  local doc, status, body, headers = validate.body(req, S.product_patch)
  if not doc then return status, body, headers end
  local errors = S.check_product(doc, {})
  if #errors > 0 then return problem.validation(errors) end
  if type(doc.category_id) == "string" then doc.category_id = doc.category_id:lower() end
  -- A list naming the version just read is held to it (the store re-checks it on the locked row).
  local want = etag_versions(raw_if, false)
  local version = nil
  if want ~= "*" then
    if not matches(want, cur.version) then
      return problem.new(412, "If-Match names no current version of this product.", nil, { ETag = etag(cur.version) })
    end
    version = cur.version
  end
  local res
  res, err, code = store.update(id, version, doc, function(row) return owns(req.claims, row) end)
  if not res then return problem.from(code, err) end
  if res.refused then return refused(res, id) end
  pcache.invalidate(id)
  return 200, store.public(res), doc_headers(res)
end

function _M.delete(req)
  local id = req.params.id
  if not uuid.valid(id) then return problem.not_found("product", id) end
  id = id:lower()
  local version
  local raw_if = req:header("If-Match")
  if raw_if and not raw_if:match("^%s*$") then
    local want = etag_versions(raw_if, false)
    if want ~= "*" then
      if #want ~= 1 then
        local cur, err, code = store.get(id)
        if err then return problem.from(code, err) end
        if not cur then return problem.not_found("product", id) end
        if not matches(want, cur.version) then
          return problem.new(412, "If-Match names no current version of this product.", nil, { ETag = etag(cur.version) })
        end
        version = cur.version
      else
        version = want[1]
      end
    end
  end
  local res, err, code = store.delete(id, version, function(row) return owns(req.claims, row) end)
  if not res then return problem.from(code, err) end
  if res.refused then return refused(res, id) end
  pcache.invalidate(id)
  return 204
end

return _M
