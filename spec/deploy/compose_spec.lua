-- spec/deploy/compose_spec.lua: docker-compose.yml without Docker (issue 16; `docker compose
-- config` is not available here) — each mercato service's image, env (against the README's
-- table and requires.lua), health check and health-gated dependencies, and the dependencies,
-- Prometheus and Grafana wiring that compose mounts from docker/ and helm/mercato/.
--   build/mercato lua spec/support/busted.lua -o TAP spec/deploy/compose_spec.lua
local D = require "support.deploy_helpers"

local P = D.PORTS
-- What each service's container needs healthy (or done) before it starts.
local NEEDS = {
  gateway = { "redis", "user", "product", "order", "payment", "notification" },
  user = { "postgres", "redis", "rabbitmq", "jwt-key" },
  product = { "postgres", "redis", "rabbitmq", "user", "elasticsearch", "minio-bucket" },
  order = { "postgres", "redis", "rabbitmq", "user", "product", "payment" },
  payment = { "postgres", "redis", "rabbitmq", "user", "stripe-mock" },
  notification = { "postgres", "redis", "rabbitmq", "user", "mailpit" },
}
local ONE_SHOT = { ["jwt-key"] = true, ["minio-bucket"] = true }   -- run once, then exit 0
local NO_SHELL = { ["stripe-mock"] = true }                        -- an image without a shell: started is all

