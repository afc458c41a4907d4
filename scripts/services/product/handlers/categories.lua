-- scripts/services/product/handlers/categories.lua: the category tree (GET public; writes
-- luacheck: max line length 170
-- admin-only, checked on the routes in C) and GET /tags (tags in use, with counts).
local crypto = require "crypto"
local db = require "db"
local json = require "json"
local pagination = require "lib.pagination"
local problem = require "lib.problem"
local uuid = require "lib.uuid"
local validate = require "lib.validate"
local pcache = require "services.product.cache"
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
  if uuid.valid(ref) then return db.query_one("SELECT " .. COLUMNS .. " FROM categories WHERE id = $1", ref:lower()) end
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

local function no_parent()
  return problem.validation({ { field = "parent_id", message = "no such category" } })
end

-- The tree's shape changes one transaction at a time: a move takes this transaction-scoped
-- advisory lock before it looks for a cycle, so two crossing moves (A under B, B under A) are
-- checked one after the other and the second sees the first. The wait parks the handler.
local function lock_tree()
  return db.query_one("SELECT pg_advisory_xact_lock(hashtext('mercato.product.category_tree'))")
end

-- A slug the pattern let through but the table refuses ("a--b", "shoes-").
local function slug_problem(slug)
  if slug and (slug:find("--", 1, true) or slug:sub(-1) == "-") then
    return problem.validation({ { field = "slug", message = "must be words of lower-case letters and digits joined by single hyphens" } })
  end
end

-- The slug a name gives (lower-case ASCII: accents folded by PostgreSQL's unaccent, anything
-- else between letters and digits one hyphen, at most 57 characters so a suffix fits; a name
-- with no letter or digit gives "category"), and the slugs already taken by it or its "-n"
-- variants. → base, taken set | nil, err, code
local SQL_SLUG = [[WITH base AS (SELECT coalesce(nullif(trim(both '-' FROM left(
    trim(both '-' FROM regexp_replace(product_fold($1::text), '[^a-z0-9]+', '-', 'g')), 57)), ''), 'category') AS b)
  SELECT b, to_jsonb(ARRAY(SELECT slug FROM categories WHERE slug = b OR slug LIKE b || '-%')) AS taken FROM base]]

-- The first free slug for a name: its base, else base-2, base-3, …
local function derive_slug(name)
  local row, err, code = db.query_one(SQL_SLUG, name)
  if err then return nil, err, code end
  local base, used = row.b, {}
  for _, s in ipairs(row.taken or {}) do used[s] = true end
  if not used[base] then return base end
  local n = 2
  while used[base .. "-" .. n] do n = n + 1 end
  return base .. "-" .. n
end

local SQL_INSERT = "INSERT INTO categories (id, slug, name, parent_id) VALUES ($1, $2, $3, $4::uuid) RETURNING " .. COLUMNS

-- POST /categories {name, slug?, parent_id?}: without a slug, one is derived from the name
-- (collisions get -2, -3, …; a concurrent create of the same name tries the next one).
function _M.create(req)
  local doc, status, body, headers = validate.body(req, S.category_create)
  if not doc then return status, body, headers end
  local ss, sb, sh = slug_problem(doc.slug)
  if ss then return ss, sb, sh end
  if type(doc.parent_id) == "string" then doc.parent_id = doc.parent_id:lower() end
  local id = crypto.uuid7()
  local parent = type(doc.parent_id) == "string" and doc.parent_id or db.null
  local row, err, code, sqlstate
  for _ = 1, 5 do
    local slug = doc.slug
    if not slug then
      slug, err, code = derive_slug(doc.name)
      if not slug then return problem.from(code, err) end
    end
    -- The parent is held (store.hold_category) while the row goes in: its delete waits and
    -- then counts this child, or deletes first and this finds no parent.
    row, err, code, sqlstate = db.tx(function()
      if parent ~= db.null then
        local ok, herr, hcode = store.hold_category(parent)
        if ok == nil then return nil, herr, hcode end
        if not ok then return { refused = "parent" } end
      end
      return db.query_one(SQL_INSERT, id, slug, doc.name, parent)
    end)
    if not (err and sqlstate == "23505" and not doc.slug) then break end
  end
  if err then
    local st, b, h = taken(err, sqlstate)
    if st then return st, b, h end
    return problem.from(code, err)
  end
  if row.refused then return no_parent() end
  return 201, public(row), { Location = "/categories/" .. id }
end

