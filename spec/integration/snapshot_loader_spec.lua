-- A service's Lua comes from its snapshot only (the scripts compiled and checked at start-up or
-- hot reload): `require` in a handler or a runner cannot reach a Lua file on package.path
-- (KNOWN: the filesystem loaders were kept, so a module could bypass the snapshot). C modules
-- of the system (cjson) still load, and `mercato lua` keeps package.path for scripts and specs.
local http = require "http"
local server = require "support.server"

local function sh(cmd)
  local p = assert(io.popen(cmd .. " 2>&1"))
  local out = p:read("*a")
  p:close()
  return out
end

local function write(path, text)
  local f = assert(io.open(path, "w"))
  f:write(text)
  f:close()
end

describe("the snapshot is the only source of a service's Lua", function()
  local dir, outside

  setup(function()
    dir = sh("mktemp -d /tmp/mercato-loader-spec.XXXXXX"):match("%S+")
    outside = sh("mktemp -d /tmp/mercato-loader-outside.XXXXXX"):match("%S+")
    sh("mkdir -p " .. dir .. "/services/product " .. dir .. "/lib")
    write(outside .. "/probe_outside.lua", "return { outside = true }\n")
    write(dir .. "/services/product/routes.lua", [[
local function probe()
  local ok, m = pcall(require, "probe_outside")
  local cj = pcall(require, "cjson.safe")
  return 200, { outside = ok and type(m) == "table" and m.outside == true, cjson = cj }
end
return { { "GET", "/probe", probe } }
]])
  end)
  teardown(function() sh("rm -rf " .. dir .. " " .. outside) end)

  it("refuses a module that is only on package.path, in a handler", function()
    local srv = server.start { service = "product", scripts = dir, env = { LUA_PATH = outside .. "/?.lua;;" } }
    local res = http.request { method = "GET", url = "http://127.0.0.1:" .. srv.port .. "/probe" }
    srv:stop()
    assert.equal(200, res.status)
    assert.matches('"outside":false', res.body, 1, true)
    assert.matches('"cjson":true', res.body, 1, true)
  end)

  it("keeps package.path for `mercato lua`", function()
    write(outside .. "/main.lua", 'print(require("probe_outside").outside)\n')
    local out = sh(("cd %s && LUA_PATH='%s/?.lua;;' %s/%s lua main.lua"):format(outside, outside, os.getenv("PWD"),
      os.getenv("MERCATO_BIN") or "build/mercato"))
    assert.matches("true", out)
  end)
end)
