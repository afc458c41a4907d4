-- tests/fuzz/lua/image.lua: properties of the product images' type checks (fuzz_lua_image),
-- run on each input by tests/fuzz/fuzz_lua.h. The input is a Content-Type value, a newline,
-- then the uploaded bytes. Against a second, plain reading of the same bytes:
--   - media_type(ct) is the first token of ct before ';' or a blank, leading blanks skipped,
--     lower-cased (nil when there is none), never raising;
--   - sniff(media, bytes) is nil for any media type but image/png, image/jpeg and image/webp,
--     and for those true exactly when bytes start with the format's signature (PNG's 8 bytes,
--     JPEG's SOI + a marker, RIFF....WEBP), for any bytes, empty or short.
local images = require "services.product.handlers.images"

local format, lower = string.format, string.lower

local function fail(what, ...)
  error("fuzz property failed: " .. format(what, ...), 0)
end

-- The plain reading: byte by byte, no patterns.
local function plain_media_type(ct)
  local i = 1
  while i <= #ct and (ct:sub(i, i) == " " or ct:sub(i, i) == "\t" or ct:sub(i, i) == "\r"
    or ct:sub(i, i) == "\n" or ct:sub(i, i) == "\v" or ct:sub(i, i) == "\f") do i = i + 1 end
  local j = i
  while j <= #ct and not (";  \t\r\n\v\f"):find(ct:sub(j, j), 1, true) do j = j + 1 end
  if j == i then return nil end
  return lower(ct:sub(i, j - 1))
end

local SIGNATURES = {
  ["image/png"] = function(b) return #b >= 8 and b:byte(1) == 0x89 and b:sub(2, 4) == "PNG" and b:byte(5) == 0x0D
    and b:byte(6) == 0x0A and b:byte(7) == 0x1A and b:byte(8) == 0x0A end,
  ["image/jpeg"] = function(b) return #b >= 3 and b:byte(1) == 0xFF and b:byte(2) == 0xD8 and b:byte(3) == 0xFF end,
  ["image/webp"] = function(b) return #b >= 12 and b:sub(1, 4) == "RIFF" and b:sub(9, 12) == "WEBP" end,
}

return function(input)
  local cut = input:find("\n", 1, true)
  local ct = cut and input:sub(1, cut - 1) or input
  local bytes = cut and input:sub(cut + 1) or ""
  local media = images.media_type(ct)
  local want = plain_media_type(ct)
  if media ~= want then fail("media_type(%q) = %q, read plainly %q", ct, tostring(media), tostring(want)) end
  if images.media_type(nil) ~= nil then fail("media_type(nil) is not nil") end
  -- Every accepted type against these bytes, and the type the header named.
  for _, m in ipairs({ media or "", "image/png", "image/jpeg", "image/webp" }) do
    local got, sig = images.sniff(m, bytes), SIGNATURES[m]
    if sig then
      if got ~= sig(bytes) then fail("sniff(%q, %q) = %s", m, bytes:sub(1, 16), tostring(got)) end
    elseif got ~= nil then
      fail("sniff(%q, ...) = %s for a type that is not accepted", m, tostring(got))
    end
  end
end
