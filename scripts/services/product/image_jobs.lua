-- scripts/services/product/image_jobs.lua: the job that removes a deleted product's images from
-- the image store (S3 or the local disk store). A product's delete empties its `images` in the
-- same transaction; this runner then deletes each recorded object still in the store and
-- stamps its product_images row deleted_at. A failed delete is retried on the next run; a
-- delete of an object already gone succeeds, so replicas may overlap.
local db = require "db"
local host = require "host"
local log = require "log"
local s3 = require "s3"

local _M = {}

local BATCH = 100

local SQL_DUE = "SELECT pi.key FROM product_images pi JOIN products p ON p.id = pi.product_id " ..
  "WHERE pi.deleted_at IS NULL AND p.status = 'deleted' ORDER BY pi.product_id, pi.key LIMIT $1"

_M.purge_images = {
  name = "purge-product-images",
  every = tonumber(host.env("PRODUCT_IMAGE_PURGE_EVERY_S") or "") or 60,
  run = function()
    local rows, err, code = db.query(SQL_DUE, BATCH)
    if not rows then
      log.warn("image purge failed", { error = tostring(err), code = code })
      return
    end
    local done = 0
    for _, r in ipairs(rows) do
      local ok, derr = s3.delete(r.key)
      if ok then
        local _, uerr = db.exec("UPDATE product_images SET deleted_at = now() WHERE key = $1", r.key)
        if uerr then log.warn("image purge: could not stamp a deleted image", { key = r.key, error = tostring(uerr) }) end
        done = done + 1
      else
        log.warn("image purge: the store refused a delete; retried next run", { key = r.key, error = tostring(derr) })
      end
    end
    if done > 0 then log.info("images of deleted products removed", { count = done }) end
    return done
  end,
}

return _M