-- The update of PATCH /categories/{id}, in its transaction: a move takes the tree lock, holds
-- the new parent and refuses a parent in the category's own subtree, all on what is committed
-- once the lock is held. → row, touched product ids | { refused = "parent"|"cycle"|"gone" } | nil, err, code, sqlstate
local function apply_update(id, doc)
  local moving = type(doc.parent_id) == "string"
  if moving then
    local _, err, code = lock_tree()
    if err then return nil, err, code end
    local ok
    ok, err, code = store.hold_category(doc.parent_id)
    if ok == nil then return nil, err, code end
    if not ok then return { refused = "parent" } end
    local cyc
    cyc, err, code = db.query_one([[WITH RECURSIVE sub(id) AS (SELECT $1::uuid UNION
        SELECT c.id FROM categories c JOIN sub ON c.parent_id = sub.id) SELECT 1 AS x FROM sub WHERE id = $2::uuid]],
      id, doc.parent_id)
    if err then return nil, err, code end
    if cyc then return { refused = "cycle" } end
  end
  local r, err, code, state = db.query_one([[UPDATE categories SET slug = coalesce($2, slug), name = coalesce($3, name),
      parent_id = CASE WHEN $4 THEN $5::uuid ELSE parent_id END, updated_at = now() WHERE id = $1 RETURNING ]] .. COLUMNS,
    id, doc.slug or db.null, doc.name or db.null, doc.parent_id ~= nil, moving and doc.parent_id or db.null)
  if err then return nil, err, code, state end
  if not r then return { refused = "gone" } end
  local touched
  if doc.name or doc.parent_id ~= nil then
    touched, err, code = store.refresh_category_text(id)
    if not touched then return nil, err, code end
  end
  return r, touched
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
  if type(doc.parent_id) == "string" then doc.parent_id = doc.parent_id:lower() end
  local row, touched, sqlstate
  row, touched, code, sqlstate = db.tx(apply_update, cur.id, doc)
  if not row then
    local st, b, h = taken(touched, sqlstate)
    if st then return st, b, h end
    return problem.from(code, touched)
  end
  if row.refused == "parent" then return no_parent() end
  if row.refused == "cycle" then
    return problem.validation({ { field = "parent_id", message = "must not be the category itself or one below it" } })
  end
  if row.refused == "gone" then return problem.not_found("category", req.params.id) end
  -- The products' versions moved on: their cached reads would show the old ETag.
  for i = 1, #(touched or {}), 200 do pcache.invalidate(unpack(touched, i, math.min(i + 199, #touched))) end
  return 200, public(row)
end

-- DELETE /categories/{id}: 409 while sub-categories or active products use it. The row is
-- locked FOR UPDATE before they are counted, in the same transaction as the delete: a product
-- or sub-category being written under it holds it (store.hold_category) and is counted once it
-- commits; one written after waits and finds it gone.
local function apply_delete(id)
  local row, err, code = db.query_one("SELECT id FROM categories WHERE id = $1 FOR UPDATE", id)
  if err then return nil, err, code end
  if not row then return { refused = "gone" } end
  local used
  used, err, code = db.query_one([[SELECT (SELECT count(*) FROM categories WHERE parent_id = $1) AS children,
      (SELECT count(*) FROM products WHERE category_id = $1 AND status = 'active') AS products]], id)
  if err then return nil, err, code end
  if used.children > 0 or used.products > 0 then return { refused = "used", used = used } end
  local n
  n, err, code = db.exec("DELETE FROM categories WHERE id = $1", id)
  if not n then return nil, err, code end
  return {}
end

function _M.delete(req)
  local cur, err, code = find(req.params.id)
  if err then return problem.from(code, err) end
  if not cur then return problem.not_found("category", req.params.id) end
  local res
  res, err, code = db.tx(apply_delete, cur.id)
  if not res then return problem.from(code, err) end
  if res.refused == "gone" then return problem.not_found("category", req.params.id) end
  if res.refused == "used" then
    return problem.conflict(("The category still has %d sub-categories and %d products; move or delete them first.")
      :format(res.used.children, res.used.products))
  end
  return 204
end

-- GET /tags?limit=&cursor=: tags of active products with their counts, most used first, read
-- from tag_counts (kept by a trigger on products, migration 053) — not aggregated per call.
function _M.tags(req)
  local page, status, body, headers = pagination.params(req.query)
  if not page then return status, body, headers end
  local a = page.after
  if a and (not pagination.whole(a.c) or type(a.t) ~= "string") then return bad_cursor() end
  local rows, err, code = db.query([[SELECT tag, count FROM tag_counts
    WHERE count > 0 AND ($1::bigint IS NULL OR count < $1::bigint OR (count = $1::bigint AND tag > $2::text))
    ORDER BY count DESC, tag ASC LIMIT $3]], a and a.c or db.null, a and a.t or db.null, page.limit + 1)
  if not rows then return problem.from(code, err) end
  return 200, pagination.result(rows, page.limit, function(r) return { c = r.count, t = r.tag } end,
    function(r) return { tag = r.tag, count = r.count } end)
end

return _M
