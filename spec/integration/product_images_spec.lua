-- Product images are recorded, against the real product service (local disk store): an upload
-- luacheck: max line length 170
-- is a product_images row and an entry of the product's `images` (its version moves on), at
-- most 20 per product, and deleting the product removes its images from the store.
--
-- Run: set -a; . <(scripts/dev/stack.sh env); set +a
--      build/mercato lua spec/support/busted.lua -o TAP spec/integration/product_images_spec.lua
local crypto = require "crypto"
local socket = require "socket"
local P = require "support.product_helpers"

local PNG = "\137PNG\r\n\26\n" .. ("\0"):rep(16) .. "png body"

describe("product images", function()
  local svc, alice

  setup(function()
    svc = P.start { env = { BLOB_DIR = ".run/test/product/blobs-" .. crypto.hex(crypto.random(3)), PRODUCT_IMAGE_PURGE_EVERY_S = "1" } }
    alice = P.party("seller")
  end)
  teardown(function() P.stop(svc) end)

  local function upload(id, party)
    return P.request(svc, "POST", "/products/" .. id .. "/images", { token = (party or alice).token, body = PNG,
      headers = { ["Content-Type"] = "image/png" } })
  end

  it("records an upload: a product_images row, the product's images, a new version", function()
    local p = P.create(svc, alice)
    P.get(svc, "/products/" .. p.id)   -- cached
    local res = upload(p.id)
    assert.equal(201, res.status, res.body)
    local key = res.json.key
    assert.equal("products/" .. p.id .. "/", key:sub(1, #p.id + 10))
    local doc = P.get(svc, "/products/" .. p.id)
    assert.equal('"2"', doc.headers.etag)
    assert.same({ { key = key, url = res.json.url } }, doc.json.images)
    assert.equal("image/png " .. #PNG, P.psql(svc.db_url, ("SELECT content_type || ' ' || bytes FROM product_images WHERE key = '%s'"):format(key)))
    local second = upload(p.id)
    assert.equal(201, second.status)
    doc = P.get(svc, "/products/" .. p.id)
    assert.equal(2, #doc.json.images)
    assert.equal(key, doc.json.images[1].key)
    assert.equal(second.json.key, doc.json.images[2].key)
    -- a new product shows an empty list
    assert.matches('"images":%[%]', P.get(svc, "/products/" .. P.create(svc, alice).id).body)
  end)

  it("refuses a 21st image with 409", function()
    local p = P.create(svc, alice)
    P.psql(svc.db_url, ([[INSERT INTO product_images (key, product_id, content_type, bytes)
      SELECT 'products/%s/' || md5(n::text)::uuid || '.png', '%s', 'image/png', 1 FROM generate_series(1, 20) n;
      UPDATE products SET images = ARRAY(SELECT key FROM product_images WHERE product_id = '%s' ORDER BY key) WHERE id = '%s']])
      :format(p.id, p.id, p.id, p.id))
    local res = upload(p.id)
    assert.equal(409, res.status, res.body)
    assert.equal("20", P.psql(svc.db_url, ("SELECT count(*) FROM product_images WHERE product_id = '%s'"):format(p.id)))
  end)

  it("removes a deleted product's images from the store", function()
    local p = P.create(svc, alice)
    local res = upload(p.id)
    assert.equal(201, res.status, res.body)
    local url = "/images/" .. res.json.key
    assert.equal(200, P.get(svc, url).status)
    assert.equal(204, P.delete(svc, "/products/" .. p.id, { token = alice.token }).status)
    local deadline, status = socket.gettime() + 10
    repeat
      socket.sleep(0.25)
      status = P.get(svc, url).status
    until status == 404 or socket.gettime() > deadline
    assert.equal(404, status)
    assert.equal("t", P.psql(svc.db_url, ("SELECT deleted_at IS NOT NULL FROM product_images WHERE key = '%s'"):format(res.json.key)))
  end)
end)
