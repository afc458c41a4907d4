-- scripts/lib/validate.lua: request bodies checked against small declarative schemas
-- (CONTRACT §3: 400 malformed JSON, non-object or unknown/forbidden fields; 415 wrong content
-- type; 422 well-formed JSON failing validation, with errors = [{field, message}]).
--
--   local S = { email = { type = "string", required = true, format = "email", max_len = 254 },
--               role  = { type = "string", enum = { "buyer", "seller" }, refuse_status = 400 } }
--   local doc, status, body, headers = validate.body(req, S)
--   if not doc then return status, body, headers end
--
-- Field options: type ("string" | "integer" | "number" | "boolean" | "object" | "array"), required,
-- nullable (JSON null allowed: the field comes back as json.null), min_len / max_len (code
-- points), min / max, enum, format ("email"), pattern (Lua pattern), trim, fields (a nested
-- schema for objects), items (the rule of each element of an array; errors name "tags[2]"),
-- min_items / max_items, refuse_status (400 instead of 422 when the value is refused: a role a
-- client may not choose is a forbidden field, not a typo). Strings must be valid UTF-8
-- without NUL. Only fields named in the schema come back: no mass assignment.
local json = require "json"
local problem = require "lib.problem"

local _M = {}

local byte, find, sub, gsub, match = string.byte, string.find, string.sub, string.gsub, string.match

-- Number of code points of s if it is valid UTF-8 (no overlongs, surrogates or > U+10FFFF),
-- else nil.
function _M.utf8_len(s)
  local i, n, len = 1, 0, #s
  while i <= len do
    local c = byte(s, i)
    local extra, min
    if c < 0x80 then extra, min = 0, 0
    elseif c >= 0xC2 and c <= 0xDF then extra, min = 1, 0x80
    elseif c >= 0xE0 and c <= 0xEF then extra, min = 2, 0x800
    elseif c >= 0xF0 and c <= 0xF4 then extra, min = 3, 0x10000
    else return nil end
    if i + extra > len then return nil end
    local cp = extra == 0 and c or c % (2 ^ (6 - extra))
    for k = 1, extra do
      local cc = byte(s, i + k)
      if cc < 0x80 or cc > 0xBF then return nil end
      cp = cp * 64 + (cc - 0x80)
    end
    if cp < min or cp > 0x10FFFF or (cp >= 0xD800 and cp <= 0xDFFF) then return nil end
    i = i + extra + 1
    n = n + 1
  end
  return n
end

-- A pragmatic address check: one @, a local part of printable ASCII without specials, a
-- domain of dot-separated labels with at least one dot. Not RFC 5322's full grammar.
function _M.is_email(s)
  if #s > 254 or find(s, "[%c%s]") then return false end
  local local_part, domain = match(s, "^([^@]+)@([^@]+)$")
  if not local_part or #local_part > 64 then return false end
  if find(local_part, '[%(%)<>,;:\\"%[%]]') or sub(local_part, 1, 1) == "." or sub(local_part, -1) == "."
    or find(local_part, "%.%.", 1) then return false end
  if not find(domain, ".", 1, true) or #domain > 253 then return false end
  for label in (domain .. "."):gmatch("([^.]*)%.") do
    if label == "" or #label > 63 or not match(label, "^[%w-]+$") or sub(label, 1, 1) == "-" or sub(label, -1) == "-" then
      return false
    end
  end
  return match(domain, "%.(%a%a+)$") ~= nil
end

local function is_integer(v) return type(v) == "number" and v == math.floor(v) and v > -2 ^ 53 and v < 2 ^ 53 end

local check_object

