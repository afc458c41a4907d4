-- luacheck: max line length 160
-- End to end (issue 15): the complete purchase through the gateway only — register, log in,
-- search, cart, checkout with Idempotency-Key, pay through the Stripe stand-in (its signed
-- webhook), paid, shipped, delivered; a cancel-and-refund and a declined card — with the real
-- user, product, order, payment and notification services, every event watched on RabbitMQ by
-- a second client (amqplib) for the contract's envelope and AMQP properties, the checkout's
-- traceparent carried into its events and e-mails, and each step's e-mail in the SMTP sink.
local cjson = require "cjson.safe"
local crypto = require "crypto"
local http = require "http"
local O = require "support.order_helpers"

describe("e2e: a purchase through the gateway", function()
  local w, gw, observer, events_file

  setup(function()
    w = O.start { payment = true, notification = true, gateway = true }
    gw = w.gateway
    events_file = ".run/test/e2e-events-" .. crypto.hex(crypto.random(4)) .. ".jsonl"
    os.execute("mkdir -p .run/test && : > " .. events_file)
    local p = io.popen(("node spec/support/amqp_observer.js %s %s & echo $!"):format(os.getenv("AMQP_URL"), events_file))
    observer = tonumber(p:read("*l"))
    p:close()
    os.execute("sleep 1")   -- the observer's queue is bound before anything happens
  end)
  teardown(function()
    if observer then os.execute("kill " .. observer .. " 2>/dev/null") end
    O.stop(w)
    os.remove(events_file)
  end)

  local function call(method, path, doc, token, headers)
    local h = {}
    for k, v in pairs(headers or {}) do h[k] = v end
    if token then h.Authorization = "Bearer " .. token end
    local body
    if doc ~= nil then body = cjson.encode(doc); h["Content-Type"] = "application/json" end
    local res = assert(http.request { method = method, url = gw.url .. path, headers = h, body = body, timeout_ms = 20000 })
    res.json = cjson.decode(res.body or "")
    return res
  end

  local function account(role)
    local email = role .. "-" .. crypto.hex(crypto.random(5)) .. "@example.com"
    local res = call("POST", "/auth/register", { email = email, password = "correct horse 1", name = "E2E " .. role, role = role })
    assert.equal(201, res.status, res.body)
    res = call("POST", "/auth/login", { email = email, password = "correct horse 1" })
    assert.equal(200, res.status, res.body)
    return { token = res.json.access_token, email = email, id = res.headers["x-request-id"] and nil }
  end

  -- Every event the observer saw about an order (or a user), as { [type] = { envelope, properties } }.
  local function seen(pred)
    local out = {}
    local f = io.open(events_file)
    if not f then return out end
    for line in f:lines() do
      local m = cjson.decode(line)
      local ev = m and cjson.decode(m.body)
      if ev and pred(ev) then out[ev.type] = out[ev.type] or {}; table.insert(out[ev.type], { ev = ev, props = m.properties, key = m.routing_key }) end
    end
    f:close()
    return out
  end
  local function wait_events(pred, types)
    return O.eventually(function()
      local s = seen(pred)
      for _, t in ipairs(types) do if not s[t] then return false end end
      return s
    end, 20)
  end
  local function of_order(id) return function(ev) return type(ev.data) == "table" and ev.data.order_id == id end end

  local function assert_envelope(rec, etype, source)
    local ev, props = rec.ev, rec.props
    assert.equal(etype, ev.type)
    assert.equal(etype, rec.key)
    assert.equal(1, ev.version)
    assert.equal(source, ev.source)
    assert.matches("^%x+%-%x+%-%x+%-%x+%-%x+$", ev.id)
    assert.matches("^%d%d%d%d%-%d%d%-%d%dT%d%d:%d%d:%d%d", ev.occurred_at)
    assert.is_string(ev.correlation_id)
    assert.matches("^00%-%x+%-%x+%-0%d$", ev.traceparent)
    assert.equal(ev.id, props.messageId)
    assert.equal(etype, props.type)
    assert.equal("application/json", props.contentType)
    assert.equal(2, props.deliveryMode)
  end

  local function buy(buyer, product, qty, trace)
    assert.equal(200, call("PUT", "/cart/items/" .. product.id, { quantity = qty }, buyer.token).status)
    local res = call("POST", "/orders", { shipping_address = O.ADDRESS }, buyer.token,
      { ["Idempotency-Key"] = "e2e-" .. crypto.hex(crypto.random(6)), traceparent = trace })
    assert.equal(201, res.status, res.body)
    return res.json
  end

  -- The e-mails the sink received for address (maildev's REST API), as { subject = mail }.
  local function mails_to(address)
    local res = http.request { method = "GET", url = os.getenv("SMTP_API_URL") }
    local out = {}
    for _, m in ipairs(cjson.decode(res and res.body or "[]") or {}) do
      if type(m.to) == "table" and m.to[1] and m.to[1].address == address then out[#out + 1] = m end
    end
    return out
  end
  local function wait_mails(address, n)
    return O.eventually(function()
      local m = mails_to(address)
      return #m >= n and m
    end, 20)
  end

  local function order_status(id, token)
    return function() return call("GET", "/orders/" .. id, nil, token).json.status end
  end

  it("registers, searches, buys, pays, ships and delivers, with every event on the bus", function()
    local seller, buyer = account("seller"), account("buyer")
    local word = "zephyr" .. crypto.hex(crypto.random(3)):gsub("%d", "x")
    local res = call("POST", "/products", { name = "E2E " .. word .. " lamp", description = "A lamp for the end-to-end spec.",
      price_cents = 4200, currency = "eur", stock = 5, tags = { "e2e" } }, seller.token)
    assert.equal(201, res.status, res.body)
    local product = res.json

    res = call("GET", "/products?q=" .. word)
    assert.equal(200, res.status)
    assert.equal(product.id, res.json.items[1].id)

    assert.equal(200, call("PUT", "/cart/items/" .. product.id, { quantity = 2 }, buyer.token).status)
    res = call("GET", "/cart", nil, buyer.token)
    assert.equal(8400, res.json.total_cents)

    local trace = "00-" .. crypto.hex(crypto.random(16)) .. "-" .. crypto.hex(crypto.random(8)) .. "-01"
    local key = "e2e-" .. crypto.hex(crypto.random(6))
    res = call("POST", "/orders", { shipping_address = O.ADDRESS }, buyer.token, { ["Idempotency-Key"] = key, traceparent = trace })
    assert.equal(201, res.status, res.body)
    local order = res.json
    assert.equal(8400, order.total_cents)
    local again = call("POST", "/orders", { shipping_address = O.ADDRESS }, buyer.token, { ["Idempotency-Key"] = key })
    assert.equal(order.id, again.json.id)

    assert.equal(200, (O.pay(w, order)))
    assert.truthy(O.eventually(function() return order_status(order.id, buyer.token)() == "paid" end, 20))
    res = call("POST", "/orders/" .. order.id .. "/ship", { carrier = "DHL", tracking_number = "E2E-1" }, seller.token)
    assert.equal(200, res.status, res.body)
    res = call("POST", "/orders/" .. order.id .. "/deliver", nil, seller.token)
    assert.equal(200, res.status, res.body)
    assert.equal("delivered", res.json.status)
    assert.equal(3, call("GET", "/products/" .. product.id .. "/inventory").json.stock)

    local ev = wait_events(of_order(order.id), { "order.created", "payment.completed", "order.paid", "order.shipped", "order.delivered" })
    assert.truthy(ev, "events seen: " .. cjson.encode(seen(of_order(order.id))))
    for _, t in ipairs { "order.created", "order.paid", "order.shipped", "order.delivered" } do
      assert.equal(1, #ev[t], t .. " once")
      assert_envelope(ev[t][1], t, "order")
    end
    assert_envelope(ev["payment.completed"][1], "payment.completed", "payment")
    local created = ev["order.created"][1].ev
    assert.equal(buyer.email, created.data.email)
    assert.equal(8400, created.data.total_cents)
    assert.equal(2, created.data.items[1].quantity)
    -- the checkout's trace runs through its flow: the order's events, the payment's (sent from
    -- Stripe's webhook), and what follows from them
    for _, t in ipairs { "order.created", "payment.completed", "order.paid" } do
      assert.equal(trace:sub(4, 35), ev[t][1].ev.traceparent:sub(4, 35), t)
    end
    assert.truthy(wait_events(function(e) return e.type == "user.registered" and e.data.email == buyer.email end, { "user.registered" }))

    -- welcome, order received, payment received, shipped, delivered: one e-mail each
    local mails = wait_mails(buyer.email, 5)
    assert.truthy(mails, "mails: " .. cjson.encode(mails_to(buyer.email)))
    local subjects = {}
    for _, m in ipairs(mails) do subjects[#subjects + 1] = m.subject end
    table.sort(subjects)
    assert.equal(5, #subjects, table.concat(subjects, " | "))
    local text = table.concat(subjects, " | ")
    for _, want in ipairs { "Welcome", "Order received", "Payment received", "shipped", "delivered" } do
      assert.matches(want, text, 1, true)
    end
    -- and its e-mails (header Traceparent, from the events)
    for _, subject in ipairs { "Order received", "Payment received" } do
      local traced
      for _, m in ipairs(mails) do
        if m.subject:find(subject, 1, true) then traced = m.headers and m.headers.traceparent end
      end
      assert.is_string(traced, subject .. ": no Traceparent header")
      assert.equal(trace:sub(4, 35), traced:sub(4, 35), subject)
    end
  end)

  it("cancels a paid order with a refund, and cancels on a declined card", function()
    local seller, buyer = account("seller"), account("buyer")
    local product = call("POST", "/products", { name = "E2E refund kettle", price_cents = 3000, currency = "eur", stock = 4,
      tags = cjson.empty_array }, seller.token).json
    local order = buy(buyer, product, 1)
    O.pay(w, order)
    assert.truthy(O.eventually(function() return order_status(order.id, buyer.token)() == "paid" end, 20))
    local res = call("POST", "/orders/" .. order.id .. "/cancel", nil, buyer.token)
    assert.equal(200, res.status, res.body)
    assert.equal(3000, res.json.refunded_cents)
    local ev = wait_events(of_order(order.id), { "order.cancelled", "payment.refunded" })
    assert.truthy(ev, cjson.encode(seen(of_order(order.id))))
    assert.is_true(ev["order.cancelled"][1].ev.data.refunded)
    assert_envelope(ev["payment.refunded"][1], "payment.refunded", "payment")
    assert.equal(4, call("GET", "/products/" .. product.id .. "/inventory").json.stock)

    local declined = buy(buyer, product, 1)
    O.pay(w, declined, "pm_card_chargeDeclined")
    assert.truthy(O.eventually(function() return order_status(declined.id, buyer.token)() == "cancelled" end, 20))
    ev = wait_events(of_order(declined.id), { "payment.failed", "order.cancelled" })
    assert.truthy(ev)
    assert.equal("payment_failed", ev["order.cancelled"][1].ev.data.reason)
    assert.equal(4, call("GET", "/products/" .. product.id .. "/inventory").json.stock)
  end)

  -- Every event a service consumes and every internal route, read from the services' own
  -- declarations (consumers.lua, openapi.json — which openapi_spec proves equal to routes.lua),
  -- must have taken part in the flows of this file, on the real JWKS and client_credentials: a
  -- new binding or internal route that no end-to-end flow exercises fails here. Runs after the
  -- flows above (busted keeps the file's order).
  it("exercised every consumed event and every service-to-service route", function()
    -- one flow more: an unpaid order cancelled by its buyer (the order cancels its payment)
    local seller, buyer = account("seller"), account("buyer")
    local product = call("POST", "/products", { name = "E2E unpaid mug", price_cents = 900, currency = "eur", stock = 3,
      tags = cjson.empty_array }, seller.token).json
    local order = buy(buyer, product, 1)
    local res = call("POST", "/orders/" .. order.id .. "/cancel", nil, buyer.token)
    assert.equal(200, res.status, res.body)
    assert.equal(3, call("GET", "/products/" .. product.id .. "/inventory").json.stock)

    local bindings = {}   -- { service, consumer, type }
    local loading, saved_path = nil, package.path
    package.path = "scripts/?.lua;" .. saved_path
    package.loaded["lib.consumer"] = { define = function(spec)
      for _, t in ipairs(spec.bindings) do bindings[#bindings + 1] = { service = loading, consumer = spec.name, type = t } end
      return {}
    end }
    for _, s in ipairs { "user", "product", "order", "payment", "notification" } do
      loading = s
      assert(loadfile("scripts/services/" .. s .. "/consumers.lua"))()
    end
    package.loaded["lib.consumer"], package.path = nil, saved_path
    assert.is_true(#bindings >= 10, "bindings: " .. #bindings)

    local all = seen(function() return true end)
    for _, b in ipairs(bindings) do
      local ids = {}
      for _, rec in ipairs(all[b.type] or {}) do ids[#ids + 1] = "'" .. rec.ev.id .. "'" end
      assert.is_true(#ids > 0, b.type .. ": never published in these flows")
      local handled = O.eventually(function()
        return tonumber(O.psql(w[b.service], ("SELECT count(*) FROM inbox WHERE consumer = '%s' AND event_id IN (%s)")
          :format(b.consumer, table.concat(ids, ",")))) > 0
      end, 20)
      assert.truthy(handled, ("%s (%s) never handled %s in these flows"):format(b.consumer, b.service, b.type))
    end

    local function counts(srv)
      local out = {}
      local m = assert(http.request { method = "GET", url = srv.url .. "/metrics" }).body
      for route, method, status, n in m:gmatch('http_requests_total{route="([^"]+)",method="(%u+)",status="(%d+)"} (%d+)') do
        if status:sub(1, 1) == "2" then out[method .. " " .. route] = (out[method .. " " .. route] or 0) + tonumber(n) end
      end
      return out
    end
    local internal = 0
    for _, s in ipairs { "user", "product", "order", "payment", "notification" } do
      local f = assert(io.open("scripts/services/" .. s .. "/openapi.json"))
      local doc = cjson.decode(f:read("*a"))
      f:close()
      local served = counts(w[s])
      for path, ops in pairs(doc.paths) do
        if path:find("^/internal/") then
          for method in pairs(ops) do
            if method ~= "parameters" then
              internal = internal + 1
              local op = method:upper() .. " " .. path
              assert.truthy(served[op], s .. ": " .. op .. " never answered 2xx in these flows")
            end
          end
        end
      end
    end
    assert.is_true(internal >= 7, "internal routes: " .. internal)
  end)

  it("keeps /internal paths away from the outside (404 at the gateway)", function()
    assert.equal(404, call("POST", "/internal/reservations", { reservation_id = crypto.uuid4(), items = {} }).status)
    assert.equal(404, call("GET", "/internal/users/" .. crypto.uuid4()).status)
  end)
end)
