-- scripts/services/product/handlers/categories.lua: the category tree (GET public; writes
-- luacheck: max line length 170
-- admin-only, checked on the routes in C) and GET /tags (tags in use, with counts).
local crypto = require "crypto"
local db = require "db"
local json = require "json"
local pagination = require "lib.pagination"
local problem = require "lib.problem"
local validate = require "lib.validate"
local S = require "services.product.schema"
local store = require "services.product.store"

local _M = {}

local COLUMNS = "id, slug, name, parent_id, created_at, updated_at"

local function public(r)
  return { id = r.id, slug = r.slug, name = r.name, parent_id = r.parent_id, created_at = r.created_at, updated_at = r.updated_at }
end

local bad_cursor = pagination.bad_cursor

-- A category by id or slug, or a bare nil.
local function find(ref)
  if store.is_uuid(ref) then return db.query_one("SELECT " .. COLUMNS .. " FROM categories WHERE id = $1", ref:lower()) end
  if type(ref) ~= "string" or #ref > 64 or not ref:match("^[a-z0-9%-]+$") then return nil end
  return db.query_one("SELECT " .. COLUMNS .. " FROM categories WHERE slug = $1", ref)
end

local function taken(_, sqlstate)
  return sqlstate == "23505" and problem.conflict("A category with this slug already exists.")
end

-- GET /categories?parent=<id|slug|root>: ordered by slug.
function _M.list(req)
  local page, status, body, headers = pagination.params(req.query)
  if not page then return status, body, headers end
  if page.after and type(page.after.slug) ~= "string" then return bad_cursor() end
  local parent, root = req.query.parent, false
  if parent == "root" then root, parent = true, nil
  elseif parent and parent ~= "" then
    local p, err, code = find(parent)
    if err then return problem.from(code, err) end
    if not p then return 200, { items = json.array({}), next_cursor = json.null } end
    parent = p.id
  else parent = nil end
  local rows, err, code = db.query("SELECT " .. COLUMNS .. " FROM categories WHERE ($1::text IS NULL OR slug > $1) "
    .. "AND ($2::uuid IS NULL OR parent_id = $2::uuid) AND (NOT $3 OR parent_id IS NULL) ORDER BY slug LIMIT $4",
    page.after and page.after.slug or db.null, parent or db.null, root, page.limit + 1)
  if not rows then return problem.from(code, err) end
  return 200, pagination.result(rows, page.limit, function(r) return { slug = r.slug } end, public)
end

function _M.show(req)
  local row, err, code = find(req.params.id)
  if err then return problem.from(code, err) end
  if not row then return problem.not_found("category", req.params.id) end
  return 200, public(row)
end

local function parent_problem(id)
  local row, err, code = db.query_one("SELECT 1 AS x FROM categories WHERE id = $1", id)
  if err then return problem.from(code, err) end
  if not row then return problem.validation({ { field = "parent_id", message = "no such category" } }) end
end

-- A slug the pattern let through but the table refuses ("a--b", "shoes-").
local function slug_problem(slug)
  if slug and (slug:find("--", 1, true) or slug:sub(-1) == "-") then
    return problem.validation({ { field = "slug", message = "must be words of lower-case letters and digits joined by single hyphens" } })
  end
end

function _M.create(req)
  local doc, status, body, headers = validate.body(req, S.category_create)
  if not doc then return status, body, headers end
  local ss, sb, sh = slug_problem(doc.slug)
  if ss then return ss, sb, sh end
  if type(doc.parent_id) == "string" then
    doc.parent_id = doc.parent_id:lower()
    local ps, pb, ph = parent_problem(doc.parent_id)
    if ps then return ps, pb, ph end
  end
  local id = crypto.uuid7()
  local row, err, code, sqlstate = db.query_one("INSERT INTO categories (id, slug, name, parent_id) VALUES ($1, $2, $3, $4::uuid) "
    .. "RETURNING " .. COLUMNS, id, doc.slug, doc.name, type(doc.parent_id) == "string" and doc.parent_id or db.null)
  if err then
    local st, b, h = taken(err, sqlstate)
    if st then return st, b, h end
    return problem.from(code, err)
  end
  return 201, public(row), { Location = "/categories/" .. id }
