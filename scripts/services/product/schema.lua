-- scripts/services/product/schema.lua: what the product service accepts (lib.validate schemas,
-- luacheck: max line length 170
-- plus the checks lib.validate has no rule for: tag lists and ISO 4217 codes).
local json = require "json"

local _M = {}

_M.MAX_PRICE_CENTS = 100000000       -- 1,000,000.00 in any currency: above is a typo, not a price
_M.MAX_STOCK = 1000000               -- create and inventory PUT alike (0 is an out-of-stock listing)
_M.MAX_TAGS, _M.MAX_TAG_LEN = 20, 40

-- ISO 4217 active codes (2024), lower case as CONTRACT §3 writes money.
local ISO4217 = {}
for c in ([[aed afn all amd ang aoa ars aud awg azn bam bbd bdt bgn bhd bif bmd bnd bob bov brl bsd
  btn bwp byn bzd cad cdf che chf chw clf clp cny cop cou crc cuc cup cve czk djf dkk dop dzd egp ern
  etb eur fjd fkp gbp gel ghs gip gmd gnf gtq gyd hkd hnl htg huf idr ils inr iqd irr isk jmd jod jpy
  kes kgs khr kmf kpw krw kwd kyd kzt lak lbp lkr lrd lsl lyd mad mdl mga mkd mmk mnt mop mru mur mvr
  mwk mxn mxv myr mzn nad ngn nio nok npr nzd omr pab pen pgk php pkr pln pyg qar ron rsd rub rwf sar
  sbd scr sdg sek sgd shp sle sll sos srd ssp stn svc syp szl thb tjs tmt tnd top try ttd twd tzs uah
  ugx usd usn uyi uyu uyw uzs ved ves vnd vuv wst xaf xcd xof xpf yer zar zmw zwl]]):gmatch("%a+") do
  ISO4217[c] = true
end
function _M.is_currency(c) return type(c) == "string" and ISO4217[c] == true end

local currency = { type = "string", pattern = "^%l%l%l$", pattern_message = "must be a lower-case ISO 4217 code such as eur" }
local name = { type = "string", min_len = 1, max_len = 200, trim = true }
local description = { type = "string", max_len = 5000, trim = true }
local price = { type = "integer", min = 0, max = _M.MAX_PRICE_CENTS }
local uuid_or_null = { type = "string", nullable = true, pattern = "^%x+%-%x+%-%x+%-%x+%-%x+$", pattern_message = "must be a category id" }
local tags = { type = "array" }      -- shape checked by _M.tags below (lib.validate has no arrays)

_M.product_create = {
  name = { type = "string", required = true, min_len = 1, max_len = 200, trim = true },
  description = description,
  price_cents = { type = "integer", required = true, min = 0, max = _M.MAX_PRICE_CENTS },
  currency = { type = "string", required = true, pattern = currency.pattern, pattern_message = currency.pattern_message },
  category_id = uuid_or_null,
  tags = tags,
  stock = { type = "integer", required = true, min = 0, max = _M.MAX_STOCK },
}

_M.product_patch = {
  name = name, description = description, price_cents = price, currency = currency,
  category_id = uuid_or_null, tags = tags,
}

local slug = { type = "string", min_len = 1, max_len = 64, pattern = "^[a-z0-9]+[a-z0-9%-]*$",
               pattern_message = "must be lower-case letters, digits and hyphens, such as home-garden" }

_M.category_create = {
  slug = slug,   -- derived from the name when absent (handlers.categories)
  name = { type = "string", required = true, min_len = 1, max_len = 100, trim = true },
  parent_id = uuid_or_null,
}

_M.category_patch = {
  slug = slug,
  name = { type = "string", min_len = 1, max_len = 100, trim = true },
  parent_id = uuid_or_null,
}

local function utf8_lower_trim(s)
  return (s:lower():gsub("^%s+", ""):gsub("%s+$", ""):gsub("%s+", " "))
end

-- One tag, normalised (trimmed, inner blanks collapsed, lower case), or nil, why.
function _M.tag(v)
  if type(v) ~= "string" then return nil, "must be a string" end
  if v:find("[%z\1-\31\127]") then return nil, "must not contain control characters" end
  local t = utf8_lower_trim(v)
  if t == "" then return nil, "must not be empty" end
  if #t > _M.MAX_TAG_LEN then return nil, "must be at most " .. _M.MAX_TAG_LEN .. " characters" end
  if t:find("[,;\"'<>{}\\]") then return nil, "must not contain , ; quotes, braces or angle brackets" end
  return t
end

-- A tags value → the normalised, de-duplicated list (order kept), or nil, errors.
function _M.tags(v)
  if type(v) ~= "table" or not json.is_array(v) then
    return nil, { { field = "tags", message = "must be an array of strings" } }
  end
  local out, seen, errors = json.array({}), {}, {}
  for i, raw in ipairs(v) do
    local t, why = _M.tag(raw)
    if not t then errors[#errors + 1] = { field = ("tags[%d]"):format(i - 1), message = why }
    elseif not seen[t] then seen[t] = true; out[#out + 1] = t end
  end
  if #errors == 0 and #out > _M.MAX_TAGS then
    errors[1] = { field = "tags", message = "must hold at most " .. _M.MAX_TAGS .. " distinct tags" }
  end
  if #errors > 0 then return nil, errors end
  return out
end

-- The checks of a product document lib.validate cannot express; errors appended.
function _M.check_product(doc, errors)
  if doc.currency ~= nil and doc.currency:match("^%l%l%l$") and not _M.is_currency(doc.currency) then
    errors[#errors + 1] = { field = "currency", message = "is not an ISO 4217 currency code" }
  end
  if doc.tags ~= nil then
    local t, terrs = _M.tags(doc.tags)
    if t then doc.tags = t else for _, e in ipairs(terrs) do errors[#errors + 1] = e end end
  end
  return errors
end

return _M
