-- scripts/services/product/store.lua: the products and their stock in PostgreSQL — the SQL,
-- the public document, and the outbox events of each write (same transaction).
local db = require "db"
local json = require "json"
local outbox = require "lib.outbox"
local uuid = require "lib.uuid"
local s3 = require "s3"

local _M = {}


-- Columns of a product document, from `products p JOIN inventory i`.
_M.COLUMNS = [[p.id, p.seller_id, p.name, p.description, p.price_cents, p.currency, p.category_id,
  to_jsonb(p.tags) AS tags, to_jsonb(p.images) AS images, p.status, p.version, p.created_at, p.updated_at, i.stock]]
_M.FROM = "products p JOIN inventory i ON i.product_id = p.id"

-- The public document of a row (what GET /products/{id} answers; `stock` is what can be sold,
-- `images` the uploaded images in upload order).
function _M.public(r)
  local tags = r.tags
  if type(tags) ~= "table" then tags = {} end
  local images = json.array({})
  for i, key in ipairs(type(r.images) == "table" and r.images or {}) do images[i] = { key = key, url = s3.url(key) } end
  return {
    id = r.id, seller_id = r.seller_id, name = r.name, description = r.description,
    price_cents = r.price_cents, currency = r.currency, category_id = r.category_id,
    tags = json.array(tags), images = images, stock = r.stock, version = r.version,
    created_at = r.created_at, updated_at = r.updated_at,
  }
end

-- What the search indexer and other services need about a product (event data).
local function event_data(r)
  return {
    product_id = r.id, seller_id = r.seller_id, name = r.name, price_cents = r.price_cents,
    currency = r.currency, category_id = r.category_id, tags = json.array(r.tags or {}), version = r.version,
  }
end

-- An active product, or a bare nil.
function _M.get(id)
  if not uuid.valid(id) then return nil end
  return db.query_one("SELECT " .. _M.COLUMNS .. " FROM " .. _M.FROM .. " WHERE p.id = $1 AND p.status = 'active'", id)
end

-- A product whatever its status (a deleted one too, for its owner and admins), or a bare nil.
function _M.get_any(id)
  if not uuid.valid(id) then return nil end
  return db.query_one("SELECT " .. _M.COLUMNS .. ", p.deleted_at FROM " .. _M.FROM .. " WHERE p.id = $1", id)
end

-- The active products among ids (lower-case UUIDs), in no particular order: one query.
-- → rows | nil, err, code
function _M.get_many(ids)
  return db.query("SELECT " .. _M.COLUMNS .. " FROM " .. _M.FROM .. " WHERE p.id = ANY($1::uuid[]) AND p.status = 'active'",
    "{" .. table.concat(ids, ",") .. "}")
end

-- Inside the caller's db.tx: hold category `id` until the transaction ends, so it cannot be
-- deleted meanwhile (FOR KEY SHARE, the lock a foreign key check takes: DELETE /categories locks
-- the row FOR UPDATE, so it waits for this transaction and then sees what it wrote; a delete
-- that locked first makes this wait and then find nothing). The wait parks the handler.
-- → true | false (no such category) | nil, err, code
function _M.hold_category(id)
  local row, err, code = db.query_one("SELECT 1 AS x FROM categories WHERE id = $1 FOR KEY SHARE", id)
  if err then return nil, err, code end
  return row ~= nil
end

-- hold_category for a write that names one: → nil (held, or no category named) | a refusal
-- { refused = "category" } | false, err, code.
local function hold_named(id)
  if type(id) ~= "string" then return nil end
  local ok, err, code = _M.hold_category(id)
  if ok == nil then return false, err, code end
  if not ok then return { refused = "category" } end
end

-- Create a product and its inventory row in one transaction, with product.created in the
-- outbox; its category is held first (a concurrent delete of it waits, or wins and refuses
-- this). → the row | { refused = "category" } | nil, err, code.
function _M.create(id, seller_id, doc)
  return db.tx(function()
    local held, herr, hcode = hold_named(doc.category_id)
    if held ~= nil then return held or nil, herr, hcode end
    local n, err, code = db.exec([[INSERT INTO products (id, seller_id, name, description, price_cents, currency,
        category_id, category_text, tags)
      VALUES ($1, $2, $3, $4, $5, $6, $7::uuid, coalesce(category_path_text($7::uuid), ''),
        ARRAY(SELECT jsonb_array_elements_text($8::jsonb)))]],
      id, seller_id, doc.name, doc.description or "", doc.price_cents, doc.currency,
      doc.category_id or db.null, json.encode(json.array(doc.tags or {})))
    if not n then return nil, err, code end
    n, err, code = db.exec("INSERT INTO inventory (product_id, stock) VALUES ($1, $2)", id, doc.stock)
    if not n then return nil, err, code end
    local row
    row, err, code = db.query_one("SELECT " .. _M.COLUMNS .. " FROM " .. _M.FROM .. " WHERE p.id = $1", id)
    if not row then return nil, err or "product vanished", code or "unavailable" end
    local ok
    ok, err, code = outbox.add("product.created", event_data(row))
    if not ok then return nil, err, code end
    return row
  end)
end

-- Columns PATCH may set, and how each is written ($n is the value).
local SETTERS = {
  name = "name = %s", description = "description = %s", price_cents = "price_cents = %s",
  currency = "currency = %s",
  category_id = "category_id = %s::uuid, category_text = coalesce(category_path_text(%s::uuid), '')",
  tags = "tags = ARRAY(SELECT jsonb_array_elements_text(%s::jsonb))",
}
local ORDER = { "name", "description", "price_cents", "currency", "category_id", "tags" }

