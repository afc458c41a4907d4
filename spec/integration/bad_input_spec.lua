-- Invalid UTF-8 in every place a client can put text, on every route of every service and
-- through the gateway: never a 5xx, always an RFC 9457 problem document.
--
-- Generated, not written by hand: the routes come from each service's routes.lua (loaded in a
-- sandbox whose `require` hands back stand-ins, so no handler runs here), the field and query
-- names of a route from its service's openapi.json when the route is documented there, else
-- every field name of the service's schema.lua plus a few common ones. A new route is covered
-- the day it is added to routes.lua. BAD_INPUT_TRACE=1 prints every answer's status on stderr.
--   . <(scripts/dev/stack.sh env); build/mercato lua spec/support/busted.lua spec/integration/bad_input_spec.lua
local cjson = require "cjson.safe"
local crypto = require "crypto"
local raw = require "support.raw_http"
local server = require "support.server"
local U = require "support.user_helpers"
local P = require "support.product_helpers"

-- Byte strings that are not UTF-8: a lone continuation-range byte, an overlong '/', a UTF-16
-- surrogate, a code point past U+10FFFF, a sequence cut short.
local BAD = { "\255", "\192\175", "\237\160\128", "\244\144\128\128", "\226\130" }
local BAD_BODY = { BAD[1], BAD[3] }   -- fewer per body position: the decoder sees all of them the same way

local function pct(s) return (s:gsub("[^%w%-%._~]", function(c) return ("%%%02X"):format(c:byte()) end)) end

-- ---- the route tables -------------------------------------------------------------------------

-- A value that is anything a routes.lua may ask of a module: a table of itself, callable.
local stand_in_mt = {}
stand_in_mt.__index = function(t, k) local v = setmetatable({}, stand_in_mt); rawset(t, k, v); return v end
stand_in_mt.__call = function() return nil end

local function sandboxed(path)
  local chunk = loadfile(path)
  if not chunk then return nil end
  setfenv(chunk, setmetatable({ require = function() return setmetatable({}, stand_in_mt) end }, { __index = _G }))
  local ok, v = pcall(chunk)
  return ok and v or nil
end

