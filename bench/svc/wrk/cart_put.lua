-- wrk script: PUT /cart/items/{id} {"quantity": n} over the products in env CART_PRODUCTS
-- (comma-separated), quantities 1–5, with the buyer's token in env TOKEN.
-- luacheck: globals request wrk
local ids = {}
for id in (os.getenv("CART_PRODUCTS") or ""):gmatch("[^,]+") do ids[#ids + 1] = id end
local token = os.getenv("TOKEN") or ""
local i = 0

request = function()
  i = i + 1
  local id = ids[(i % #ids) + 1]
  return wrk.format("PUT", "/cart/items/" .. id,
    { ["Authorization"] = "Bearer " .. token, ["Content-Type"] = "application/json" },
    '{"quantity":' .. ((i % 5) + 1) .. '}')
end
