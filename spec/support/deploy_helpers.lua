-- spec/support/deploy_helpers.lua: what the offline deployment specs (spec/deploy/) share —
-- Helm through scripts/dev/helm.sh, YAML read by node's `yaml` (spec/support/deploy/*.js) into
-- cjson tables, the README's configuration table, and the rendered objects sorted by kind.
local cjson = require "cjson"

local M = {}

M.CHART = "helm/mercato"
M.SERVICES = { "gateway", "user", "product", "order", "payment", "notification" }
M.PORTS = { gateway = 8080, user = 8081, product = 8082, order = 8083, payment = 8084, notification = 8085 }

local function q(s) return "'" .. tostring(s):gsub("'", "'\\''") .. "'" end
M.q = q

-- Run a shell command; → its output (stdout and stderr) and exit status.
function M.sh(cmd)
  local p = assert(io.popen(cmd .. " 2>&1; echo \"rc=$?\""))
  local out = p:read("*a")
  p:close()
  local rc = tonumber(out:match("rc=(%d+)%s*$"))
  return (out:gsub("rc=%d+%s*$", "")), rc
end

function M.read(path)
  local f = assert(io.open(path, "rb"))
  local s = f:read("*a")
  f:close()
  return s
end

-- Every YAML document of the files (or of `text` when files is nil) as Lua tables.
function M.yaml(files, text)
  local cmd = "node spec/support/deploy/yaml2json.js"
  if files then
    for _, f in ipairs(files) do cmd = cmd .. " " .. q(f) end
  else
    local tmp = os.tmpname()
    local f = assert(io.open(tmp, "w"))
    f:write(text)
    f:close()
    cmd = cmd .. " " .. q(tmp)
    local out, rc = M.sh(cmd)
    os.remove(tmp)
    assert(rc == 0, "yaml2json: " .. out)
    return cjson.decode(out)
  end
  local out, rc = M.sh(cmd)
  assert(rc == 0, "yaml2json: " .. out)
  return cjson.decode(out)
end

-- `helm template` of the chart with these values files (after the defaults); → objects, text.
-- Kept under .run/test/deploy/, keyed by the chart's and the values files' content, so the
-- spec files of one run render each variant once.
local rendered = {}
function M.render(values_files)
  local key = table.concat(values_files or {}, ",")
  if rendered[key] then return rendered[key].objects, rendered[key].text end
  local files = q(M.CHART) .. " " .. table.concat(values_files or {}, " ")
  local sum = M.sh("find " .. files .. " -type f | LC_ALL=C sort | xargs sha256sum | sha256sum"):match("^%x+")
  local dir = ".run/test/deploy"
  local cached_text, cached_json = dir .. "/render-" .. sum .. ".yaml", dir .. "/render-" .. sum .. ".json"
  local f = io.open(cached_json)
  if f then
    local objects = cjson.decode(f:read("*a"))
    f:close()
    rendered[key] = { objects = objects, text = M.read(cached_text) }
    return objects, rendered[key].text
  end
  local cmd = "scripts/dev/helm.sh template mercato " .. M.CHART .. " --namespace mercato"
  for _, v in ipairs(values_files or {}) do cmd = cmd .. " -f " .. q(v) end
  -- stdout only: on a fresh checkout helm.sh installs helm first and says so on stderr, which
  -- would otherwise begin the YAML (and be cached with it)
  local err = os.tmpname()
  local text, rc = M.sh("(" .. cmd .. " 2>" .. q(err) .. ")")
  local log = M.read(err) or ""
  os.remove(err)
  assert(rc == 0, "helm template failed:\n" .. log .. text)
  local objects = M.yaml(nil, text)
  os.execute("mkdir -p " .. dir)
  for path, body in pairs { [cached_text] = text, [cached_json] = cjson.encode(objects) } do
    local tmp = path .. ".tmp"
    local out = assert(io.open(tmp, "w"))
    out:write(body)
    out:close()
    os.rename(tmp, path)
  end
  rendered[key] = { objects = objects, text = text }
  return objects, text
end

M.PRODUCTION = { M.CHART .. "/values-production.yaml" }
M.VARIANTS = { default = {}, production = M.PRODUCTION }