-- Update an active product if its version is still `version`, inside one transaction with
-- product.updated. check(row) runs on the locked row first and may refuse with a status; a new
-- category is held as in create.
-- → row | nil, err, code | { refused = "stale"|"gone"|"forbidden"|"category" }.
function _M.update(id, version, fields, check)
  return db.tx(function()
    local cur, err, code = db.query_one(
      "SELECT id, seller_id, version FROM products WHERE id = $1 AND status = 'active' FOR UPDATE", id)
    if err then return nil, err, code end
    if not cur then return { refused = "gone" } end
    if check and not check(cur) then return { refused = "forbidden" } end
    if version and cur.version ~= version then return { refused = "stale", current = cur.version } end
    local held, herr, hcode = hold_named(fields.category_id)
    if held ~= nil then return held or nil, herr, hcode end
    local sets, args = {}, { id }
    for _, k in ipairs(ORDER) do
      local v = fields[k]
      if v ~= nil then
        if k == "tags" then v = json.encode(json.array(v)) end
        args[#args + 1] = v
        local p = "$" .. #args
        sets[#sets + 1] = SETTERS[k]:gsub("%%s", p)
      end
    end
    if #sets > 0 then
      local n
      n, err, code = db.exec("UPDATE products SET " .. table.concat(sets, ", ")
        .. ", version = version + 1, updated_at = now() WHERE id = $1", unpack(args))
      if not n then return nil, err, code end
    end
    local row
    row, err, code = db.query_one("SELECT " .. _M.COLUMNS .. " FROM " .. _M.FROM .. " WHERE p.id = $1", id)
    if not row then return nil, err or "product vanished", code or "unavailable" end
    if #sets > 0 then
      local ok
      ok, err, code = outbox.add("product.updated", event_data(row))
      if not ok then return nil, err, code end
    end
    return row
  end)
end

-- Soft-delete an active product (status 'deleted'), with product.deleted. Same results as update.
function _M.delete(id, version, check)
  return db.tx(function()
    local cur, err, code = db.query_one(
      "SELECT id, seller_id, version FROM products WHERE id = $1 AND status = 'active' FOR UPDATE", id)
    if err then return nil, err, code end
    if not cur then return { refused = "gone" } end
    if check and not check(cur) then return { refused = "forbidden" } end
    if version and cur.version ~= version then return { refused = "stale", current = cur.version } end
    local n
    n, err, code = db.exec("UPDATE products SET status = 'deleted', deleted_at = now(), images = '{}', version = version + 1, "
      .. "updated_at = now() WHERE id = $1", id)
    if not n then return nil, err, code end
    local ok
    ok, err, code = outbox.add("product.deleted", { product_id = id, seller_id = cur.seller_id, version = cur.version + 1 })
    if not ok then return nil, err, code end
    return cur
  end)
end

_M.MAX_IMAGES = 20   -- products.images CHECK (cardinality(images) <= 20)

-- Record an uploaded image (its object is in the store already) on an active product: a
-- product_images row and the key appended to products.images (a new version), with
-- product.updated. → row | { refused = "gone" | "full" } | nil, err, code
function _M.add_image(id, key, content_type, bytes)
  return db.tx(function()
    local cur, err, code = db.query_one(
      "SELECT cardinality(images) AS n FROM products WHERE id = $1 AND status = 'active' FOR UPDATE", id)
    if err then return nil, err, code end
    if not cur then return { refused = "gone" } end
    if cur.n >= _M.MAX_IMAGES then return { refused = "full" } end
    local n
    n, err, code = db.exec("INSERT INTO product_images (key, product_id, content_type, bytes) VALUES ($1, $2, $3, $4)",
      key, id, content_type, bytes)
    if not n then return nil, err, code end
    n, err, code = db.exec(
      "UPDATE products SET images = images || $2::text, version = version + 1, updated_at = now() WHERE id = $1", id, key)
    if not n then return nil, err, code end
    local row
    row, err, code = db.query_one("SELECT " .. _M.COLUMNS .. " FROM " .. _M.FROM .. " WHERE p.id = $1", id)
    if not row then return nil, err or "product vanished", code or "unavailable" end
    local ok
    ok, err, code = outbox.add("product.updated", event_data(row))
    if not ok then return nil, err, code end
    return row
  end)
end

-- Re-derive category_text for every active product under category `id` (after a rename or a
-- move): its search text changed, so its version (ETag) moves on, and each is announced as
-- product.updated in one set-based outbox insert. Inside the caller's db.tx. → the product ids
-- (for the caller to drop their cached reads after the commit) | nil, err, code
function _M.refresh_category_text(id)
  local rows, err, code = db.query([[
    WITH RECURSIVE sub(id) AS (SELECT $1::uuid UNION SELECT c.id FROM categories c JOIN sub ON c.parent_id = sub.id)
    UPDATE products p SET category_text = coalesce(category_path_text(p.category_id), ''),
      version = p.version + 1, updated_at = now()
    WHERE p.category_id IN (SELECT id FROM sub) AND p.status = 'active'
    RETURNING p.id, p.seller_id, p.name, p.price_cents, p.currency, p.category_id, to_jsonb(p.tags) AS tags, p.version]], id)
  if not rows then return nil, err, code end
  local data, ids = {}, {}
  for i, r in ipairs(rows) do data[i], ids[i] = event_data(r), r.id end
  local n, oerr, ocode = outbox.add_many("product.updated", data)
  if not n then return nil, oerr, ocode end
  return ids
end

return _M
