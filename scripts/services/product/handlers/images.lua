-- scripts/services/product/handlers/images.lua: product image uploads (POST
-- /products/{id}/images, owner or admin) into the `s3` binding's store, and GET /images/{key*}
-- serving them back (the local disk store has no other URL; with S3 it proxies the object).
--
-- Routes to add (services.product.routes; the 5 MiB cap is the route's max_body, so a larger
-- upload is refused with 413 in C before any Lua runs):
--   local images = require "services.product.handlers.images"
--   { "POST", "/products/{id}/images", images.upload, roles = { "admin", "seller" }, max_body = images.MAX_BYTES },
--   { "GET",  "/images/{key*}",        images.serve },
local crypto = require "crypto"
local db = require "db"
local log = require "log"
local ownership = require "lib.ownership"
local problem = require "lib.problem"
local uuid = require "lib.uuid"
local s3 = require "s3"
local pcache = require "services.product.cache"
local store = require "services.product.store"

local _M = {}

_M.MAX_BYTES = 5 * 1024 * 1024

-- Accepted types: the extension of the key and a check of the file's first bytes.
local TYPES = {
  ["image/png"] = { ext = "png", magic = function(b) return b:sub(1, 8) == "\137PNG\r\n\26\n" end },
  ["image/jpeg"] = { ext = "jpg", magic = function(b) return b:sub(1, 3) == "\255\216\255" end },
  ["image/webp"] = { ext = "webp", magic = function(b) return b:sub(1, 4) == "RIFF" and b:sub(9, 12) == "WEBP" end },
}
local ACCEPTED = "image/png, image/jpeg or image/webp"

local function full()
  return problem.conflict(("A product has at most %d images."):format(store.MAX_IMAGES))
end

-- The media type of a Content-Type value ("Image/PNG; q=1" → "image/png"), or nil.
function _M.media_type(ct)
  local m = ct and ct:match("^%s*([^;%s]+)")
  return m and m:lower()
end

-- Whether bytes start with the magic of the accepted media type (nil when it is not one):
-- the sniffing behind the 415 (tests/fuzz/fuzz_lua_image.c checks it against a plain reading).
function _M.sniff(media, bytes)
  local t = TYPES[media or ""]
  if not t then return nil end
  return t.magic(bytes)
end

-- POST /products/{id}/images (raw image bytes) → 201 { key, url }. The product and its owner
-- are checked first (404, 403), then the bytes (415, 422): RFC 9110 has the resource's
-- existence and the caller's rights answered before what is wrong with the representation.
function _M.upload(req)
  local id = req.params.id
  if not uuid.valid(id) then return problem.not_found("product", id) end
  id = id:lower()
  local row, err, code = db.query_one(
    "SELECT seller_id, cardinality(images) AS n FROM products WHERE id = $1 AND status = 'active'", id)
  if err then return problem.from(code, err) end
  if not row then return problem.not_found("product", id) end
  if not ownership.may_change(req.claims, row.seller_id) then
    return problem.forbidden("Only the product's seller or an admin may add images.")
  end
  local media = _M.media_type(req:header("Content-Type"))
  local t = TYPES[media or ""]
  if not t then return problem.unsupported_media_type(ACCEPTED) end
  local body = req.body
  if #body == 0 then return problem.new(422, "The image is empty.") end
  if #body > _M.MAX_BYTES then return problem.new(413, "Images are limited to 5 MiB.") end
  if not _M.sniff(media, body) then
    return problem.new(415, "The bytes are not a " .. t.ext:upper() .. " image; Content-Type must be " .. ACCEPTED .. ".")
  end
  if row.n >= store.MAX_IMAGES then return full() end
  local key = ("products/%s/%s.%s"):format(id, crypto.uuid4(), t.ext)
  local ok, perr, pcode = s3.put(key, body, media)
  if not ok then return problem.from(pcode, perr) end
  -- Recorded on the product after the object is stored; if that fails the object goes again.
  local res
  res, err, code = store.add_image(id, key, media, #body)
  if not res or res.refused then
    local dok, derr = s3.delete(key)
    if not dok then log.warn("image upload: an unrecorded object is left in the store", { key = key, error = tostring(derr) }) end
    if not res then return problem.from(code, err) end
    if res.refused == "full" then return full() end
    return problem.not_found("product", id)
  end
  pcache.invalidate(id)
  return 201, { key = key, url = s3.url(key) }, { Location = s3.url(key) }
end

-- GET /images/{key*}: only keys this service generates; anything else (traversal, odd
-- characters) is simply not found.
function _M.serve(req)
  local key = req.params.key
  if type(key) ~= "string" or not key:match("^products/[%x%-]+/[%x%-]+%.%a+$") then return problem.not_found() end
  local bytes, ctype, code = s3.get(key)
  if not bytes and ctype then return problem.from(code, ctype) end
  if not bytes then return problem.not_found() end
  if not TYPES[ctype] then ctype = "application/octet-stream" end
  return 200, bytes, {
    ["Content-Type"] = ctype,
    ["X-Content-Type-Options"] = "nosniff",
    ["Cache-Control"] = "public, max-age=31536000, immutable",   -- keys are never reused
  }
end

return _M
