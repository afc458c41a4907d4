-- scripts/services/order/schema.lua: what the order service accepts (lib.validate schemas).
local _M = {}

local line = { type = "string", required = true, min_len = 1, max_len = 200, trim = true }

_M.address = {
  name = line,
  line1 = line,
  line2 = { type = "string", max_len = 200, trim = true, nullable = true },
  city = { type = "string", required = true, min_len = 1, max_len = 100, trim = true },
  postal_code = { type = "string", required = true, min_len = 1, max_len = 20, trim = true },
  country = { type = "string", required = true, pattern = "^%u%u$",
              pattern_message = "must be an ISO 3166-1 alpha-2 code such as DE" },
}

_M.checkout = {
  shipping_address = { type = "object", required = true, fields = _M.address },
}

_M.cart_item = {
  quantity = { type = "integer", required = true, min = 0, max = 100 },
}

_M.ship = {
  carrier = { type = "string", required = true, min_len = 1, max_len = 100, trim = true },
  tracking_number = { type = "string", required = true, min_len = 1, max_len = 100, trim = true },
}

return _M
