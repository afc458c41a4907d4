-- spec/deploy/networkpolicy_spec.lua: the rendered NetworkPolicies allow exactly the flows the
-- platform needs (issue 16), for the default and the production values: every pod of the
-- release starts from deny-all, then the ingress controller → gateway, gateway → services,
-- service → service calls (tokens and JWKS from user; order → product and payment),
-- services → PostgreSQL/Redis/RabbitMQ/SMTP/S3/Elasticsearch/Stripe, Prometheus → /metrics,
-- DNS, and the migration Jobs → PostgreSQL. Nothing more, nothing less.
--   build/mercato lua spec/support/busted.lua -o TAP spec/deploy/networkpolicy_spec.lua
local cjson = require "cjson"
local D = require "support.deploy_helpers"

local P = D.PORTS
local SERVICES = { "user", "product", "order", "payment", "notification" }
-- In-cluster calls: caller → callees (CONTRACT §5, §6; the internal APIs).
local CALLS = {
  gateway = SERVICES,
  product = { "user" }, order = { "user", "product", "payment" }, payment = { "user" }, notification = { "user" },
}
-- External dependencies each pod reaches.
local DEPS = {
  gateway = { "redis" },
  user = { "postgresql", "redis", "rabbitmq" },
  product = { "postgresql", "redis", "rabbitmq", "s3", "elasticsearch" },
  order = { "postgresql", "redis", "rabbitmq" },
  payment = { "postgresql", "redis", "rabbitmq", "stripe" },
  notification = { "postgresql", "redis", "rabbitmq", "smtp" },
  migrations = { "postgresql" },
}

local function same(a, b)   -- deep equality (a JSON encoding would depend on key order)
  if type(a) ~= "table" or type(b) ~= "table" then return a == b end
  for k, v in pairs(a) do if not same(v, b[k]) then return false end end
  for k in pairs(b) do if a[k] == nil then return false end end
  return true
end

-- The flows the platform needs, as sorted strings.
local function expected(values)
  local flows = {}
  local function add(s) flows[#flows + 1] = s end
  add("ingress-controller -> gateway:TCP/8080")
  for _, svc in ipairs(D.SERVICES) do add("prometheus -> " .. svc .. ":TCP/" .. P[svc]) end
  for caller, callees in pairs(CALLS) do
    for _, callee in ipairs(callees) do
      add(("%s -> %s:TCP/%d"):format(caller, callee, P[callee]))            -- the caller's egress
      add(("%s <- %s:TCP/%d"):format(callee, caller, P[callee]))            -- the callee's ingress
    end
  end
  for who, deps in pairs(DEPS) do
    for _, dep in ipairs(deps) do
      for _, port in ipairs(values.networkPolicy.dependencies[dep].ports) do add(("%s -> %s:TCP/%d"):format(who, dep, port)) end
    end
  end
  add("all -> dns:UDP/53")
  add("all -> dns:TCP/53")
  table.sort(flows)
  return flows
end

-- The flows the rendered policies allow, named the same way.
local function allowed(objects, values)
  local np = values.networkPolicy
  local function peer_name(peer, port)   -- a dependency is known by its peer and its port
    local labels = peer.podSelector and peer.podSelector.matchLabels or {}
    local component = labels["app.kubernetes.io/component"]
    if component and not peer.namespaceSelector then return component end
    if same(peer, np.prometheus) then return "prometheus" end
    if same(peer, np.ingressController) then return "ingress-controller" end
    if same(peer, np.dns) then return "dns" end
    local deps = {}   -- two dependencies behind one peer and port could not be told apart
    for dep, d in pairs(np.dependencies) do
      local on_port = false
      for _, p in ipairs(d.ports) do if p == port then on_port = true end end
      for _, to in ipairs(d.to) do if on_port and same(peer, to) then deps[#deps + 1] = dep end end
    end
    table.sort(deps)
    return #deps > 0 and table.concat(deps, "|") or "UNKNOWN " .. cjson.encode(peer)
  end
  local flows, problems = {}, {}
  for _, pol in ipairs(D.of_kind(objects, "NetworkPolicy")) do
    local sel = pol.spec.podSelector.matchLabels or {}
    local subject = sel["app.kubernetes.io/component"] or "all"
    if sel["app.kubernetes.io/instance"] ~= "mercato" then
      problems[#problems + 1] = pol.metadata.name .. " selects beyond the release"
    end
    for _, rule in ipairs(pol.spec.ingress or {}) do
      if not rule.from or not rule.ports then problems[#problems + 1] = pol.metadata.name .. ": an ingress rule open to all" end
      for _, peer in ipairs(rule.from or {}) do
        for _, port in ipairs(rule.ports or {}) do
          local who = peer_name(peer, port.port)
          if who == "prometheus" or who == "ingress-controller" then
            flows[#flows + 1] = ("%s -> %s:%s/%d"):format(who, subject, port.protocol, port.port)
          else
            flows[#flows + 1] = ("%s <- %s:%s/%d"):format(subject, who, port.protocol, port.port)
          end
        end
      end
    end
    for _, rule in ipairs(pol.spec.egress or {}) do
      if not rule.to or not rule.ports then problems[#problems + 1] = pol.metadata.name .. ": an egress rule open to all" end
      for _, peer in ipairs(rule.to or {}) do
        for _, port in ipairs(rule.ports or {}) do
          flows[#flows + 1] = ("%s -> %s:%s/%d"):format(subject, peer_name(peer, port.port), port.protocol, port.port)
        end
      end
    end
  end
  table.sort(flows)
  return flows, problems
end

describe("the NetworkPolicies", function()
  for variant, files in pairs(D.VARIANTS) do
    describe("with the " .. variant .. " values", function()
      local objects, values
      setup(function()
        objects = D.render(files)
        values = D.values(files)
      end)

      it("deny everything to and from every pod of the release first", function()
        local deny
        for _, pol in ipairs(D.of_kind(objects, "NetworkPolicy")) do
          if pol.metadata.name == "mercato-default-deny" then deny = pol end
        end
        assert.truthy(deny)
        assert.same({ ["app.kubernetes.io/name"] = "mercato", ["app.kubernetes.io/instance"] = "mercato" },
          deny.spec.podSelector.matchLabels)
        assert.same({ "Ingress", "Egress" }, deny.spec.policyTypes)
        assert.is_nil(deny.spec.ingress)
        assert.is_nil(deny.spec.egress)
        -- and every pod the chart makes carries the labels it selects
        for _, o in ipairs(objects) do
          if o.kind == "Deployment" or o.kind == "Job" then
            local labels = o.spec.template.metadata.labels
            assert.equal("mercato", labels["app.kubernetes.io/instance"], o.metadata.name)
            assert.equal("mercato", labels["app.kubernetes.io/name"], o.metadata.name)
          end
        end
      end)

      it("allow exactly the listed flows", function()
        local got, problems = allowed(objects, values)
        assert.same({}, problems)
        assert.same(expected(values), got)
      end)

      it("open both ends of every call inside the release", function()
        local got = allowed(objects, values)
        local set = {}
        for _, f in ipairs(got) do set[f] = true end
        for _, f in ipairs(got) do
          local from, to, port = f:match("^(%w+) %-> (%w+):TCP/(%d+)$")
          if from and P[to] and from ~= "prometheus" then
            assert.truthy(set[("%s <- %s:TCP/%s"):format(to, from, port)], f .. " has no matching ingress")
          end
        end
      end)
    end)
  end
end)
