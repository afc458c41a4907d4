-- tests/fuzz/lua/template.lua: properties of the template engine (lib.template, the e-mails'
-- renderer; fuzz_lua_template), run on each input by tests/fuzz/fuzz_lua.h:
--   - compile either returns a render function or raises "name:line: message" (its contract);
--   - render never raises on data, always returns a string, and the same string twice;
--   - html mode: a variable never brings markup — the output has as many < > " ' as the same
--     render with those characters removed from the data (they came from the template's text);
--   - header mode: a variable never brings a control character (CR, LF, ...), counted alike;
--   - with data free of braces, no "{" reaches the output (no tag leaks unrendered) unless the
--     templates' own text or string literals hold one.
-- The input, cut at NUL bytes: the template's source, the source of partial "p", then data
-- strings (a, b, n, cents, currency, when, flag, user.email; any other name one of them) and
-- the list `items` (up to 4, one per data string). The mode is
-- the input's length mod 3. Templates are trusted files: inputs with more than 4 loops (whose
-- cost multiplies, by design) are not rendered.
local template = require "lib.template"

local format, gsub, find = string.format, string.gsub, string.find
local MODES = { "html", "text", "header" }

local function fail(what, ...)
  error("fuzz property failed: " .. format(what, ...), 0)
end

local function count(s, pattern)
  local _, n = gsub(s, pattern, "")
  return n
end

-- The render context from the data strings; clean(s) is applied to every string value, the
-- numbers and list lengths come from the raw strings so both contexts take the same branches.
local function context(d, clean)
  local function s(i) return clean(d[i] or "") end
  local function num(i) local raw = d[i] or ""; return tonumber(raw) or #raw * 997 end
  -- Any other name is one of the data strings (a name ending in "cents" a number), so the
  -- templates' own names (order_id, reason, ...) find values too.
  local any = { __index = function(_, k)
    if type(k) ~= "string" then return nil end
    if k:find("cents$") then return num(#k % 8 + 1) end
    return s(#k % 8 + 1)
  end }
  local items = {}
  for i = 1, math.min(#d, 4) do
    items[i] = setmetatable({ name = clean(d[i]), quantity = i, unit_price_cents = num(i), currency = s(5) }, any)
  end
  return setmetatable({
    a = s(1), b = s(2), name = s(1), n = num(3), cents = num(4), total_cents = num(4), currency = s(5),
    when = s(6), occurred_at = s(6), flag = (d[7] or "") ~= "", user = setmetatable({ name = s(2), email = s(8) }, any),
    items = items, empty = {},
  }, any)
end

local function as_is(s) return s end
local function no_markup(s) return (gsub(s, "[<>\"'&{}%c]", "x")) end

local function render(fn, ctx, what)
  local ok, out = pcall(fn, ctx)
  if not ok then fail("render raised on data (%s): %s", what, tostring(out)) end
  if type(out) ~= "string" then fail("render returned a %s (%s)", type(out), what) end
  return out
end

return function(input)
  local parts = {}
  for p in (input .. "\0"):gmatch("([^%z]*)%z") do parts[#parts + 1] = p end
  local src, partial = parts[1], parts[2]
  local data = {}
  for i = 3, #parts do data[#data + 1] = parts[i] end
  local mode = MODES[#input % 3 + 1]
  local opts = {
    name = "fuzz." .. mode, mode = mode,
    partial = function(pname) if pname == "p" and partial then return partial, "partials/p" end end,
  }
  local ok, fn = pcall(template.compile, src, opts)
  if not ok then
    if type(fn) ~= "string" or not (find(fn, "^fuzz%.%a+:%d+: ") or find(fn, "^partials/p:%d+: ")) then
      fail("compile raised %s, not \"name:line: message\"", tostring(fn))
    end
    return
  end
  if type(fn) ~= "function" then fail("compile returned a %s", type(fn)) end
  if count(src .. (partial or ""), "#each") > 4 then return end

  local raw = render(fn, context(data, as_is), "as given")
  if render(fn, context(data, as_is), "again") ~= raw then fail("two renders of one context differ") end
  local clean = render(fn, context(data, no_markup), "without markup")
  if mode == "html" then
    for _, c in ipairs({ "<", ">", '"', "'" }) do
      if count(raw, c) ~= count(clean, c) then fail("a variable brought %q into the html output: %q", c, raw) end
    end
  elseif mode == "header" then
    if count(raw, "%c") ~= count(clean, "%c") then fail("a variable brought a control character into a header: %q", raw) end
  end
  -- Braces in the output come from the templates' text or literals, never from a tag: when
  -- neither has one (the text being what is left once every {{...}} is taken out), the render
  -- of brace-free data has none. (Text braces may meet across a tag or a partial — "{" then
  -- {{> p}} giving "{" — and make "{{" of trusted text: not a leak.)
  local all = src .. "\0" .. (partial or "")
  local text_brace = find((gsub(all, "{{.-}}", "")), "{", 1, true) or find(all, '"[^"]*{[^"]*"')
  if not text_brace and find(clean, "{", 1, true) then fail("a tag leaked into the output: %q", clean) end
end
