-- The crypto binding inside a real mercato Lua state: published vectors, the nil, err, code
-- convention, UUID layouts and argon2id password hashing.
--
-- Run: build/mercato lua spec/support/busted.lua -o TAP spec/integration/crypto_spec.lua
-- Needs no env (the ARGON2_* settings keep their defaults).
local crypto = require "crypto"

describe("crypto", function()
  it("hashes and MACs to the published vectors", function()
    assert.equal("ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad", crypto.hex(crypto.sha256("abc")))
    assert.equal("5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843",
      crypto.hex(crypto.hmac_sha256("Jefe", "what do ya want for nothing?")))
    -- RFC 4231 case 6: a key longer than the block is hashed first.
    assert.equal("60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54",
      crypto.hex(crypto.hmac_sha256(("\170"):rep(131), "Test Using Larger Than Block-Size Key - Hash Key First")))
  end)

  it("encodes base64 in both alphabets and refuses malformed input with code invalid", function()
    assert.equal("Zm9vYmE=", crypto.base64_encode("fooba"))
    assert.equal("Zm9vYmE", crypto.base64url_encode("fooba"))
    assert.equal("-_8", crypto.base64url_encode("\251\255"))
    assert.equal("\251\255", crypto.base64_decode("+/8="))
    local v, err, code = crypto.base64url_decode("Zm9vYmE=")
    assert.is_nil(v)
    assert.equal("invalid base64url", err)
    assert.equal("invalid", code)
    local bytes = crypto.random(257)
    assert.equal(bytes, crypto.base64url_decode(crypto.base64url_encode(bytes)))
    assert.equal(bytes, crypto.base64_decode(crypto.base64_encode(bytes)))
  end)

  it("compares in constant time without confusing prefixes", function()
    assert.is_true(crypto.equal("token", "token"))
    assert.is_false(crypto.equal("token", "toke"))
    assert.is_false(crypto.equal("token", "tokeN"))
    assert.has_error(function() crypto.equal("a", nil) end)
  end)

  it("makes v4 and time-ordered v7 UUIDs", function()
    local seen = {}
    for _ = 1, 1000 do
      local u = crypto.uuid4()
      assert.matches("^%x%x%x%x%x%x%x%x%-%x%x%x%x%-4%x%x%x%-[89ab]%x%x%x%-%x%x%x%x%x%x%x%x%x%x%x%x$", u)
      assert.is_nil(seen[u])
      seen[u] = true
    end
    local prev = crypto.uuid7()
    for _ = 1, 1000 do
      local u = crypto.uuid7()
      assert.matches("^%x+%-%x+%-7%x%x%x%-[89ab]%x%x%x%-%x+$", u)
      assert.is_true(u > prev)
      prev = u
    end
    local ms = tonumber(prev:gsub("-", ""):sub(1, 12), 16)
    assert.is_true(math.abs(ms / 1000 - os.time()) < 5)
  end)

  it("hashes passwords with argon2id and verifies them", function()
    local h = assert(crypto.argon2_hash("correct horse battery staple"))
    assert.matches("^%$argon2id%$v=19%$m=19456,t=2,p=1%$", h)
    assert.is_true(crypto.argon2_verify(h, "correct horse battery staple"))
    assert.is_false(crypto.argon2_verify(h, "Correct horse battery staple"))
    assert.is_false(crypto.dummy_verify("correct horse battery staple"))
    local ok, err, code = crypto.argon2_verify("not a hash", "x")
    assert.is_nil(ok)
    assert.is_string(err)
    assert.equal("invalid", code)
  end)

  it("refuses random sizes outside 0..1 MiB", function()
    assert.equal(0, #crypto.random(0))
    assert.has_error(function() crypto.random(-1) end)
    assert.has_error(function() crypto.random(2 ^ 21) end)
  end)
end)