local function services()
  local out = {}
  local p = assert(io.popen("ls scripts/services"))
  for name in p:lines() do
    local routes = sandboxed("scripts/services/" .. name .. "/routes.lua")
    if routes then out[#out + 1] = { name = name, routes = routes } end
  end
  p:close()
  return out
end

-- Every field name of a lib.validate schema module (nested `fields` too).
local function schema_fields(schema, names)
  names = names or {}
  if type(schema) ~= "table" then return names end
  for k, v in pairs(schema) do
    if type(v) == "table" and type(k) == "string" then
      if rawget(v, "type") then names[k] = true end
      schema_fields(rawget(v, "fields") or v, names)
    end
  end
  return names
end

local function read_json(path)
  local f = io.open(path)
  if not f then return nil end
  local doc = cjson.decode(f:read("*a"))
  f:close()
  return doc
end

local function resolve(doc, s)
  while type(s) == "table" and s["$ref"] do
    local node = doc
    for part in s["$ref"]:gsub("^#/", ""):gmatch("[^/]+") do node = node and node[part] end
    s = node
  end
  return s
end

-- The property names of a JSON schema, with nested objects' names as well (flat set).
local function properties(doc, s, names)
  s = resolve(doc, s)
  if type(s) ~= "table" then return names end
  for k, v in pairs(s.properties or {}) do
    names[k] = true
    properties(doc, v, names)
  end
  if s.items then properties(doc, s.items, names) end
  return names
end

-- What a route takes: { json = {names}, form = {names}, query = {names} }, from OpenAPI when
-- documented, else the service's schema field names (as JSON and as a form) and common names.
local function inputs(svc, route)
  local doc = svc.openapi
  local op = doc and doc.paths and doc.paths[route[2]] and doc.paths[route[2]][route[1]:lower()]
  local query = { limit = true, cursor = true, q = true }
  if not op then
    return { json = svc.fields, form = svc.fields, query = query }
  end
  for _, prm in ipairs(op.parameters or {}) do
    prm = resolve(doc, prm)
    if prm and prm["in"] == "query" then query[prm.name] = true end
  end
  local content = op.requestBody and op.requestBody.content or {}
  local out = { query = query }
  if content["application/json"] then out.json = properties(doc, content["application/json"].schema, {}) end
  if content["application/x-www-form-urlencoded"] then
    out.form = properties(doc, content["application/x-www-form-urlencoded"].schema, {})
  end
  return out
end

-- ---- the requests -----------------------------------------------------------------------------

local function path_with(pattern, bad_param, bad)
  return (pattern:gsub("{([%w_]+)%*?}", function(name)
    if name == bad_param then return pct(bad) end
    return crypto.uuid4()
  end))
end

local function json_string(bytes) return '"' .. bytes .. '"' end

-- Every request for one route: { method, path, ctype, body, what }.
local function requests(svc, route)
  local method, pattern = route[1], route[2]
  local input = inputs(svc, route)
  local out = {}
  local function add(path, ctype, body, what) out[#out + 1] = { method, path, ctype, body, what } end
  for name in pattern:gmatch("{([%w_]+)%*?}") do
    for i, b in ipairs(BAD) do add(path_with(pattern, name, b), nil, nil, "path parameter " .. name .. " #" .. i) end
  end
  local base = path_with(pattern)
  for i, b in ipairs(BAD) do add(base .. "?" .. pct(b) .. "=1", nil, nil, "query name #" .. i) end
  for name in pairs(input.query) do
    for i, b in ipairs(BAD) do add(base .. "?" .. name .. "=" .. pct(b), nil, nil, "query value " .. name .. " #" .. i) end
  end
  if method ~= "POST" and method ~= "PUT" and method ~= "PATCH" then return out end
  local json_names, form_names = input.json or {}, input.form or {}
  if input.json or not input.form then
    for i, b in ipairs(BAD) do add(base, "application/json", "{" .. json_string(b) .. ":1}", "JSON key #" .. i) end
    local all = {}
    for name in pairs(json_names) do
      for i, b in ipairs(BAD_BODY) do
        local s = json_string(b)
        add(base, "application/json", ('{"%s":%s}'):format(name, s), "JSON value " .. name .. " #" .. i)
        add(base, "application/json", ('{"%s":[%s]}'):format(name, s), "JSON array item " .. name .. " #" .. i)
        add(base, "application/json", ('{"%s":{%s:%s}}'):format(name, s, s), "JSON nested object " .. name .. " #" .. i)
      end
      all[#all + 1] = ('"%s":"x%sy"'):format(name, BAD[1])
    end
    if #all > 0 then add(base, "application/json", "{" .. table.concat(all, ",") .. "}", "JSON, every value") end
  end
  if input.form or not input.json then
    for i, b in ipairs(BAD) do add(base, "application/x-www-form-urlencoded", pct(b) .. "=1", "form field name #" .. i) end
    for name in pairs(form_names) do
      for i, b in ipairs(BAD_BODY) do
        add(base, "application/x-www-form-urlencoded", name .. "=" .. pct(b), "form field " .. name .. " #" .. i)
      end
    end
  end
  return out
end

-- ---- sending and judging ------------------------------------------------------------------------

-- Send r to port with the token; → nil when the answer is a problem document under 500, else
-- a line saying what was wrong.
local function judge(port, r, token, label)
  local headers = { ["Content-Type"] = r[3] }
  if token then headers.Authorization = "Bearer " .. token end
  local res, err = raw.request(port, r[1], r[2], { headers = headers, body = r[4], timeout = 10 })
  local where = ("%s %s %s (%s)"):format(label, r[1], r[2], r[5])
  if not res then return where .. ": no answer: " .. tostring(err) end
  if os.getenv("BAD_INPUT_TRACE") then io.stderr:write(("%d %s\n"):format(res.status, where)) end
  local doc = cjson.decode(res.body)
  if res.status >= 500 then return where .. (": %d %s"):format(res.status, res.body:sub(1, 200)) end
  if res.headers["content-type"] ~= "application/problem+json" or type(doc) ~= "table" or doc.status ~= res.status
     or type(doc.title) ~= "string" then
    return where .. (": %d is not a problem document (%s): %s"):format(res.status, tostring(res.headers["content-type"]),
      res.body:sub(1, 200))
  end
  return nil
end

-- The token a route asks for, or nil.
local function token_for(svc, route)
  local roles, scope = route.roles, route.scope
  if not roles and not scope and not route.auth then return nil end
  local role = "buyer"
  if type(roles) == "table" then
    role = roles[1]
    for _, r in ipairs(roles) do if r == "admin" then role = "admin" end end
  end
  return svc.token(role, scope)
end

local starters = {
  user = function()
    local srv = U.start()
    local buyer = U.session(srv).access
    local admin = U.admin(srv)
    srv.token = function(role) return role == "admin" and admin or buyer end
    srv.close = function() return U.stop(srv) end
    return srv
  end,
  product = function()
    local srv = P.start()
    srv.token = function(role, scope) return (P.token(scope and "service" or role, nil, scope and { scope = scope } or nil)) end
    srv.close = function() return P.stop(srv) end
    return srv
  end,
  payment = function()
    local env = require("support.payment_helpers").start()
    local srv = env.svc
    srv.token = function(role, scope) return (P.token(scope and "service" or role, nil, scope and { scope = scope } or nil)) end
    srv.close = function() return require("support.payment_helpers").stop(env) end
    return srv
  end,
  order = function()   -- with its user and product services: real tokens from the real JWKS
    local O = require "support.order_helpers"
    local w = O.start()
    local buyer, admin = O.buyer(w).token, O.admin(w).token
    local srv = w.order
    srv.token = function(role) return role == "admin" and admin or buyer end
    srv.close = function() return O.stop(w) end
    return srv
  end,
  notification = function()
    local N = require "support.notification_helpers"
    local srv = N.start()
    srv.token = function(role, scope) return (P.token(scope and "service" or role, nil, scope and { scope = scope } or nil)) end
    srv.close = function() return N.stop(srv) end
    return srv
  end,
}

describe("invalid UTF-8 from a client", function()
  local svcs, running, gateway = services(), {}, nil

  setup(function()
    local env = { SERVICE = "gateway", RATE_LIMIT_GLOBAL = "1000000/min" }
    for _, svc in ipairs(svcs) do
      local start = starters[svc.name]
      assert(start, "bad_input_spec has no way to start the " .. svc.name .. " service: add one to `starters`")
      svc.openapi = read_json("scripts/services/" .. svc.name .. "/openapi.json")
      svc.fields = schema_fields(sandboxed("scripts/services/" .. svc.name .. "/schema.lua"),
                                 { name = true, id = true, email = true, token = true })
      svc.srv = start()
      running[#running + 1] = svc.srv
      env[svc.name:upper() .. "_SERVICE_URL"] = svc.srv.url
    end
    gateway = server.start { service = "gateway", scripts = "scripts", env = env }
  end)

  teardown(function()
    if gateway then assert.equal(0, gateway:stop()) end
    for _, srv in ipairs(running) do srv.close() end
  end)

  it("finds the services and their routes", function()
    local names = {}
    for _, svc in ipairs(svcs) do names[#names + 1] = svc.name; assert.is_true(#svc.routes > 0) end
    table.sort(names)
    assert.same({ "notification", "order", "payment", "product", "user" }, names)
  end)

  it("never gets a 5xx, and every answer is a problem document, from every service and the gateway", function()
    local failures, sent = {}, 0
    for _, svc in ipairs(svcs) do
      for _, route in ipairs(svc.routes) do
        local token = token_for(svc.srv, route)
        for _, r in ipairs(requests(svc, route)) do
          for _, target in ipairs { { svc.srv.port, svc.name }, { gateway.port, "gateway→" .. svc.name } } do
            sent = sent + 1
            local why = judge(target[1], r, token, target[2])
            if why then failures[#failures + 1] = why end
          end
        end
      end
    end
    assert.is_true(sent > 1000, "only " .. sent .. " requests were generated")
    assert.equal(0, #failures, ("%d of %d answers were wrong; the first ones:\n%s"):format(#failures, sent,
      table.concat(failures, "\n", 1, math.min(#failures, 25))))
  end)
end)
