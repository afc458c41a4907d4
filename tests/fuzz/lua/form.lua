-- tests/fuzz/lua/form.lua: properties of form and query decoding (fuzz_lua_form), run on each
-- input by tests/fuzz/fuzz_lua.h in the product service's worker state:
--   - mercato.form.unescape (the host's decoder) returns a string no longer than its input,
--     and decode(encode(x)) == x for any bytes x, '+' and "%20" both decoding to a space;
--   - lib.validate.form (OAuth form bodies) never raises: a table of non-empty names to
--     values, all valid UTF-8, or nil, a reason and "encoding" | "repeated"; a body encoded
--     from distinct valid pairs decodes to exactly those pairs, a repeated name is "repeated";
--   - mercato.form.parse_query (req.query) never raises, keeps the first value of a name and
--     decodes an encoded query back to its pairs.
-- The input is read twice: as a body / query string as it is, and cut at NUL bytes into
-- name, value, name, value, ... for the round trips.
local form = require "mercato.form"
local validate = require "lib.validate"

local byte, format, gsub = string.byte, string.format, string.gsub

local function fail(what, ...)
  error("fuzz property failed: " .. format(what, ...), 0)
end

-- Percent-encode everything but unreserved bytes; a space becomes '+' when plus is set.
local function encode(s, plus)
  return (gsub(s, "[^%w%-%._~]", function(c)
    if plus and c == " " then return "+" end
    return format("%%%02X", byte(c))
  end))
end

local function check_unescape(x)
  local d = form.unescape(x)
  if type(d) ~= "string" then fail("unescape returned a %s", type(d)) end
  if #d > #x then fail("unescape grew %q to %q", x, d) end
  for _, plus in ipairs({ false, true }) do
    local back = form.unescape(encode(x, plus))
    if back ~= x then fail("unescape(encode(%q)) = %q", x, back) end
  end
end

local function check_form_result(body, out, why, kind)
  if out == nil then
    if type(why) ~= "string" or (kind ~= "encoding" and kind ~= "repeated") then
      fail("form(%q) refused with %s, %s", body, tostring(why), tostring(kind))
    end
    if not validate.utf8_len(why) then fail("form(%q): the reason is not UTF-8", body) end
    return
  end
  if type(out) ~= "table" then fail("form(%q) returned a %s", body, type(out)) end
  for k, v in pairs(out) do
    if type(k) ~= "string" or k == "" or type(v) ~= "string" then
      fail("form(%q) holds %q = %q", body, tostring(k), tostring(v))
    end
    if not validate.utf8_len(k) or not validate.utf8_len(v) then fail("form(%q) holds bytes that are not UTF-8", body) end
  end
end

local function check_query_result(qs, q)
  if type(q) ~= "table" then fail("parse_query(%q) returned a %s", qs, type(q)) end
  for k, v in pairs(q) do
    if type(k) ~= "string" or k == "" or type(v) ~= "string" then
      fail("parse_query(%q) holds %q = %q", qs, tostring(k), tostring(v))
    end
  end
end

-- name, value pairs from the input cut at NUL bytes (a missing last value is "").
local function pairs_of(input)
  local parts = {}
  for p in (input .. "\0"):gmatch("([^%z]*)%z") do parts[#parts + 1] = p end
  local out = {}
  for i = 1, #parts, 2 do out[#out + 1] = { parts[i], parts[i + 1] or "" } end
  return out
end

local function round_trips(input)
  local list = pairs_of(input)
  local enc, first, valid, repeated = {}, {}, true, false
  for i, kv in ipairs(list) do
    local k, v = kv[1], kv[2]
    enc[i] = encode(k, i % 2 == 0) .. "=" .. encode(v, i % 2 == 1)
    if not validate.utf8_len(k) or not validate.utf8_len(v) then valid = false end
    if k ~= "" then
      if first[k] ~= nil then repeated = true else first[k] = v end
    end
  end
  local body = table.concat(enc, "&")
  local out, why, kind = validate.form(body)
  check_form_result(body, out, why, kind)
  if valid and not repeated then
    if not out then fail("form(%q) refused valid distinct pairs: %s", body, tostring(why)) end
    for k, v in pairs(first) do
      if out[k] ~= v then fail("form(%q)[%q] = %q, sent %q", body, k, tostring(out[k]), v) end
    end
    for k in pairs(out) do if first[k] == nil then fail("form(%q) invented %q", body, k) end end
  elseif valid and kind ~= "repeated" then
    fail("form(%q): a repeated name gave %s, %s", body, tostring(why), tostring(kind))
  end
  local q = form.parse_query(body)
  check_query_result(body, q)
  for k, v in pairs(first) do
    if q[k] ~= v then fail("parse_query(%q)[%q] = %q, first sent %q", body, k, tostring(q[k]), v) end
  end
  for k in pairs(q) do if first[k] == nil then fail("parse_query(%q) invented %q", body, k) end end
end

return function(input)
  check_unescape(input)
  check_form_result(input, validate.form(input))
  check_query_result(input, form.parse_query(input))
  round_trips(input)
end
