-- spec/deploy/helm_spec.lua: the Helm chart, offline (issue 16) — helm lint and helm template
-- with the default and the production values, every rendered object validated against the
-- Kubernetes schemas (kubernetes-models) plus the fields they do not police, k8s/ up to date,
-- and what each service's objects must say (rolling update, probes, drain, security).
--   build/mercato lua spec/support/busted.lua -o TAP spec/deploy/helm_spec.lua
local cjson = require "cjson"
local D = require "support.deploy_helpers"

-- apiVersion/kind pairs served by Kubernetes 1.30 (the cluster floor) or the Operator's CRDs.
local API_1_30 = {
  ["v1/ConfigMap"] = true, ["v1/Service"] = true, ["apps/v1/Deployment"] = true, ["batch/v1/Job"] = true,
  ["autoscaling/v2/HorizontalPodAutoscaler"] = true, ["policy/v1/PodDisruptionBudget"] = true,
  ["networking.k8s.io/v1/NetworkPolicy"] = true, ["networking.k8s.io/v1/Ingress"] = true,
  ["monitoring.coreos.com/v1/ServiceMonitor"] = true, ["monitoring.coreos.com/v1/PrometheusRule"] = true,
}

-- Fields the schemas accept anywhere (they do not refuse unknown ones): ours must be real.
local FIELDS = {
  pod = { "automountServiceAccountToken", "imagePullSecrets", "terminationGracePeriodSeconds", "securityContext",
          "containers", "volumes", "restartPolicy", "serviceAccountName", "affinity", "tolerations", "nodeSelector",
          "topologySpreadConstraints", "priorityClassName" },
  container = { "name", "image", "imagePullPolicy", "args", "command", "env", "envFrom", "ports", "startupProbe",
                "readinessProbe", "livenessProbe", "lifecycle", "resources", "securityContext", "volumeMounts" },
  probe = { "httpGet", "periodSeconds", "failureThreshold", "timeoutSeconds", "initialDelaySeconds", "successThreshold" },
  podSecurity = { "runAsNonRoot", "runAsUser", "runAsGroup", "fsGroup", "seccompProfile", "supplementalGroups" },
  containerSecurity = { "runAsNonRoot", "runAsUser", "runAsGroup", "allowPrivilegeEscalation", "readOnlyRootFilesystem",
                        "capabilities", "seccompProfile", "privileged" },
}