-- Check one value against its rule; returns the cleaned value, or nil, message, status.
local function check_value(v, rule, path, errors)
  if v == json.null then
    if rule.nullable then return json.null end
    return nil, "must not be null"
  end
  local t = rule.type
  if t == "string" then
    if type(v) ~= "string" then return nil, "must be a string" end
    if find(v, "\0", 1, true) then return nil, "must not contain NUL characters" end
    local n = _M.utf8_len(v)
    if not n then return nil, "must be valid UTF-8" end
    if rule.trim then
      v = gsub(gsub(v, "^%s+", ""), "%s+$", "")
      n = _M.utf8_len(v)
    end
    if rule.min_len and n < rule.min_len then
      return nil, rule.min_len == 1 and "must not be empty" or ("must be at least " .. rule.min_len .. " characters")
    end
    if rule.max_len and n > rule.max_len then return nil, "must be at most " .. rule.max_len .. " characters" end
    if rule.format == "email" and not _M.is_email(v) then return nil, "must be an email address" end
    if rule.pattern and not find(v, rule.pattern) then return nil, rule.pattern_message or "has an invalid format" end
  elseif t == "integer" or t == "number" then
    if type(v) ~= "number" or v ~= v then return nil, "must be a number" end
    if t == "integer" and not is_integer(v) then return nil, "must be an integer" end
    if rule.min and v < rule.min then return nil, "must be >= " .. rule.min end
    if rule.max and v > rule.max then return nil, "must be <= " .. rule.max end
  elseif t == "boolean" then
    if type(v) ~= "boolean" then return nil, "must be true or false" end
  elseif t == "array" then
    if type(v) ~= "table" or not json.is_array(v) or (next(v) == nil and not getmetatable(v)) then
      return nil, "must be an array"
    end
    if rule.min_items and #v < rule.min_items then return nil, "must have at least " .. rule.min_items .. " items" end
    if rule.max_items and #v > rule.max_items then return nil, "must have at most " .. rule.max_items .. " items" end
    if rule.items then
      local out, failed = json.array({}), false
      for i = 1, #v do
        local clean, msg = check_value(v[i], rule.items, path .. "[" .. (i - 1) .. "]", errors)
        if msg then
          errors[#errors + 1] = { field = path .. "[" .. (i - 1) .. "]", message = msg }
          failed = true
        else
          out[i] = clean
        end
      end
      if failed then return nil, nil, 422 end
      return out
    end
  elseif t == "object" then
    if type(v) ~= "table" or getmetatable(v) or (json.is_array(v) and next(v) ~= nil) then return nil, "must be an object" end
    if rule.fields then
      local out, status = check_object(v, rule.fields, path .. ".", errors)
      return out, nil, status
    end
  end
  if rule.enum then
    local ok = false
    for _, e in ipairs(rule.enum) do if v == e then ok = true break end end
    if not ok then
      return nil, "must be one of: " .. table.concat(rule.enum, ", "), rule.refuse_status
    end
  end
  return v
end

-- Check doc (a decoded JSON object) against schema; errors appended. Returns the cleaned
-- object and the status the errors call for (400 beats 422; nil when none).
check_object = function(doc, schema, prefix, errors)
  local out, status = {}, nil
  local function fail(field, message, st)
    errors[#errors + 1] = { field = field, message = message }
    st = st or 422
    if not status or st < status then status = st end
  end
  for k in pairs(doc) do
    if type(k) ~= "string" or not schema[k] then fail(prefix .. tostring(k), "is not an allowed field", 400) end
  end
  local names = {}
  for k in pairs(schema) do names[#names + 1] = k end
  table.sort(names)
  for _, k in ipairs(names) do
    local rule, v = schema[k], doc[k]
    if v == nil then
      if rule.required then fail(prefix .. k, "is required") end
    else
      local clean, msg, st = check_value(v, rule, prefix .. k, errors)
      if msg then fail(prefix .. k, msg, st)
      elseif st then if not status or st < status then status = st end
      else out[k] = clean end
    end
  end
  return out, status
end

-- validate.object(doc, schema) → cleaned | nil, status, errors.
function _M.object(doc, schema)
  if type(doc) ~= "table" or (json.is_array(doc) and next(doc) ~= nil) or getmetatable(doc) then
    return nil, 400, { { field = "", message = "the body must be a JSON object" } }
  end
  local errors = {}
  local out, status = check_object(doc, schema, "", errors)
  if #errors > 0 then return nil, status or 422, errors end
  return out
end

-- Whether the request says its body is JSON (application/json or any +json type).
function _M.is_json(req)
  local ct = (req:header("Content-Type") or ""):lower()
  local mt = match(ct, "^%s*([^;%s]+)")
  return mt == "application/json" or (mt ~= nil and find(mt, "^application/[%w.%-]+%+json$") ~= nil)
end

-- validate.body(req, schema[, opts]) → cleaned | nil, status, body, headers (a problem).
-- opts.optional: an empty body (any content type) counts as {}.
function _M.body(req, schema, opts)
  local raw = req.body
  if raw == "" and opts and opts.optional then return {} end
  if not _M.is_json(req) then return nil, problem.unsupported_media_type("application/json") end
  local doc, err = req:json()
  if doc == nil then return nil, problem.bad_request(err) end
  local out, status, errors = _M.object(doc, schema)
  if not out then
    if status == 400 then
      return nil, problem.bad_request(errors[1].field == "" and "The request body must be a JSON object."
        or "The request body has fields that are not allowed.", errors)
    end
    return nil, problem.validation(errors)
  end
  return out
end

-- validate.empty(req) → true | nil, status, body, headers: the body of an action that takes
-- no document (cancel, deliver, commit, retry...) — empty or {}; any field is 400, so nothing
-- can be assigned through it (CONTRACT §3).
local NO_FIELDS = {}
function _M.empty(req)
  local doc, status, body, headers = _M.body(req, NO_FIELDS, { optional = true })
  if not doc then return nil, status, body, headers end
  return true
end

local unescape = require("mercato.form").unescape   -- the host's decoder (host/lua/prelude.lua)

-- validate.form(body) → table of application/x-www-form-urlencoded parameters, or nil, why and
-- "encoding" when a name or value is not UTF-8 once decoded, or nil, why and "repeated" for a
-- parameter given twice (RFC 6749 §3.1: parameters MUST NOT repeat). `why` never quotes bytes
-- that are not UTF-8.
function _M.form(body)
  local out = {}
  for pair in (body or ""):gmatch("[^&]+") do
    local k, v = pair:match("^([^=]*)=?(.*)$")
    k, v = unescape(k), unescape(v)
    if not _M.utf8_len(k) or not _M.utf8_len(v) then return nil, "the form is not valid UTF-8", "encoding" end
    if k ~= "" then
      if out[k] ~= nil then return nil, "parameter " .. k .. " is repeated", "repeated" end
      out[k] = v
    end
  end
  return out
end

return _M
