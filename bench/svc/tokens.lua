-- bench/svc/tokens.lua: the access tokens bench/services.sh sends to the product service, signed
-- with jwt.sign and the bench's private key (the product service verifies them with the public
-- half, JWT_PUBLIC_KEY_FILE). One hour each.
--
--   build/mercato lua bench/svc/tokens.lua KEY.pem
--   → SELLER_TOKEN=...      role seller (creates the hot products)
--     SELLER_ID=...         its sub
--     INVENTORY_TOKEN=...   a service token with scope "inventory" (POST /internal/reservations)
local crypto = require "crypto"
local jwt = require "jwt"

local f = assert(io.open(assert(arg[1], "usage: tokens.lua KEY.pem"), "rb"))
local pem = f:read("*a")
f:close()

local seller = crypto.uuid7()
print("SELLER_TOKEN=" .. assert(jwt.sign({ sub = seller, role = "seller", scope = "" }, { key = pem, ttl = 3600 })))
print("SELLER_ID=" .. seller)
print("INVENTORY_TOKEN=" .. assert(jwt.sign(
  { sub = "bench-orders", role = "service", scope = "inventory", client_id = "bench-orders" }, { key = pem, ttl = 3600 })))
return 0