local function unknown_keys(t, allowed)
  local set, bad = {}, {}
  for _, k in ipairs(allowed) do set[k] = true end
  for k in pairs(t or {}) do if not set[k] then bad[#bad + 1] = k end end
  table.sort(bad)
  return bad
end

local function pod_specs(objects)
  local out = {}
  for _, o in ipairs(objects) do
    if o.kind == "Deployment" or o.kind == "Job" then out[#out + 1] = { o = o, spec = o.spec.template.spec } end
  end
  return out
end

describe("helm/mercato", function()
  it("passes helm lint --strict with the default and the production values", function()
    for variant, files in pairs(D.VARIANTS) do
      local cmd = "scripts/dev/helm.sh lint --strict " .. D.CHART
      for _, f in ipairs(files) do cmd = cmd .. " -f " .. D.q(f) end
      local out, rc = D.sh(cmd)
      assert.equal(0, rc, variant .. ":\n" .. out)
      assert.matches("1 chart%(s%) linted, 0 chart%(s%) failed", out)
    end
  end)

  it("refuses values its values.schema.json forbids", function()
    for _, set in ipairs { "rollingUpdate.maxUnavailable=1", "services.user.port=0", "services.order.bogus=1",
                           "containerSecurityContext.readOnlyRootFilesystem=false", "services.product.dependencies={ftp}" } do
      local out, rc = D.sh("scripts/dev/helm.sh template mercato " .. D.CHART .. " --set " .. D.q(set))
      assert.are_not.equal(0, rc, set .. " was accepted")
      assert.matches("schema", out, 1, true)
    end
  end)

  for variant, files in pairs(D.VARIANTS) do
    describe("rendered with the " .. variant .. " values", function()
      local objects, text
      setup(function() objects, text = D.render(files) end)

      it("validates every object against the Kubernetes schemas (kubernetes-models)", function()
        local tmp = os.tmpname()   -- the YAML itself (a Lua round trip would turn [] into {})
        local f = assert(io.open(tmp, "w"))
        f:write(text)
        f:close()
        local out, rc = D.sh("node spec/support/deploy/yaml2json.js " .. tmp .. " | node spec/support/deploy/k8s_validate.js")
        os.remove(tmp)
        assert.equal(0, rc, out)
        local bad, checked = {}, 0
        for _, r in ipairs(cjson.decode(out)) do
          if r.skipped then
            assert.truthy(r.apiVersion:match("^monitoring%.coreos%.com/"), r.kind .. " " .. r.apiVersion .. " was not validated")
          elseif r.ok then
            checked = checked + 1
          else
            bad[#bad + 1] = r.kind .. "/" .. tostring(r.name) .. ": " .. r.error
          end
        end
        assert.same({}, bad)
        assert.is_true(checked >= 40, "only " .. checked .. " objects validated")
      end)

      it("uses only apiVersions Kubernetes 1.30 serves, and sound shapes for the Operator's kinds", function()
        for _, o in ipairs(objects) do
          assert.truthy(API_1_30[o.apiVersion .. "/" .. o.kind], o.apiVersion .. "/" .. o.kind)
          assert.truthy(o.metadata and o.metadata.name and #o.metadata.name <= 63, o.kind)
          if o.kind == "ServiceMonitor" then
            assert.truthy(o.spec.selector.matchLabels["app.kubernetes.io/instance"])
            assert.equal("http", o.spec.endpoints[1].port)
            assert.equal("/metrics", o.spec.endpoints[1].path)
          elseif o.kind == "PrometheusRule" then
            local rules = D.yaml { D.CHART .. "/rules/mercato.rules.yml" }[1]
            assert.same(rules.groups, o.spec.groups)
          end
        end
      end)

      it("writes no field the Kubernetes API does not know in pods, containers, probes, security contexts", function()
        for _, p in ipairs(pod_specs(objects)) do
          local where = p.o.kind .. "/" .. p.o.metadata.name
          assert.same({}, unknown_keys(p.spec, FIELDS.pod), where)
          assert.same({}, unknown_keys(p.spec.securityContext, FIELDS.podSecurity), where)
          for _, c in ipairs(p.spec.containers) do
            assert.same({}, unknown_keys(c, FIELDS.container), where)
            assert.same({}, unknown_keys(c.securityContext, FIELDS.containerSecurity), where)
            for _, probe in ipairs { "startupProbe", "readinessProbe", "livenessProbe" } do
              if c[probe] then assert.same({}, unknown_keys(c[probe], FIELDS.probe), where .. " " .. probe) end
            end
          end
        end
      end)

      it("gives every service a Deployment, Service, HPA, PDB, ConfigMap, NetworkPolicy; one Ingress to the gateway", function()
        local kinds = { "Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget", "ConfigMap", "NetworkPolicy" }
        for _, svc in ipairs(D.SERVICES) do
          for _, kind in ipairs(kinds) do
            assert.equal(1, #D.of_kind(objects, kind, svc), svc .. " " .. kind)
          end
          local hpa = D.of_kind(objects, "HorizontalPodAutoscaler", svc)[1]
          assert.equal("mercato-" .. svc, hpa.spec.scaleTargetRef.name)
          assert.equal("cpu", hpa.spec.metrics[1].resource.name)
          assert.is_true(hpa.spec.minReplicas >= 2)
          local pdb = D.of_kind(objects, "PodDisruptionBudget", svc)[1]
          assert.equal(svc, pdb.spec.selector.matchLabels["app.kubernetes.io/component"])
          local service = D.of_kind(objects, "Service", svc)[1]
          assert.equal(D.PORTS[svc], service.spec.ports[1].port)
          assert.equal("http", service.spec.ports[1].name)
        end
        local ingresses = D.of_kind(objects, "Ingress")
        assert.equal(1, #ingresses)
        local rule = ingresses[1].spec.rules[1].http.paths[1]
        assert.equal("/", rule.path)
        assert.equal("mercato-gateway", rule.backend.service.name)
      end)

      it("rolls each Deployment without losing capacity, drains it inside its grace period, runs it locked down", function()
        local image
        for _, svc in ipairs(D.SERVICES) do
          local d = D.of_kind(objects, "Deployment", svc)[1]
          assert.equal(0, d.spec.strategy.rollingUpdate.maxUnavailable, svc)
          local pod = d.spec.template.spec
          local c = pod.containers[1]
          image = image or c.image
          assert.equal(image, c.image, "one image for every service")
          local env = D.container_env(objects, d)
          assert.equal(svc, env.SERVICE.value)
          assert.equal(tostring(D.PORTS[svc]), env.PORT.value)
          assert.equal("/ready", c.readinessProbe.httpGet.path)
          assert.equal("/health", c.livenessProbe.httpGet.path)
          assert.equal("/health", c.startupProbe.httpGet.path)
          assert.equal("sleep", c.lifecycle.preStop.exec.command[1])
          local pre = tonumber(c.lifecycle.preStop.exec.command[2])
          local drain = tonumber(env.SHUTDOWN_TIMEOUT_MS.value) / 1000
          local grace = pod.terminationGracePeriodSeconds
          assert.is_true(grace > pre + drain,
            ("%s: grace %ds is not above preStop %ds + SHUTDOWN_TIMEOUT_MS %ds"):format(svc, grace, pre, drain))
          assert.truthy(c.resources.requests.cpu and c.resources.requests.memory and c.resources.limits.memory, svc)
          assert.is_true(pod.securityContext.runAsNonRoot)
          assert.equal("RuntimeDefault", pod.securityContext.seccompProfile.type)
          local sc = c.securityContext
          assert.is_true(sc.runAsNonRoot and sc.readOnlyRootFilesystem)
          assert.is_false(sc.allowPrivilegeEscalation)
          assert.same({ "ALL" }, sc.capabilities.drop)
          assert.equal("RuntimeDefault", sc.seccompProfile.type)
          local mounts = {}
          for _, m in ipairs(c.volumeMounts) do mounts[m.mountPath] = true end
          assert.truthy(mounts["/tmp"], svc .. ": /tmp must be writable on a read-only root")
          assert.is_false(pod.automountServiceAccountToken)
          assert.equal("true", d.spec.template.metadata.annotations["prometheus.io/scrape"])
        end
      end)

      it("migrates every service with a database in a pre-install/pre-upgrade Job", function()
        local jobs = D.of_kind(objects, "Job")
        local by = {}
        for _, j in ipairs(jobs) do
          assert.equal("pre-install,pre-upgrade", j.metadata.annotations["helm.sh/hook"])
          local c = j.spec.template.spec.containers[1]
          assert.same({ "migrate" }, c.args)
          local env = {}
          for _, e in ipairs(c.env) do env[e.name] = e end
          assert.truthy(env.DATABASE_URL.valueFrom.secretKeyRef, "DATABASE_URL from a Secret")
          assert.is_true(c.securityContext.readOnlyRootFilesystem)
          by[env.SERVICE.value] = true
        end
        assert.same({ user = true, product = true, order = true, payment = true, notification = true }, by)
      end)

      it("ships every dashboard of helm/mercato/dashboards as a ConfigMap for Grafana's sidecar", function()
        local listing = D.sh("ls " .. D.CHART .. "/dashboards/*.json")
        local n = 0
        for path in listing:gmatch("[^\n]+") do
          n = n + 1
          local base = path:match("([^/]+)$")
          local found
          for _, cm in ipairs(D.of_kind(objects, "ConfigMap")) do
            if cm.data and cm.data[base] then found = cm end
          end
          assert.truthy(found, base)
          assert.equal("1", found.metadata.labels.grafana_dashboard)
          assert.same(cjson.decode(D.read(path)), cjson.decode(found.data[base]))
        end
        assert.is_true(n >= 4)
      end)
    end)
  end

  it("autoscales on request rate in production (custom metrics adapter)", function()
    local objects = D.render(D.PRODUCTION)
    for _, svc in ipairs(D.SERVICES) do
      local m = D.of_kind(objects, "HorizontalPodAutoscaler", svc)[1].spec.metrics
      assert.equal("Pods", m[2].type)
      assert.equal("http_requests_per_second", m[2].pods.metric.name)
    end
    assert.equal(1, #D.of_kind(objects, "ServiceMonitor"))
    assert.equal(1, #D.of_kind(objects, "PrometheusRule"))
  end)

  it("keeps k8s/mercato.yaml equal to the chart rendered with its defaults", function()
    local _, text = D.render({})
    local file = D.read("k8s/mercato.yaml"):gsub("^#[^\n]*\n#[^\n]*\n", "")
    assert.is_true(file == text, "k8s/mercato.yaml is stale: run scripts/dev/helm.sh render-k8s")
  end)
end)
