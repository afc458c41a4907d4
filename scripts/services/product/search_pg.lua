-- scripts/services/product/search_pg.lua: product search and browse in PostgreSQL — the
-- luacheck: max line length 170
-- weighted tsvector (name A > tags, category B > description C; GIN), websearch_to_tsquery
-- plus a prefix query over the same configuration (accents folded), and trigram
-- word_similarity on the folded name for typos; ranked by ts_rank_cd + word_similarity, with
-- whole-name similarity as a tie-breaker ("laptop": "Compact Laptop" before "Compact Laptop Bag"). Keyset
-- pagination on (sort key, id) with the key in an opaque cursor.
local db = require "db"
local pagination = require "lib.pagination"
local store = require "services.product.store"

local _M = {}

-- word_similarity above which a name counts as a typo match ("wireles hedphones" → 0.68
-- against "wireless headphones"; unrelated names stay under 0.3).
_M.TYPO_THRESHOLD = 0.45

function _M.cursor_tag(sort) return "pg:" .. sort end

-- "wireles hedph" → "'wireles':* & 'hedph':*" (letters and digits only; nil when none).
function _M.prefix_query(q)
  local terms = {}
  for w in q:gmatch("[%w\128-\255]+") do
    if #terms < 8 then terms[#terms + 1] = "'" .. w:lower() .. "':*" end
  end
  if #terms == 0 then return nil end
  return table.concat(terms, " & ")
end

local ORDERS = {
  relevance = { order = "score DESC, id ASC", key = function(r) return { s = r.score, id = r.id } end,
    after = function(a, arg) return ("(score < %s OR (score = %s AND id > %s::uuid))"):format(arg(a.s), arg(a.s), arg(a.id)) end,
    valid = function(a) return type(a.s) == "number" and a.s == math.floor(a.s) end },
  price = { order = "price_cents ASC, id ASC", key = function(r) return { p = r.price_cents, id = r.id } end,
    after = function(a, arg) return ("(price_cents, id) > (%s, %s::uuid)"):format(arg(a.p), arg(a.id)) end,
    valid = function(a) return type(a.p) == "number" and a.p == math.floor(a.p) end },
  ["-price"] = { order = "price_cents DESC, id DESC", key = function(r) return { p = r.price_cents, id = r.id } end,
    after = function(a, arg) return ("(price_cents, id) < (%s, %s::uuid)"):format(arg(a.p), arg(a.id)) end,
    valid = function(a) return type(a.p) == "number" and a.p == math.floor(a.p) end },
  newest = { order = "created_at DESC, id DESC", key = function(r) return { t = r.created_us, id = r.id } end,
    after = function(a, arg)
      return ("(created_at, id) < (timestamptz 'epoch' + %s * interval '1 microsecond', %s::uuid)"):format(arg(a.t), arg(a.id))
    end,
    valid = function(a) return type(a.t) == "number" and a.t == math.floor(a.t) end },
}

-- → { items, next_cursor } | nil, err, code | false, problem
function _M.list(params, page)
  local o = ORDERS[params.sort]
  local args, where = {}, { "p.status = 'active'" }
  local function arg(v) args[#args + 1] = v; return "$" .. #args end
  local rank = "0"
  if params.q then
    local w, pfx, f = arg(params.q), arg(_M.prefix_query(params.q) or db.null), arg(params.q)
    local tsw = ("websearch_to_tsquery('product_search', %s)"):format(w)
    local tsp = ("coalesce(to_tsquery('product_search', %s), ''::tsquery)"):format(pfx)
    local folded = ("product_fold(%s)"):format(f)
    where[#where + 1] = ("(p.search_vector @@ %s OR p.search_vector @@ %s OR word_similarity(%s, p.name_folded) >= %s)")
      :format(tsw, tsp, folded, arg(_M.TYPO_THRESHOLD))
    rank = ("ts_rank_cd('{0.1, 0.2, 0.4, 1.0}', p.search_vector, %s) + 0.5 * ts_rank_cd('{0.1, 0.2, 0.4, 1.0}', p.search_vector, %s)"
      .. " + word_similarity(%s, p.name_folded) + 0.5 * similarity(%s, p.name_folded)"):format(tsw, tsp, folded, folded)
  end
  if params.category_ids then where[#where + 1] = ("p.category_id = ANY(%s::uuid[])"):format(arg("{" .. table.concat(params.category_ids, ",") .. "}")) end
  if params.tag then where[#where + 1] = ("p.tags @> ARRAY[%s::text]"):format(arg(params.tag)) end
  if params.min_price then where[#where + 1] = ("p.price_cents >= %s"):format(arg(params.min_price)) end
  if params.max_price then where[#where + 1] = ("p.price_cents <= %s"):format(arg(params.max_price)) end
  if params.seller then where[#where + 1] = ("p.seller_id = %s::uuid"):format(arg(params.seller)) end

  local outer = "TRUE"
  local a = page.after
  if a then
    if not store.is_uuid(a.id) or not o.valid(a) then
      return false, require("lib.pagination").bad_cursor()
    end
    outer = o.after(a, arg)
  end
  local sql = ("SELECT * FROM (SELECT %s, p.price_cents AS sort_price, (%s * 1000000)::bigint AS score, "
    .. "(extract(epoch FROM p.created_at) * 1000000)::bigint AS created_us FROM %s WHERE %s) r WHERE %s ORDER BY %s LIMIT %s")
    :format(store.COLUMNS, rank, store.FROM, table.concat(where, " AND "), outer, o.order, arg(page.limit + 1))
  local rows, err, code = db.query(sql, unpack(args))
  if not rows then return nil, err, code end
  local res = pagination.result(rows, page.limit, function(r)
    local k = o.key(r)
    k.o = _M.cursor_tag(params.sort)
    return k
  end, store.public)
  return res
end

return _M
