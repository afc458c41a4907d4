-- spec/deploy/monitoring_spec.lua: Grafana dashboards and Prometheus alert rules (issue 16) —
-- the rules pass promtool (check and unit tests), the dashboards are well-formed Grafana JSON,
-- and every metric a query or a rule names is one something exports: a mercato process's
-- /metrics (the gateway, scraped here), the metrics the services declare (C registry and Lua
-- `metrics.*` calls, which their /metrics carry), or RabbitMQ's rabbitmq_prometheus plugin.
-- Metrics of services merged from other branches, or promised to the payment and host work,
-- are listed in PROMISED and reported pending until something here declares them.
--   build/mercato lua spec/support/busted.lua -o TAP spec/deploy/monitoring_spec.lua
local cjson = require "cjson"
local socket = require "socket"
local D = require "support.deploy_helpers"
local server = require "support.server"

local RULES = D.CHART .. "/rules/mercato.rules.yml"
local PROMISED = {
  saga_transitions_total = "order service: checkout saga outcomes and order transitions, by kind",
  notifications_sent_total = "notification service: e-mails sent, by event type",
  notifications_retried_total = "notification service: send attempts rescheduled, by event type",
  notifications_failed_total = "notification service: deliveries given up, by event type",
  payment_reconciliation_repairs_total = "payment service: payments and refunds a reconciliation run repaired",
}

local PROMQL_WORDS = {}
for w in ([[sum min max avg count stddev stdvar topk bottomk quantile count_values group by without on ignoring
  group_left group_right bool and or unless offset rate irate increase delta idelta deriv histogram_quantile
  label_replace label_join clamp clamp_min clamp_max abs ceil floor round sqrt exp ln log2 log10 time vector
  scalar absent absent_over_time sum_over_time avg_over_time max_over_time min_over_time count_over_time
  changes resets predict_linear sort sort_desc timestamp inf nan le]]):gmatch("%S+") do PROMQL_WORDS[w] = true end

-- The metric names in a PromQL expression (Grafana variables and label matchers removed).
local function metric_names(expr)
  local e = expr:gsub('"[^"]*"', '""'):gsub("%$[%w_]+", ""):gsub("%${[^}]*}", "")
  e = e:gsub("%b{}", ""):gsub("%b[]", "")
  for _, kw in ipairs { "by", "without", "on", "ignoring", "group_left", "group_right" } do
    e = e:gsub("%f[%w_]" .. kw .. "%s*%b()", " ")   -- label lists, not metrics
  end
  local names = {}
  for token in e:gmatch("[%a_:][%w_:]*") do
    if not PROMQL_WORDS[token] and not token:match("^%d") then names[token] = true end
  end
  return names
end

