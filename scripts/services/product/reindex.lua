-- scripts/services/product/reindex.lua: rebuild the Elasticsearch product index from
-- PostgreSQL (the truth): drop the index, create it with the mapping, _bulk every active
-- product. Searches with q answer from a partial index while it runs; events arriving meanwhile
-- are applied by the indexer as usual.
--
--   SERVICE=product DATABASE_URL=... ELASTICSEARCH_URL=... [ES_INDEX=products] \
--     build/mercato lua scripts/services/product/reindex.lua
local es = require "services.product.search_es"

if es.url() == "" then
  io.stderr:write("reindex: ELASTICSEARCH_URL is not set\n")
  return 2
end
local name = es.index_name()
local _, err, code = es.call("DELETE", "/" .. name)
if err and code ~= "not_found" then
  io.stderr:write(("reindex: cannot drop %s: %s (%s)\n"):format(name, err, code))
  return 1
end
es.forget_index(name)
local ok
ok, err, code = es.ensure_index(name)
if not ok then
  io.stderr:write(("reindex: cannot create %s: %s (%s)\n"):format(name, tostring(err), tostring(code)))
  return 1
end
local n
n, err, code = es.bulk_all(name)
if not n then
  io.stderr:write(("reindex: bulk indexing failed: %s (%s)\n"):format(tostring(err), tostring(code)))
  return 1
end
print(("reindex: indexed %d products into %s"):format(n, name))
return 0