end

-- PATCH /categories/{id} {slug?, name?, parent_id?}: a move under its own subtree is 422. A
-- rename or a move re-derives the search text of the products below (same transaction).
function _M.update(req)
  local doc, status, body, headers = validate.body(req, S.category_patch)
  if not doc then return status, body, headers end
  local ss, sb, sh = slug_problem(doc.slug)
  if ss then return ss, sb, sh end
  local cur, err, code = find(req.params.id)
  if err then return problem.from(code, err) end
  if not cur then return problem.not_found("category", req.params.id) end
  if type(doc.parent_id) == "string" then
    doc.parent_id = doc.parent_id:lower()
    local ps, pb, ph = parent_problem(doc.parent_id)
    if ps then return ps, pb, ph end
    local cyc
    cyc, err, code = db.query_one([[WITH RECURSIVE sub(id) AS (SELECT $1::uuid UNION
        SELECT c.id FROM categories c JOIN sub ON c.parent_id = sub.id) SELECT 1 AS x FROM sub WHERE id = $2::uuid]],
      cur.id, doc.parent_id)
    if err then return problem.from(code, err) end
    if cyc then return problem.validation({ { field = "parent_id", message = "must not be the category itself or one below it" } }) end
  end
  local row, sqlstate
  row, err, code, sqlstate = db.tx(function()
    local r, uerr, ucode, ustate = db.query_one([[UPDATE categories SET slug = coalesce($2, slug), name = coalesce($3, name),
        parent_id = CASE WHEN $4 THEN $5::uuid ELSE parent_id END, updated_at = now() WHERE id = $1 RETURNING ]] .. COLUMNS,
      cur.id, doc.slug or db.null, doc.name or db.null, doc.parent_id ~= nil,
      type(doc.parent_id) == "string" and doc.parent_id or db.null)
    if uerr then return nil, uerr, ucode, ustate end
    if doc.name or doc.parent_id ~= nil then
      local n, rerr, rcode = store.refresh_category_text(cur.id)
      if not n then return nil, rerr, rcode end
    end
    return r
  end)
  if err then
    local st, b, h = taken(err, sqlstate)
    if st then return st, b, h end
    return problem.from(code, err)
  end
  return 200, public(row)
end

-- DELETE /categories/{id}: 409 while sub-categories or active products use it.
function _M.delete(req)
  local cur, err, code = find(req.params.id)
  if err then return problem.from(code, err) end
  if not cur then return problem.not_found("category", req.params.id) end
  local used
  used, err, code = db.query_one([[SELECT (SELECT count(*) FROM categories WHERE parent_id = $1) AS children,
      (SELECT count(*) FROM products WHERE category_id = $1 AND status = 'active') AS products]], cur.id)
  if err then return problem.from(code, err) end
  if used.children > 0 or used.products > 0 then
    return problem.conflict(("The category still has %d sub-categories and %d products; move or delete them first.")
      :format(used.children, used.products))
  end
  local n
  n, err, code = db.exec("DELETE FROM categories WHERE id = $1", cur.id)
  if not n then return problem.from(code, err) end
  return 204
end

-- GET /tags?limit=&cursor=: tags of active products with their counts, most used first.
function _M.tags(req)
  local page, status, body, headers = pagination.params(req.query)
  if not page then return status, body, headers end
  local a = page.after
  if a and (type(a.c) ~= "number" or type(a.t) ~= "string") then return bad_cursor() end
  local rows, err, code = db.query([[SELECT tag, count FROM (
      SELECT t.tag, count(*) AS count FROM products p, unnest(p.tags) AS t(tag) WHERE p.status = 'active' GROUP BY t.tag) x
    WHERE $1::bigint IS NULL OR count < $1::bigint OR (count = $1::bigint AND tag > $2::text)
    ORDER BY count DESC, tag ASC LIMIT $3]], a and a.c or db.null, a and a.t or db.null, page.limit + 1)
  if not rows then return problem.from(code, err) end
  return 200, pagination.result(rows, page.limit, function(r) return { c = r.count, t = r.tag } end,
    function(r) return { tag = r.tag, count = r.count } end)
end

return _M