local function exported_names()
  local names = { up = true }
  local function add(n, histogram)
    names[n] = true
    if histogram then names[n .. "_bucket"], names[n .. "_sum"], names[n .. "_count"] = true, true, true end
  end
  -- a real /metrics: the gateway needs nothing else to start
  local gw = server.start { service = "gateway", env = { RATE_LIMIT_GLOBAL = "off" } }
  local c = assert(socket.connect("127.0.0.1", gw.port))
  c:settimeout(5)
  c:send("GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
  local body = c:receive("*a") or ""
  c:close()
  gw:stop()
  local scraped = 0
  for n, kind in body:gmatch("\n# TYPE ([%w_:]+) (%a+)") do add(n, kind == "histogram"); scraped = scraped + 1 end
  -- what the services declare: the C registry and the Lua metrics binding
  local c_src = D.sh("cat host/*.c core/*.c bindings/*.c")
  for n, at in c_src:gmatch('metrics_family%(%s*"([a-z_:]+)"()') do   -- the kind follows name and help
    add(n, c_src:sub(at, at + 400):match("METRIC_(%u+)") == "HISTOGRAM")
  end
  for n, kind in c_src:gmatch('add_help%(%w+, "([a-z_:]+)", "[^"]*", "(%a+)"') do add(n, kind == "histogram") end
  local lua_decl = D.sh([[grep -rhoE 'metrics\.(counter|gauge|histogram)\("[a-z_:]+"' scripts]])
  for kind, n in lua_decl:gmatch('metrics%.(%a+)%("([a-z_:]+)"') do add(n, kind == "histogram") end
  local rabbit, rc = D.sh("spec/support/deploy/rabbitmq_metric_names.sh")
  assert(rc == 0, rabbit)
  for n in rabbit:gmatch("[^\n]+") do names[n] = true end
  return names, scraped
end

describe("monitoring", function()
  local dashboards, promised = {}, nil

  setup(function()
    for path in D.sh("ls " .. D.CHART .. "/dashboards/*.json"):gmatch("[^\n]+") do
      dashboards[#dashboards + 1] = { path = path, json = cjson.decode(D.read(path)) }
    end
  end)

  it("has alert rules promtool accepts, for error rate, p99, outbox backlog, DLQ and reconciliation drift", function()
    local out, rc = D.sh("promtool check rules " .. RULES)
    assert.equal(0, rc, out)
    local alerts = {}
    for _, g in ipairs(D.yaml({ RULES })[1].groups) do
      for _, r in ipairs(g.rules) do
        alerts[r.alert] = r.expr
        assert.truthy(r.labels.severity and r.annotations.summary, r.alert)
      end
    end
    assert.matches('status=~"5.."', alerts.MercatoHighErrorRate, 1, true)
    assert.matches("histogram_quantile(0.99", alerts.MercatoHighLatencyP99, 1, true)
    assert.matches("outbox_pending", alerts.MercatoOutboxBacklog, 1, true)
    assert.matches("dlq", alerts.MercatoDeadLetterQueueNotEmpty, 1, true)
    assert.matches("reconciliation", alerts.MercatoReconciliationDrift, 1, true)
  end)

  it("fires each alert on the series that should raise it (promtool test rules)", function()
    local out, rc = D.sh("cd " .. D.CHART .. "/rules && promtool test rules mercato.rules.test.yml")
    assert.equal(0, rc, out)
    assert.matches("SUCCESS", out, 1, true)
  end)

  it("has well-formed Grafana dashboards: RED, saga and payments, queues and outbox, DB pool and Redis", function()
    local uids, titles = {}, {}
    for _, d in ipairs(dashboards) do
      local j = d.json
      assert.truthy(j.uid and j.title and j.schemaVersion and j.panels, d.path)
      assert.is_nil(uids[j.uid], "duplicate uid " .. j.uid)
      uids[j.uid] = true
      titles[#titles + 1] = j.title
      assert.equal("datasource", j.templating.list[1].type, d.path)
      local ids = {}
      for _, p in ipairs(j.panels) do
        assert.is_nil(ids[p.id], d.path .. ": duplicate panel id")
        ids[p.id] = true
        assert.truthy(p.gridPos and p.gridPos.w and p.gridPos.h, p.title)
        assert.equal("${datasource}", p.datasource.uid, p.title)
        assert.is_true(#p.targets > 0, p.title)
        for _, t in ipairs(p.targets) do assert.truthy(t.expr and t.refId, p.title) end
      end
    end
    local all = table.concat(titles, " | ")
    for _, want in ipairs { "RED", "saga", "payments", "queues", "outbox", "database pool", "Redis" } do
      assert.matches(want, all, 1, true)
    end
  end)

  it("names only metrics that some service's /metrics or RabbitMQ exports", function()
    local exported, scraped = exported_names()
    assert.is_true(scraped >= 15, "the gateway's /metrics had " .. scraped .. " families")
    local used = {}
    for _, d in ipairs(dashboards) do
      for _, p in ipairs(d.json.panels) do
        for _, t in ipairs(p.targets) do
          for n in pairs(metric_names(t.expr)) do used[n] = used[n] or (d.path .. ": " .. p.title) end
        end
      end
      for _, v in ipairs(d.json.templating.list) do
        local q = type(v.query) == "table" and v.query.query or nil
        local metric = q and q:match("label_values%(([%w_:]+)")
        if metric then used[metric] = used[metric] or (d.path .. ": variable " .. v.name) end
      end
    end
    for _, g in ipairs(D.yaml({ RULES })[1].groups) do
      for _, r in ipairs(g.rules) do
        for n in pairs(metric_names(r.expr)) do used[n] = used[n] or (RULES .. ": " .. r.alert) end
      end
    end
    local unknown = {}
    promised = {}
    for n, where in pairs(used) do
      local base = n:gsub("_bucket$", ""):gsub("_sum$", ""):gsub("_count$", "")
      if not exported[n] then
        if PROMISED[base] then promised[#promised + 1] = n else unknown[#unknown + 1] = n .. " (" .. where .. ")" end
      end
    end
    table.sort(unknown)
    assert.same({}, unknown)
    for n in pairs(used) do assert.is_falsy(n:find("%$"), n) end
    table.sort(promised)
  end)

  it("finds the metrics promised by work under way exported (pending until they are)", function()
    assert.truthy(promised, "the check above did not run")
    if #promised > 0 then pending("not exported yet: " .. table.concat(promised, ", ")) end
  end)

  it("reads metric names out of PromQL the way the check above relies on", function()
    local names = metric_names('histogram_quantile(0.99, sum by (job, le) (rate(http_request_duration_seconds_bucket'
      .. '{job=~"$job",route="/x"}[$__rate_interval]))) / on (job) group_left max by (job) (outbox_pending) > 0.5')
    assert.same({ http_request_duration_seconds_bucket = true, outbox_pending = true }, names)
  end)
end)
