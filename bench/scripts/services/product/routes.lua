-- mercato side of `make bench` (started with SCRIPTS_DIR=bench/scripts SERVICE=product).
-- Same payload as bench/nginx/nginx.conf.in and bench/express/server.js, built from a
-- table per request; the host JSON-encodes it and adds X-Request-Id and metrics.
local cjson = require "cjson" -- luacheck: ignore 211
local M = {}

function M.json(req) -- luacheck: ignore 212
  return 200, {
    id = "7f1c2a9e-0d7b-4e8a-9b7c-2f1e5a6b8c9d",
    name = "Wireless Headphones",
    price_cents = 12999,
    currency = "usd",
    tags = { "audio", "wireless" },
    stock = 42,
  }
end

return { { "GET", "/bench/json", M.json } }