describe("docker-compose.yml", function()
  local compose, svcs, documented

  setup(function()
    compose = D.yaml({ "docker-compose.yml" })[1]
    svcs = compose.services
    documented = {}
    for _, v in ipairs(D.readme_env()) do documented[v.name] = true end
  end)

  it("runs every dependency the platform uses, with a health check", function()
    for _, name in ipairs { "postgres", "redis", "rabbitmq", "elasticsearch", "minio", "mailpit", "prometheus", "grafana" } do
      assert.truthy(svcs[name], name)
    end
    for _, name in ipairs { "postgres", "redis", "rabbitmq", "elasticsearch", "minio", "mailpit" } do
      assert.truthy(svcs[name].healthcheck and svcs[name].healthcheck.test, name .. " has no health check")
    end
    assert.matches("management", svcs.rabbitmq.image, 1, true)
    assert.matches("rabbitmq_prometheus", D.read("docker/rabbitmq/enabled_plugins"), 1, true)
    assert.matches("stripe", svcs["stripe-mock"].image, 1, true)
  end)

  it("creates one PostgreSQL database per service and the product images bucket", function()
    local mounted
    for _, v in ipairs(svcs.postgres.volumes) do
      local src = type(v) == "string" and v:match("^%./(docker/postgres/[^:]+):/docker%-entrypoint%-initdb%.d/")
      mounted = mounted or src
    end
    assert.truthy(mounted, "no init script mounted into /docker-entrypoint-initdb.d")
    local script = D.read(mounted)
    assert.matches("for svc in user product order payment notification", script, 1, true)
    assert.matches("CREATE DATABASE mercato_$svc", script, 1, true)
    local out, rc = D.sh("bash -n " .. mounted)
    assert.equal(0, rc, out)
    local bucket = svcs.product.environment.S3_BUCKET
    assert.matches("mc mb --ignore-existing local/" .. bucket, svcs["minio-bucket"].command[1], 1, true)
  end)

  for _, name in ipairs(D.SERVICES) do
    describe("service " .. name, function()
      local s, env
      setup(function()
        s = svcs[name]
        env = s and s.environment or {}
      end)

      it("runs the one image with SERVICE=" .. name .. " on port " .. P[name], function()
        assert.truthy(s, name .. " is missing")
        assert.equal("mercato:local", s.image)
        assert.same({ context = ".", dockerfile = "docker/Dockerfile" }, s.build)
        assert.equal(name, env.SERVICE)
        assert.equal(tostring(P[name]), tostring(env.PORT))
      end)

      it("sets only variables the README documents, and what requires.lua needs", function()
        for k in pairs(env) do assert.truthy(documented[k], name .. ": " .. k .. " is not in the README's table") end
        for _, alternatives in ipairs(D.requires(name)) do
          local ok = false
          for _, v in ipairs(alternatives) do if env[v] and env[v] ~= "" then ok = true end end
          assert.is_true(ok, name .. " needs " .. table.concat(alternatives, " or "))
        end
        if name ~= "gateway" then
          assert.equal("postgresql://mercato:mercato@postgres:5432/mercato_" .. name, env.DATABASE_URL)
        end
        for _, other in ipairs { "user", "product", "order", "payment", "notification" } do
          assert.equal(("http://%s:%d"):format(other, P[other]), env[other:upper() .. "_SERVICE_URL"])
        end
        if name == "user" then
          assert.truthy(env.JWT_PRIVATE_KEY_FILE)
        elseif name ~= "gateway" then
          assert.equal("http://user:8081/.well-known/jwks.json", env.JWKS_URL)
        end
      end)

      it("is healthy only when /health answers, and starts after what it needs is healthy", function()
        assert.same({ "CMD", "/usr/local/bin/mercato-healthcheck" }, s.healthcheck.test)
        assert.truthy(s.healthcheck.start_period)
        local deps = {}
        for dep in pairs(s.depends_on) do deps[#deps + 1] = dep; assert.truthy(svcs[dep], dep) end
        table.sort(deps)
        local want = {}
        for _, d in ipairs(NEEDS[name]) do want[#want + 1] = d end
        table.sort(want)
        assert.same(want, deps)
        for dep, cond in pairs(s.depends_on) do
          local expect = ONE_SHOT[dep] and "service_completed_successfully" or NO_SHELL[dep] and "service_started"
            or "service_healthy"
          assert.equal(expect, cond.condition, name .. " → " .. dep)
          if expect == "service_healthy" then assert.truthy(svcs[dep].healthcheck, dep .. " has no health check") end
        end
      end)

      it("runs as a non-root user on a read-only root filesystem without capabilities", function()
        assert.is_true(s.read_only)
        assert.equal("10001:10001", s.user)
        assert.same({ "ALL" }, s.cap_drop)
        assert.same({ "/tmp" }, s.tmpfs)
      end)
    end)
  end

  it("points the product's S3 and search at MinIO and Elasticsearch, payment at the Stripe stand-in, mail at Mailpit", function()
    assert.equal("http://minio:9000", svcs.product.environment.S3_ENDPOINT)
    assert.equal("http://elasticsearch:9200", svcs.product.environment.ELASTICSEARCH_URL)
    assert.equal("http://stripe-mock:12111", svcs.payment.environment.STRIPE_API_BASE)
    assert.equal("smtp://mailpit:1025", svcs.notification.environment.SMTP_URL)
  end)

  it("has Prometheus scrape every service under its name and load the chart's alert rules", function()
    local cfg = D.yaml({ "docker/prometheus/prometheus.yml" })[1]
    local jobs = {}
    for _, j in ipairs(cfg.scrape_configs) do jobs[j.job_name] = j.static_configs[1].targets[1] end
    for _, name in ipairs(D.SERVICES) do assert.equal(("%s:%d"):format(name, P[name]), jobs[name]) end
    assert.truthy(jobs.rabbitmq)
    local rules_mount
    for _, v in ipairs(svcs.prometheus.volumes) do
      local src, dst = v:match("^%./([^:]+):([^:]+)")
      if dst == cfg.rule_files[1] then rules_mount = src end
    end
    assert.equal("helm/mercato/rules/mercato.rules.yml", rules_mount)
    -- promtool checks the configuration with the rules where compose mounts them from
    local tmp = os.tmpname()
    local f = assert(io.open(tmp, "w"))
    f:write((D.read("docker/prometheus/prometheus.yml"):gsub(cfg.rule_files[1]:gsub("%p", "%%%0"),
      os.getenv("PWD") .. "/" .. rules_mount)))
    f:close()
    local out, rc = D.sh("promtool check config " .. tmp)
    os.remove(tmp)
    assert.equal(0, rc, out)
  end)

  it("has Grafana load the data source and every dashboard of the chart", function()
    local mounts = {}
    for _, v in ipairs(svcs.grafana.volumes) do
      local src, dst = v:match("^%./([^:]+):([^:]+)")
      mounts[dst] = src
    end
    local prov = mounts["/etc/grafana/provisioning"]
    assert.equal("docker/grafana/provisioning", prov)
    local ds = D.yaml({ prov .. "/datasources/prometheus.yml" })[1].datasources[1]
    assert.equal("prometheus", ds.type)
    assert.equal("http://prometheus:9090", ds.url)
    local provider = D.yaml({ prov .. "/dashboards/mercato.yml" })[1].providers[1]
    assert.equal("helm/mercato/dashboards", mounts[provider.options.path])
  end)
end)
