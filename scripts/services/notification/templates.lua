-- scripts/services/notification/templates.lua: the e-mail of each event type, from
-- templates/<type>.subject.txt, <type>.txt and <type>.html (partials in templates/partials/),
-- compiled with lib.template and kept per Lua state — a hot reload builds new states from the
-- new snapshot, so an edited template is picked up by the next event.
--
--   local mail, err = templates.render(event)   -- { subject, text, html } | nil, err, "invalid"
--   templates.check()                           -- compile every file; raises "file:line: message"
local host = require "host"
local template = require "lib.template"

local _M = {}

local DIR = "services/notification/templates/"

-- The event types that send an e-mail (CONTRACT §7; issue 14).
_M.TYPES = { "user.registered", "order.created", "payment.completed", "order.shipped", "order.delivered",
  "order.cancelled", "payment.refunded" }
local HANDLED = {}
for _, t in ipairs(_M.TYPES) do HANDLED[t] = true end
_M.HANDLED = HANDLED

local PARTS = {
  { key = "subject", suffix = ".subject.txt", mode = "header" },
  { key = "text", suffix = ".txt", mode = "text" },
  { key = "html", suffix = ".html", mode = "html" },
}

local function shown(file) return (host.env("SCRIPTS_DIR") or "scripts"):gsub("/+$", "") .. "/" .. file end

local function partial(name, mode)
  local file = DIR .. "partials/" .. name .. (mode == "html" and ".html" or ".txt")
  return host.asset(file), shown(file)
end

local function mode_of(file)
  if file:sub(-12) == ".subject.txt" then return "header" end
  if file:sub(-5) == ".html" then return "html" end
  if file:sub(-4) == ".txt" then return "text" end
  return nil
end

local function compile_file(file, mode)
  local src = host.asset(file)
  if not src then error(shown(file) .. ":1: template not found", 0) end
  if mode == "header" then src = src:gsub("%s+$", "") end
  return template.compile(src, { name = shown(file), mode = mode, partial = partial })
end

local compiled = {}   -- [type] = { subject = fn, text = fn, html = fn }: this state's cache

local function get(etype)
  local set = compiled[etype]
  if set then return set end
  set = {}
  for _, p in ipairs(PARTS) do set[p.key] = compile_file(DIR .. etype .. p.suffix, p.mode) end
  compiled[etype] = set
  return set
end

-- The context a template sees: the event's data, plus event_id, event_type, occurred_at.
local function context(event)
  local ctx = {}
  if type(event.data) == "table" then for k, v in pairs(event.data) do ctx[k] = v end end
  ctx.event_id, ctx.event_type, ctx.occurred_at = event.id, event.type, event.occurred_at
  return ctx
end

-- templates.render(event) → { subject, text, html }, or nil, err, "invalid" for an event type
-- without templates; a template that fails to compile raises (a deploy error, not the event's).
function _M.render(event)
  if not HANDLED[event.type] then return nil, "no template for " .. tostring(event.type), "invalid" end
  local set = get(event.type)
  local ctx = context(event)
  local subject = set.subject(ctx):gsub("^%s+", ""):gsub("%s+$", "")
  ctx.subject = subject
  return { subject = subject, text = set.text(ctx), html = set.html(ctx) }
end

-- Compile every template file (partials too) and require the three parts of each type. Run by
-- routes.lua, so `mercato check` and a hot reload refuse a broken template with file:line.
function _M.check()
  for _, file in ipairs(host.assets(DIR)) do
    local mode = mode_of(file)
    if mode then compile_file(file, mode) end
  end
  for _, etype in ipairs(_M.TYPES) do get(etype) end
end

return _M
