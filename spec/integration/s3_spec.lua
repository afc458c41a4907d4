-- spec/integration/s3_spec.lua: the s3 binding against s3rver (which verifies SigV4), and the
-- image handlers (POST /products/{id}/images, GET /images/{key*}) on S3 and on local disk.
-- Needs the stack's S3_* and DATABASE_URL (scripts/dev/stack.sh env); the SigV4 example from
-- the AWS documentation is checked in tests/test_s3.c.
--   build/mercato lua spec/support/busted.lua -o TAP spec/integration/s3_spec.lua
local H = require "fixtures.inventory.helpers"
local raw = require "support.raw_http"
local s3 = require "s3"

local DBNAME = "mercato_images_spec"
local PNG = "\137PNG\r\n\26\n" .. ("\0"):rep(16) .. "png body"
local JPEG = "\255\216\255\224" .. ("j"):rep(64)
local WEBP = "RIFF\0\0\0\0WEBPVP8 " .. ("w"):rep(32)

local function need_s3()
  assert(os.getenv("S3_BUCKET") and os.getenv("S3_ENDPOINT"), "S3_* must be set (scripts/dev/stack.sh env)")
end

-- Run Lua in a fresh `mercato lua` process with this environment on top.
local function lua_sub(env, code)
  local file = os.tmpname()
  local f = assert(io.open(file, "w"))
  f:write(code)
  f:close()
  local parts = {}
  for k, v in pairs(env) do parts[#parts + 1] = k .. "='" .. v .. "'" end
  local out = H.sh(("env %s %s lua %s"):format(table.concat(parts, " "), H.BIN, file))
  os.remove(file)
  return out
end

describe("s3 binding against s3rver", function()
  setup(need_s3)

  it("puts, gets and deletes an object, 6 MiB included", function()
    assert.equal("s3", s3.backend())
    local key = "spec/" .. H.uuid() .. ".png"
    local big = ("\1\2\3\4"):rep(6 * 1024 * 1024 / 4)
    assert.is_true(s3.put(key, big, "image/png"))
    local bytes, ctype = s3.get(key)
    assert.equal(#big, #bytes)
    assert.is_true(bytes == big)
    assert.equal("image/png", ctype)
    assert.is_true(s3.put(key, "small", "image/png"))   -- overwrite
    assert.equal("small", (s3.get(key)))
    assert.is_true(s3.delete(key))
    assert.is_true(s3.delete(key))                     -- idempotent
    local none, err = s3.get(key)
    assert.is_nil(none)
    assert.is_nil(err)                                 -- a bare nil: absent is not an error
    assert.equal(os.getenv("S3_ENDPOINT"):gsub("/$", "") .. "/" .. os.getenv("S3_BUCKET") .. "/" .. key, s3.url(key))
  end)

  it("surfaces a wrong secret as the 403 the store answers, as an error", function()
    local out = lua_sub({ S3_SECRET_KEY = "not-the-secret" }, [[
      local s3 = require "s3"
      local ok, err, code, status = s3.put("spec/denied.png", "x", "image/png")
      local g, gerr, gcode, gstatus = s3.get("spec/denied.png")
      io.write(table.concat({ tostring(ok), code, status, err, tostring(g), gcode, gstatus }, " "), "\n")
    ]])
    assert.matches("nil unavailable 403 s3 PUT: HTTP 403 SignatureDoesNotMatch nil unavailable 403", out, 1, true)
  end)

  it("refuses keys that could escape or confuse, without calling the store", function()
    for _, key in ipairs({ "../x", "/abs", "a//b", "a/../../b", ".hidden", "a b", "a?x=1", "" }) do
      local ok, err, code = s3.put(key, "x")
      assert.is_nil(ok)
      assert.equal("invalid", code, key .. ": " .. tostring(err))
      assert.is_nil((s3.get(key)))
    end
    local ok, err = pcall(s3.put, nil, "x")
    assert.is_false(ok)
    assert.matches("s3.put: expecting a key string, got nil", err, 1, true)
  end)

  it("returns unavailable, not a hang, when the store is down", function()
    local out = lua_sub({ S3_ENDPOINT = "http://127.0.0.1:1", S3_CONNECT_TIMEOUT_MS = "500" }, [[
      local s3 = require "s3"
      local ok, err, code, status = s3.get("x.png")
      io.write(table.concat({ tostring(ok), code, tostring(status) }, " "), "\n")
    ]])
    assert.matches("nil unavailable nil", out, 1, true)
  end)
end)

describe("image uploads", function()
  local seller, other, url, servers = H.uuid(), nil, nil, {}

  setup(function()
    need_s3()
    H.keys()
    url = H.database(DBNAME)
    local scripts = H.scripts("images")
    servers.s3 = H.start { database_url = url, scripts = scripts }
    servers.disk = H.start { database_url = url, scripts = scripts,
      env = { S3_BUCKET = "", BLOB_DIR = H.DIR .. "/blobs" } }
    other = H.token { sub = H.uuid(), role = "seller" }
  end)

  teardown(function()
    for _, srv in pairs(servers) do assert.equal(0, srv:stop()) end
    H.drop_database(DBNAME)
  end)

  local function product(srv)
    local id = H.uuid()
    assert.equal(201, H.call(srv, "POST", "/spec/products", { json = { id = id, seller_id = seller, stock = 1 } }).status)
    return id
  end

  local function upload(srv, id, bytes, ctype, token)
    return H.call(srv, "POST", "/products/" .. id .. "/images", { body = bytes,
      token = token or H.token { sub = seller, role = "seller" }, headers = { ["Content-Type"] = ctype } })
  end

  for _, backend in ipairs({ "s3", "disk" }) do
    describe("on " .. backend, function()
      it("stores PNG, JPEG and WebP under a generated key and serves them back", function()
        local srv = servers[backend]
        local id = product(srv)
        for ext, case in pairs({ png = { PNG, "image/png" }, jpg = { JPEG, "image/jpeg" }, webp = { WEBP, "image/webp" } }) do
          local res = upload(srv, id, case[1], case[2] .. "; charset=binary")
          assert.equal(201, res.status, res.body)
          assert.matches("^products/" .. id:gsub("%-", "%%-") .. "/%x+%-%x+%-%x+%-%x+%-%x+%." .. ext .. "$", res.json.key)
          if backend == "disk" then
            assert.equal("/images/" .. res.json.key, res.json.url)
          else
            assert.matches("/product%-images/" .. res.json.key:gsub("%-", "%%-") .. "$", res.json.url)
          end
          local got = H.call(srv, "GET", "/images/" .. res.json.key)
          assert.equal(200, got.status)
          assert.equal(case[1], got.body)
          assert.equal(case[2], got.headers["content-type"])
          assert.equal("nosniff", got.headers["x-content-type-options"])
        end
      end)

      it("checks the bytes against the type (415), the size (413) and the owner (403)", function()
        local srv = servers[backend]
        local id = product(srv)
        assert.equal(415, upload(srv, id, JPEG, "image/png").status)
        assert.equal(415, upload(srv, id, "GIF89a....", "image/gif").status)
        assert.equal(415, upload(srv, id, "<svg/>", "image/svg+xml").status)
        assert.equal(415, upload(srv, id, PNG, "application/octet-stream").status)
        assert.equal(415, upload(srv, id, PNG, nil).status)
        -- 6 MiB: the host answers 413 from the Content-Length and may close before the body is in
        local sock = assert(raw.connect(srv.port, 10))
        local body = PNG .. ("x"):rep(6 * 1024 * 1024)
        local token = H.token { sub = seller, role = "seller" }
        sock:send(("POST /products/%s/images HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\n"
          .. "Content-Type: image/png\r\nContent-Length: %d\r\n\r\n"):format(id, token, #body))
        sock:send(body)
        local big = assert(raw.read_response(sock))
        sock:close()
        assert.equal(413, big.status)
        assert.equal(201, upload(srv, id, PNG .. ("x"):rep(5 * 1024 * 1024 - #PNG), "image/png").status)
        assert.equal(403, upload(srv, id, PNG, "image/png", other).status)
        assert.equal(201, upload(srv, id, PNG, "image/png", H.token { sub = H.uuid(), role = "admin" }).status)
        assert.equal(403, upload(srv, id, PNG, "image/png", H.token { sub = seller, role = "buyer" }).status)
        assert.equal(404, upload(srv, H.uuid(), PNG, "image/png").status)
        assert.equal(401, H.call(srv, "POST", "/products/" .. id .. "/images", { body = PNG,
          headers = { ["Content-Type"] = "image/png" } }).status)
      end)

      it("never takes the key from the client, and odd or traversing keys are just 404", function()
        local srv = servers[backend]
        local id = product(srv)
        local res = H.call(srv, "POST", "/products/" .. id .. "/images?key=../../etc/passwd", { body = PNG,
          token = H.token { sub = seller, role = "seller" },
          headers = { ["Content-Type"] = "image/png", ["X-Key"] = "evil.png" } })
        assert.equal(201, res.status)
        assert.not_matches("evil", res.json.key)
        assert.not_matches("%.%.", res.json.key)
        for _, path in ipairs({ "/images/../../../etc/passwd", "/images/..%2F..%2Fetc%2Fpasswd",
          "/images/products/%2e%2e/%2e%2e/x.png", "/images/products/" .. id .. "/nope.png",
          "/images/" .. ("a/"):rep(300) .. "x.png", "/images/products/x/.hidden.png", "/images/%00",
          "/images/products//x.png" }) do
          local r = H.call(srv, "GET", path)
          assert.is_true(r.status == 404 or r.status == 400, path .. " → " .. r.status)
        end
      end)
    end)
  end
end)
