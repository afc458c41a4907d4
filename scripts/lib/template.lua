-- scripts/lib/template.lua: a small logic-less template engine for e-mails (and anything else
-- that must never trust its data). Compile once, render many:
--
--   local t = template.compile(src, { name = "templates/order.created.html", mode = "html",
--                                     partial = function(name) return source, file_name end })
--   local s = t({ name = "Ann", items = { ... } })
--
-- Syntax
--   {{ path }}                     a value: `name`, `order.total_cents`, `item.name`
--   {{ helper arg ... }}           money cents currency · date t · datetime t · default v "x"
--   {{#each items as item}}…{{/each}}    a loop; inside, `item` and `item_index` (1-based)
--   {{#if path}}…{{else}}…{{/if}}  taken when the value is neither nil, false, "", 0 nor empty
--   {{> name}}                     a partial: partials/<name>.<html|txt>, compiled in place
--   {{! comment }}
-- A block tag alone on its line takes its line with it (as in Mustache).
--
-- Escaping: in "html" mode every value is HTML-escaped — always: there is no raw form for
-- data. The only markup that reaches the output unescaped is the templates' own text and their
-- partials' (trusted files in the repository). "text" mode writes values as they are;
-- "header" mode (subjects) turns control characters (CR, LF, ...) into spaces.
--
-- Errors: compile raises "name:line: message" (level 0, so `mercato check` shows it as is);
-- rendering never raises on data (a missing value is empty, a bad amount is shown as given).
local events = require "lib.events"

local _M = {}

local MAX_PARTIAL_DEPTH = 8

-- ---- helpers -------------------------------------------------------------------------------

-- ISO 4217 minor units and how amounts are written; others: "12.34 XYZ".
local CURRENCIES = {
  usd = { "$", 2 }, eur = { "€", 2 }, gbp = { "£", 2 }, jpy = { "¥", 0 }, krw = { "₩", 0 },
  cad = { "CA$", 2 }, aud = { "A$", 2 }, nzd = { "NZ$", 2 }, chf = { "CHF ", 2 }, inr = { "₹", 2 },
  cny = { "CN¥", 2 }, sek = { "SEK ", 2 }, nok = { "NOK ", 2 }, dkk = { "DKK ", 2 }, pln = { "PLN ", 2 },
  bhd = { "BHD ", 3 }, kwd = { "KWD ", 3 },
}

-- A value as the output shows it: strings as they are, integers without ".0", nil, json null and
-- tables (and functions) as nothing — never Lua's "table: 0x...", an address that differs per render.
local function to_text(v)
  local tv = type(v)
  if tv == "string" then return v end
  if tv == "number" then
    if v == math.floor(v) and math.abs(v) < 2 ^ 53 then return ("%d"):format(v) end
    return ("%.14g"):format(v)
  end
  if tv == "boolean" then return tostring(v) end
  return ""   -- nil, json null, tables
end

local function group_thousands(digits)
  local out = digits:reverse():gsub("(%d%d%d)", "%1,"):reverse()
  return (out:gsub("^,", ""))
end

-- money(12999, "usd") → "$129.99"; money(1500, "jpy") → "¥1,500"; unknown currency "129.99 XYZ".
function _M.money(cents, currency)
  if type(cents) ~= "number" or cents ~= math.floor(cents) or cents ~= cents or math.abs(cents) >= 2 ^ 53 then
    return to_text(cents)
  end
  local cur = type(currency) == "string" and currency:lower() or ""
  local c = CURRENCIES[cur]
  local exp = c and c[2] or 2
  local sign = cents < 0 and "-" or ""
  local abs = math.abs(cents)
  local unit = 10 ^ exp
  local whole = group_thousands(("%d"):format(math.floor(abs / unit)))
  local amount = whole
  if exp > 0 then amount = whole .. "." .. ("%0" .. exp .. "d"):format(abs % unit) end
  if c then return sign .. c[1] .. amount end
  return sign .. amount .. (cur ~= "" and (" " .. cur:upper()) or "")
end

local MONTHS = { "January", "February", "March", "April", "May", "June", "July", "August", "September",
  "October", "November", "December" }

local function to_epoch(t)
  if type(t) == "number" then return t end
  return events.parse_time(t)
end

-- date("2026-12-03T16:00:00Z") → "3 December 2026" (UTC); datetime → "3 December 2026, 16:00 UTC".
function _M.date(t)
  local e = to_epoch(t)
  if not e then return to_text(t) end
  local d = os.date("!*t", math.floor(e))
  return ("%d %s %d"):format(d.day, MONTHS[d.month], d.year)
end

function _M.datetime(t)
  local e = to_epoch(t)
  if not e then return to_text(t) end
  local d = os.date("!*t", math.floor(e))
  return ("%d %s %d, %02d:%02d UTC"):format(d.day, MONTHS[d.month], d.year, d.hour, d.min)
end

local function is_empty(v)
  return v == nil or v == false or v == "" or v == 0 or (type(v) == "table" and next(v) == nil)
    or (type(v) == "userdata" and v == (package.loaded.cjson and package.loaded.cjson.null))
end

_M.helpers = {
  money = { fn = _M.money, min = 2, max = 2 },
  date = { fn = _M.date, min = 1, max = 1 },
  datetime = { fn = _M.datetime, min = 1, max = 1 },
  default = { fn = function(v, d) if is_empty(v) then return d end return v end, min = 2, max = 2 },
}

-- ---- escaping ------------------------------------------------------------------------------

local HTML = { ["&"] = "&amp;", ["<"] = "&lt;", [">"] = "&gt;", ['"'] = "&quot;", ["'"] = "&#39;" }
function _M.escape_html(s) return (s:gsub("[&<>\"']", HTML)) end


local ESCAPERS = {
  html = _M.escape_html,
  text = function(s) return s end,
  header = function(s) return (s:gsub("[%c]", " ")) end,
}

-- ---- parsing -------------------------------------------------------------------------------

local PATH = "^[%a_][%w_]*$"

local function compile_error(name, line, msg) error(("%s:%d: %s"):format(name, line, msg), 0) end

-- "a.b.c" → { "a", "b", "c" }, or nil.
local function parse_path(s)
  local parts = {}
  for part in (s .. "."):gmatch("([^.]*)%.") do
    if not part:match(PATH) then return nil end
    parts[#parts + 1] = part
  end
  return #parts > 0 and parts or nil
end

-- Arguments of an expression: paths, "strings", numbers.
local function parse_args(s, name, line)
  local args, i = {}, 1
  while true do
    i = s:find("%S", i)
    if not i then break end
    local c = s:sub(i, i)
    if c == '"' then
      local j = s:find('"', i + 1, true)
      if not j then compile_error(name, line, "unterminated string in {{" .. s .. "}}") end
      args[#args + 1] = { lit = s:sub(i + 1, j - 1) }
      i = j + 1
    else
      local tok = s:match("^%S+", i)
      local num = tonumber(tok)
      if num then
        args[#args + 1] = { lit = num }
      else
        local p = parse_path(tok)
        if not p then compile_error(name, line, ("%q is not a name, string or number"):format(tok)) end
        args[#args + 1] = { path = p }
      end
      i = i + #tok
    end
  end
  return args
end

local function parse_expr(s, name, line)
  local args = parse_args(s, name, line)
  if #args == 0 then compile_error(name, line, "empty {{ }}") end
  local head = args[1]
  if #args == 1 then
    if head.lit ~= nil then return { kind = "lit", value = head.lit } end
    return { kind = "path", path = head.path }
  end
  local hname = head.path and #head.path == 1 and head.path[1]
  local h = hname and _M.helpers[hname]
  if not h then compile_error(name, line, ("unknown helper %q"):format(hname or tostring(head.lit))) end
  local n = #args - 1
  if n < h.min or n > h.max then
    compile_error(name, line, ("%s takes %d argument%s, got %d"):format(hname, h.max, h.max == 1 and "" or "s", n))
  end
  table.remove(args, 1)
  return { kind = "call", fn = h.fn, args = args }
end

-- Split src into text and tag tokens, each tag with its line; block tags alone on their line
-- swallow that line.
local function tokenize(src, name)
  local toks, pos, line = {}, 1, 1
  while true do
    local s, e = src:find("{{", pos, true)
    if not s then
      toks[#toks + 1] = { text = src:sub(pos) }
      break
    end
    toks[#toks + 1] = { text = src:sub(pos, s - 1) }
    local _, nl = src:sub(pos, s - 1):gsub("\n", "")
    line = line + nl
    if src:sub(e + 1, e + 1) == "{" then
      compile_error(name, line, "{{{ }}} (raw output) is not allowed: values are always escaped; put trusted markup in a partial")
    end
    local close = src:find("}}", e + 1, true)
    if not close then compile_error(name, line, "unclosed {{") end
    local body = src:sub(e + 1, close - 1)
    if body:find("{{", 1, true) then compile_error(name, line, "unclosed {{") end
    local tag = { tag = body:match("^%s*(.-)%s*$"), line = line }
    local _, inl = body:gsub("\n", "")
    line = line + inl
    pos = close + 2
    local sigil = tag.tag:sub(1, 1)
    if sigil == "#" or sigil == "/" or sigil == "!" or tag.tag == "else" then
      -- standalone: only blanks between the previous newline (or start) and the tag, and
      -- between the tag and the next newline (or end)
      local prev = toks[#toks]
      local before = prev.text:match("([ \t]*)$")
      local at_line_start = (#prev.text == #before and (#toks == 1 or toks[#toks - 1].standalone_end))
        or prev.text:sub(-#before - 1, -#before - 1) == "\n"
      local after = src:match("^[ \t]*\r?\n", pos) or (src:match("^[ \t]*$", pos) and src:sub(pos))
      if at_line_start and after then
        prev.text = prev.text:sub(1, #prev.text - #before)
        pos = pos + #after
        if after:find("\n", 1, true) then line = line + 1 end
        tag.standalone_end = true
      end
    end
    toks[#toks + 1] = tag
  end
  return toks
end

local parse_tokens

local function compile_partial(pname, opts, line, depth)
  if depth >= MAX_PARTIAL_DEPTH then
    compile_error(opts.name, line, ("partial %q nests deeper than %d (a cycle?)"):format(pname, MAX_PARTIAL_DEPTH))
  end
  if not pname:match("^[%w_%-]+$") then compile_error(opts.name, line, ("bad partial name %q"):format(pname)) end
  local src, file = nil, nil
  if opts.partial then src, file = opts.partial(pname, opts.mode) end
  if not src then compile_error(opts.name, line, ("partial %q not found"):format(pname)) end
  local sub = { name = file or pname, mode = opts.mode, partial = opts.partial }
  return parse_tokens(tokenize(src, sub.name), sub, depth + 1)
end

-- Tokens → a tree of nodes: { kind = "text" | "value" | "each" | "if" | "seq", ... }.
function parse_tokens(toks, opts, depth)
  local name = opts.name
  local root = { kind = "seq" }
  local stack = { { node = root, open = nil } }
  local function cur() return stack[#stack] end
  local function add(n) local c = cur(); local list = c.in_else and c.node.else_ or c.node; list[#list + 1] = n end
  for _, t in ipairs(toks) do
    if t.text then
      if t.text ~= "" then add({ kind = "text", text = t.text }) end
    else
      local tag, line = t.tag, t.line
      local sigil = tag:sub(1, 1)
      if sigil == "!" then   -- luacheck: ignore 542 (a comment renders nothing)
      elseif sigil == "#" then
        local what, rest = tag:match("^#(%a+)%s*(.*)$")
        if what == "each" then
          local list, var = rest:match("^(%S+)%s+as%s+([%a_][%w_]*)$")
          local p = list and parse_path(list)
          if not p then compile_error(name, line, "expecting {{#each list as name}}") end
          local n = { kind = "each", path = p, var = var }
          add(n)
          stack[#stack + 1] = { node = n, open = "each", line = line }
        elseif what == "if" then
          local p = parse_path(rest)
          if not p then compile_error(name, line, "expecting {{#if name}}") end
          local n = { kind = "if", path = p, else_ = {} }
          add(n)
          stack[#stack + 1] = { node = n, open = "if", line = line }
        else
          compile_error(name, line, ("unknown block {{%s}}"):format(tag))
        end
      elseif sigil == "/" then
        local what = tag:match("^/(%a+)$")
        local c = cur()
        if not c.open then compile_error(name, line, ("{{%s}} closes nothing"):format(tag)) end
        if what ~= c.open then
          compile_error(name, line, ("{{%s}} closes {{#%s}} of line %d"):format(tag, c.open, c.line))
        end
        stack[#stack] = nil
      elseif tag == "else" then
        local c = cur()
        if c.open ~= "if" or c.in_else then compile_error(name, line, "{{else}} outside {{#if}}") end
        c.in_else = true
      elseif sigil == ">" then
        local pname = tag:match("^>%s*(.-)$")
        add(compile_partial(pname, opts, line, depth))
      else
        add({ kind = "value", expr = parse_expr(tag, name, line) })
      end
    end
  end
  if #stack > 1 then
    local c = cur()
    compile_error(name, c.line, ("{{#%s}} is never closed"):format(c.open))
  end
  return root
end

-- ---- rendering -----------------------------------------------------------------------------

local function lookup(scopes, path)
  local v
  for i = #scopes, 1, -1 do
    local s = scopes[i]
    if type(s) == "table" then
      v = s[path[1]]
      if v ~= nil then break end
    end
  end
  for i = 2, #path do
    if type(v) ~= "table" then return nil end
    v = v[path[i]]
  end
  return v
end

local function eval(expr, scopes)
  if expr.kind == "lit" then return expr.value end
  if expr.kind == "path" then return lookup(scopes, expr.path) end
  local vals = {}
  for i, a in ipairs(expr.args) do
    if a.lit ~= nil then vals[i] = a.lit else vals[i] = lookup(scopes, a.path) end
  end
  return expr.fn(vals[1], vals[2], vals[3])
end

local render_seq

local function render_node(n, scopes, out, escape)
  local k = n.kind
  if k == "text" then
    out[#out + 1] = n.text
  elseif k == "value" then
    out[#out + 1] = escape(to_text(eval(n.expr, scopes)))
  elseif k == "seq" then
    render_seq(n, scopes, out, escape)
  elseif k == "each" then
    local list = lookup(scopes, n.path)
    if type(list) == "table" then
      for i, item in ipairs(list) do
        scopes[#scopes + 1] = { [n.var] = item, [n.var .. "_index"] = i }
        render_seq(n, scopes, out, escape)
        scopes[#scopes] = nil
      end
    end
  elseif k == "if" then
    if not is_empty(lookup(scopes, n.path)) then render_seq(n, scopes, out, escape)
    else render_seq(n.else_, scopes, out, escape) end
  end
end

function render_seq(list, scopes, out, escape)
  for i = 1, #list do render_node(list[i], scopes, out, escape) end
end

-- template.compile(src, opts) → render(ctx) → string. Raises "name:line: message".
function _M.compile(src, opts)
  opts = opts or {}
  if type(src) ~= "string" then error("template.compile: expecting the template source", 2) end
  local o = { name = opts.name or "template", mode = opts.mode or "html", partial = opts.partial }
  local escape = ESCAPERS[o.mode]
  if not escape then error("template.compile: mode must be html, text or header", 2) end
  local tree = parse_tokens(tokenize(src, o.name), o, 0)
  return function(ctx)
    local out = {}
    render_seq(tree, { ctx or {} }, out, escape)
    return table.concat(out)
  end
end

return _M