-- The objects of one kind; with component, only that service's.
function M.of_kind(objects, kind, component)
  local out = {}
  for _, o in ipairs(objects) do
    local labels = o.metadata and o.metadata.labels or {}
    if o.kind == kind and (not component or labels["app.kubernetes.io/component"] == component) then
      out[#out + 1] = o
    end
  end
  return out
end

-- The chart's values, merged like Helm does (maps deep, everything else replaced).
local function merge(into, from)
  for k, v in pairs(from) do
    if type(v) == "table" and type(into[k]) == "table" and next(v) ~= nil and #v == 0 and #into[k] == 0 then
      merge(into[k], v)
    else
      into[k] = v
    end
  end
  return into
end
function M.values(values_files)
  local v = M.yaml { M.CHART .. "/values.yaml" }[1]
  for _, f in ipairs(values_files or {}) do merge(v, M.yaml({ f })[1]) end
  return v
end

-- The README's configuration table: { {name=, default=, meaning=}, ... } in order. A row
-- naming `A_SERVICE_URL` … `B_SERVICE_URL` stands for every service's URL.
function M.readme_env()
  local text = M.read("README.md")
  local section = text:match("\n## Configuration\n(.-)\n## ") or text:match("\n## Configuration\n(.*)$")
  assert(section, "README.md has no '## Configuration' section")
  local vars = {}
  for line in section:gmatch("[^\n]+") do
    local first, default, meaning = line:match("^|%s*(.-)%s*|%s*(.-)%s*|%s*(.-)%s*|%s*$")
    if first and first:find("`", 1, true) then
      if first:find("_SERVICE_URL`%s*…") then
        for _, s in ipairs { "USER", "PRODUCT", "ORDER", "PAYMENT", "NOTIFICATION" } do
          vars[#vars + 1] = { name = s .. "_SERVICE_URL", default = default, meaning = meaning }
        end
      else
        for name in first:gmatch("`([A-Z][A-Z0-9_]*)`") do
          vars[#vars + 1] = { name = name, default = default, meaning = meaning }
        end
      end
      -- variables a row's meaning introduces (`S3_PUBLIC_URL sets ...`), with no default of their own
      for name in meaning:gmatch("`([A-Z][A-Z0-9_]+)`") do
        local seen = false
        for _, v in ipairs(vars) do if v.name == name then seen = true end end
        if not seen and not name:match("^SO_") and not section:find("\n|%s*`" .. name .. "`") then   -- SO_*: socket options
          local row = first:match("`([A-Z][A-Z0-9_]*)`") or "?"
          vars[#vars + 1] = { name = name, default = "(see " .. row .. ")", meaning = meaning }
        end
      end
    end
  end
  return vars
end

-- Variables a service cannot start without (scripts/services/<name>/requires.lua), as a list
-- of alternatives: { {"DATABASE_URL"}, {"JWKS_URL", "JWT_PUBLIC_KEY_FILE"} }.
function M.requires(service)
  local f = io.open("scripts/services/" .. service .. "/requires.lua")
  if not f then return {} end
  local chunk = assert(loadstring(f:read("*a")))
  f:close()
  local out = {}
  for _, r in ipairs(chunk()) do out[#out + 1] = type(r) == "table" and r or { r } end
  return out
end

-- Variables whose value is a secret: they must come from a Secret, never from a literal.
function M.is_secret(name)
  return name:find("SECRET", 1, true) or name:find("PASSWORD", 1, true) or name:match("_KEY$")
      or name == "DATABASE_URL" or name == "REDIS_URL" or name == "AMQP_URL" or name == "SMTP_URL"
end

-- The environment a Deployment's container gets: name → { value = s } | { secret = {name, key} }
-- | { configmap = name }, following envFrom into the rendered ConfigMaps.
function M.container_env(objects, deployment)
  local env = {}
  local c = deployment.spec.template.spec.containers[1]
  for _, from in ipairs(c.envFrom or {}) do
    local ref = from.configMapRef and from.configMapRef.name
    for _, cm in ipairs(M.of_kind(objects, "ConfigMap")) do
      if cm.metadata.name == ref then
        for k, v in pairs(cm.data or {}) do env[k] = { value = v, configmap = ref } end
      end
    end
  end
  for _, e in ipairs(c.env or {}) do
    if e.valueFrom and e.valueFrom.secretKeyRef then
      env[e.name] = { secret = e.valueFrom.secretKeyRef }
    elseif e.valueFrom then
      env[e.name] = { from = e.valueFrom }
    else
      env[e.name] = { value = e.value }
    end
  end
  return env
end

return M
