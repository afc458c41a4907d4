-- scripts/services/user/schema.lua: what the user service accepts (lib.validate schemas).
local password = { type = "string", required = true, min_len = 8, max_len = 128 }
local name = { type = "string", min_len = 1, max_len = 100, trim = true }

local address = {
  type = "object", nullable = true,
  fields = {
    line1 = { type = "string", required = true, min_len = 1, max_len = 200, trim = true },
    line2 = { type = "string", nullable = true, max_len = 200, trim = true },
    city = { type = "string", required = true, min_len = 1, max_len = 100, trim = true },
    region = { type = "string", nullable = true, max_len = 100, trim = true },
    postal_code = { type = "string", required = true, min_len = 1, max_len = 20, trim = true },
    country = { type = "string", required = true, pattern = "^%u%u$",
                pattern_message = "must be an ISO 3166-1 alpha-2 code such as FR" },
  },
}

return {
  register = {
    email = { type = "string", required = true, max_len = 254, format = "email", trim = true },
    password = password,
    name = { type = "string", required = true, min_len = 1, max_len = 100, trim = true },
    -- admin is never chosen by a client: refusing it is a forbidden field (400), not a typo.
    role = { type = "string", enum = { "buyer", "seller" }, refuse_status = 400 },
  },
  login = {
    email = { type = "string", required = true, min_len = 1, max_len = 254, trim = true },
    password = { type = "string", required = true, min_len = 1, max_len = 128 },
  },
  logout = {
    refresh_token = { type = "string", min_len = 1, max_len = 512 },
  },
  profile_patch = {
    name = name,
    phone = { type = "string", nullable = true, min_len = 5, max_len = 32, pattern = "^%+?[%d%s%-%(%)%.]+$",
              pattern_message = "must be a phone number such as +33 1 23 45 67 89" },
    address = address,
  },
  password_change = {
    current_password = { type = "string", required = true, min_len = 1, max_len = 128 },
    new_password = password,
  },
  admin_patch = {
    role = { type = "string", enum = { "buyer", "seller", "admin" } },
    disabled = { type = "boolean" },
  },
}
