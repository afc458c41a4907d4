-- spec/deploy/env_spec.lua: the chart against the README's configuration table (issue 16) —
-- every variable the services read is set by the chart or deliberately left at its default
-- (values.yaml defaultedEnv), each service gets what its requires.lua names, every secret
-- comes from a Secret, and the service URLs name Services that exist. The table is read from
-- README.md, so variables other branches add there are checked when they merge.
--   build/mercato lua spec/support/busted.lua -o TAP spec/deploy/env_spec.lua
local D = require "support.deploy_helpers"

-- What the chart sets anywhere: name → true (Deployments' env and their ConfigMaps).
local function chart_env(objects)
  local set = {}
  for _, d in ipairs(D.of_kind(objects, "Deployment")) do
    for name in pairs(D.container_env(objects, d)) do set[name] = true end
  end
  return set
end

describe("the chart's environment", function()
  local readme, documented

  setup(function()
    readme = D.readme_env()
    documented = {}
    for _, v in ipairs(readme) do documented[v.name] = v end
  end)

  it("reads a README table that names the variables of CONTRACT §2", function()
    assert.is_true(#readme >= 40, #readme .. " variables")
    for _, name in ipairs { "SERVICE", "PORT", "DATABASE_URL", "REDIS_URL", "AMQP_URL", "USER_SERVICE_URL",
                            "NOTIFICATION_SERVICE_URL", "JWKS_URL", "STRIPE_API_KEY", "S3_SECRET_KEY", "SMTP_URL" } do
      assert.truthy(documented[name], name)
    end
  end)

  for variant, files in pairs(D.VARIANTS) do
    describe("with the " .. variant .. " values", function()
      local objects, values, set
      setup(function()
        objects = D.render(files)
        values = D.values(files)
        set = chart_env(objects)
      end)

      it("sets every variable of the README's table or leaves it at its default on purpose", function()
        local defaulted, missing = {}, {}
        for _, name in ipairs(values.defaultedEnv) do defaulted[name] = true end
        for _, v in ipairs(readme) do
          if not set[v.name] and not defaulted[v.name] then missing[#missing + 1] = v.name end
        end
        assert.same({}, missing)
      end)

      it("leaves at their default no variable the README calls required", function()
        for _, name in ipairs(values.defaultedEnv) do
          local v = documented[name]
          if v then
            assert.is_nil(v.default:match("^—%s*%(required"), name .. " is required (" .. v.default .. "): the chart must set it")
          end
        end
      end)

      -- defaultedEnv may name variables of services still being merged; once documented, they
      -- are checked above. Until then they are reported here (pending), never silently kept.
      it("names in defaultedEnv only variables the README documents (pending until merged)", function()
        local undocumented = {}
        for _, name in ipairs(values.defaultedEnv) do
          if not documented[name] then undocumented[#undocumented + 1] = name end
        end
        if #undocumented > 0 then pending("not in the README's table yet: " .. table.concat(undocumented, ", ")) end
      end)

      it("sets no variable the README does not document", function()
        local unknown = {}
        for name in pairs(set) do if not documented[name] then unknown[#unknown + 1] = name end end
        table.sort(unknown)
        assert.same({}, unknown)
      end)

      it("gives each service what its requires.lua says it cannot start without", function()
        for _, svc in ipairs(D.SERVICES) do
          local env = D.container_env(objects, D.of_kind(objects, "Deployment", svc)[1])
          for _, alternatives in ipairs(D.requires(svc)) do
            local ok = false
            for _, name in ipairs(alternatives) do if env[name] then ok = true end end
            assert.is_true(ok, svc .. " needs " .. table.concat(alternatives, " or "))
          end
        end
      end)

      it("takes every secret from a Secret, never from a value or a ConfigMap", function()
        local checked = 0
        for _, d in ipairs(D.of_kind(objects, "Deployment")) do
          for name, e in pairs(D.container_env(objects, d)) do
            if D.is_secret(name) then
              checked = checked + 1
              assert.truthy(e.secret, d.metadata.name .. ": " .. name .. " is not from a Secret")
              assert.equal(values.existingSecret, e.secret.name)
            end
          end
        end
        for _, j in ipairs(D.of_kind(objects, "Job")) do
          for _, e in ipairs(j.spec.template.spec.containers[1].env) do
            if D.is_secret(e.name) then assert.truthy(e.valueFrom and e.valueFrom.secretKeyRef, e.name) end
          end
        end
        for _, cm in ipairs(D.of_kind(objects, "ConfigMap")) do
          for k, v in pairs(cm.data or {}) do
            if k:match("^[A-Z][A-Z0-9_]*$") then
              assert.is_falsy(D.is_secret(k), cm.metadata.name .. " holds " .. k)
              assert.is_nil(v:match("://[^/@]*:[^/@]*@"), cm.metadata.name .. ": " .. k .. " carries credentials")
            end
          end
        end
        assert.is_true(checked >= 25, "only " .. checked .. " secret variables seen")
      end)

      it("mounts the user service's signing key from a Secret where JWT_PRIVATE_KEY_FILE points", function()
        local d = D.of_kind(objects, "Deployment", "user")[1]
        local env = D.container_env(objects, d)
        local path = env.JWT_PRIVATE_KEY_FILE.value
        local mount
        for _, m in ipairs(d.spec.template.spec.containers[1].volumeMounts) do
          if path:sub(1, #m.mountPath + 1) == m.mountPath .. "/" then mount = m end
        end
        assert.truthy(mount, path)
        for _, v in ipairs(d.spec.template.spec.volumes) do
          if v.name == mount.name then assert.equal(values.jwt.existingSecret, v.secret.secretName) end
        end
        for _, svc in ipairs { "product", "order", "payment", "notification" } do
          local e = D.container_env(objects, D.of_kind(objects, "Deployment", svc)[1])
          assert.equal("http://mercato-user:8081/.well-known/jwks.json", e.JWKS_URL.value, svc)
          assert.is_nil(e.JWT_PRIVATE_KEY_FILE, svc .. " must not hold the signing key")
        end
      end)

      it("points every *_SERVICE_URL at a Service of the release on its port", function()
        local services = {}
        for _, s in ipairs(D.of_kind(objects, "Service")) do services[s.metadata.name] = s.spec.ports[1].port end
        for _, d in ipairs(D.of_kind(objects, "Deployment")) do
          for name, e in pairs(D.container_env(objects, d)) do
            if name:match("_SERVICE_URL$") then
              local host, port = e.value:match("^http://([^:/]+):(%d+)$")
              assert.truthy(host, name .. "=" .. tostring(e.value))
              assert.equal(services[host], tonumber(port), name)
            end
          end
        end
      end)
    end)
  end
end)
