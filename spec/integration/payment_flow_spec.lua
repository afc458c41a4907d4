-- spec/integration/payment_flow_spec.lua: the payment service end to end against the local
-- luacheck: max line length 170
-- Stripe stand-in — PaymentIntents per order (idempotent), the test cards through signed
-- webhooks to payment.completed / payment.failed, cancel, owner/admin reads, bad input.
local cjson = require "cjson.safe"
local PAY = require "support.payment_helpers"

describe("payment service", function()
  local env, svc
  local admin = PAY.token("admin")

  setup(function()
    env = PAY.start()
    svc = env.svc
  end)
  teardown(function() PAY.stop(env) end)

  local function status_of(id)
    return PAY.sql(env, ("SELECT status FROM payments WHERE id = '%s'"):format(id))
  end
  local function outbox_count(etype, payment_id)
    return tonumber(PAY.sql(env, ("SELECT count(*) FROM outbox WHERE type = '%s' AND payload->'data'->>'payment_id' = '%s'")
      :format(etype, payment_id)))
  end

  it("creates one PaymentIntent per order, and a repeat returns the same payment with 200", function()
    local p, doc = PAY.create(env)
    assert.is_truthy(p.provider_id:match("^pi_"))
    assert.is_truthy(p.client_secret:match("^" .. p.provider_id .. "_secret_"))
    assert.are.equal("requires_payment_method", p.status)
    assert.are.equal(doc.order_id, p.order_id)
    local again = PAY.post(svc, "/internal/payments", doc, { token = PAY.service_token() })
    assert.are.equal(200, again.status)
    assert.are.equal(p.id, again.json.id)
    assert.are.equal(p.provider_id, again.json.provider_id)
    local bare = PAY.post(svc, "/internal/payments", { order_id = require("crypto").uuid4(), amount_cents = 100, currency = "usd" },
      { token = PAY.service_token() })
    assert.are.equal(201, bare.status, bare.body)   -- no user_id, no customer_email
    doc.amount_cents = 1
    local other = PAY.post(svc, "/internal/payments", doc, { token = PAY.service_token() })
    assert.are.equal(409, other.status)
  end)

  it("refuses bad input with problem details, and the internal route without the payments scope", function()
    local t = PAY.service_token()
    local r = PAY.post(svc, "/internal/payments", { order_id = "nope", amount_cents = 0, currency = "EUR" }, { token = t })
    assert.are.equal(422, r.status)
    assert.are.equal("application/problem+json", r.headers["content-type"])
    r = PAY.post(svc, "/internal/payments", { order_id = "a", role = "admin" }, { token = t })
    assert.are.equal(400, r.status)
    r = PAY.request(svc, "POST", "/internal/payments", { token = t, body = "{nope", headers = { ["Content-Type"] = "application/json" } })
    assert.are.equal(400, r.status)
    r = PAY.request(svc, "POST", "/internal/payments", { token = t, body = "x=1", headers = { ["Content-Type"] = "text/plain" } })
    assert.are.equal(415, r.status)
    r = PAY.post(svc, "/internal/payments", {}, { token = PAY.token("buyer") })
    assert.are.equal(403, r.status)
    r = PAY.post(svc, "/internal/payments", {})
    assert.are.equal(401, r.status)
  end)

  it("moves to succeeded through the signed webhook of pm_card_visa, with one payment.completed", function()
    local p = PAY.create(env)
    local st, pi = PAY.confirm(env, p.provider_id, "pm_card_visa")
    assert.are.equal(200, st)
    assert.are.equal("succeeded", pi.status)
    assert.is_truthy(PAY.eventually(function() return status_of(p.id) == "succeeded" end))
    PAY.settle(env, p.provider_id)   -- every delivery answered, the duplicates the stand-in sends too
    assert.are.equal(1, outbox_count("payment.completed", p.id))
    local ev = cjson.decode(PAY.sql(env, ("SELECT payload FROM outbox WHERE type = 'payment.completed' AND payload->'data'->>'payment_id' = '%s'"):format(p.id)))
    assert.are.equal(p.order_id, ev.data.order_id)
    assert.are.equal(2599, ev.data.amount_cents)
    assert.are.equal(p.provider_id, ev.data.provider_id)
    assert.are.equal("buyer@example.com", ev.data.email)
    assert.are.equal("payment", ev.source)
  end)

  it("moves to failed through pm_card_chargeDeclined, with one payment.failed and its reason", function()
    local p = PAY.create(env)
    local st, body = PAY.confirm(env, p.provider_id, "pm_card_chargeDeclined")
    assert.are.equal(402, st)
    assert.are.equal("card_declined", body.error.code)
    assert.is_truthy(PAY.eventually(function() return status_of(p.id) == "failed" end))
    PAY.settle(env, p.provider_id)
    assert.are.equal(1, outbox_count("payment.failed", p.id))
    assert.are.equal("generic_decline", PAY.sql(env, ("SELECT payload->'data'->>'reason' FROM outbox WHERE type = 'payment.failed'"
      .. " AND payload->'data'->>'payment_id' = '%s'"):format(p.id)))
  end)

  it("cancels an unpaid payment (idempotently) and answers 409 with the status once it succeeded", function()
    local p = PAY.create(env)
    local t = PAY.service_token()
    local r = PAY.post(svc, "/internal/payments/" .. p.id .. "/cancel", {}, { token = t })
    assert.are.equal(200, r.status)
    assert.are.equal("canceled", r.json.status)
    r = PAY.post(svc, "/internal/payments/" .. p.id .. "/cancel", {}, { token = t })
    assert.are.equal(200, r.status)
    PAY.settle(env, p.provider_id)
    assert.are.equal(0, outbox_count("payment.failed", p.id))   -- the order service asked: no event back
    local paid = PAY.create(env)
    PAY.confirm(env, paid.provider_id)
    -- straight away, before the webhook: the intent succeeded at Stripe, so cancel must refuse
    r = PAY.post(svc, "/internal/payments/" .. paid.id .. "/cancel", {}, { token = t })
    assert.are.equal(409, r.status)
    assert.are.equal("succeeded", r.json.status)
    r = PAY.post(svc, "/internal/payments/00000000-0000-4000-8000-000000000000/cancel", {}, { token = t })
    assert.are.equal(404, r.status)
  end)

  it("shows a payment to its buyer and admins only, with its history; lists by order", function()
    local buyer, buyer_id = PAY.token("buyer")
    local p, doc = PAY.create(env, { user_id = buyer_id })
    PAY.confirm(env, p.provider_id)
    assert.is_truthy(PAY.eventually(function() return status_of(p.id) == "succeeded" end))
    local r = PAY.get(svc, "/payments/" .. p.id, { token = buyer })
    assert.are.equal(200, r.status)
    assert.are.equal("succeeded", r.json.status)
    assert.are.equal(doc.order_id, r.json.order_id)
    local seen = {}
    for _, h in ipairs(r.json.status_history) do seen[#seen + 1] = h.status end
    assert.are.same({ "requires_payment_method", "succeeded" }, seen)
    assert.are.equal(404, PAY.get(svc, "/payments/" .. p.id, { token = PAY.token("buyer") }).status)
    assert.are.equal(200, PAY.get(svc, "/payments/" .. p.id, { token = admin }).status)
    assert.are.equal(401, PAY.get(svc, "/payments/" .. p.id).status)
    assert.are.equal(404, PAY.get(svc, "/payments/not-a-uuid", { token = admin }).status)
    r = PAY.get(svc, "/payments?order_id=" .. doc.order_id, { token = buyer })
    assert.are.equal(200, r.status)
    assert.are.equal(1, #r.json.items)
    assert.are.equal(p.id, r.json.items[1].id)
    r = PAY.get(svc, "/payments?order_id=" .. doc.order_id, { token = PAY.token("buyer") })
    assert.are.equal(0, #r.json.items)
    r = PAY.get(svc, "/payments?order_id=" .. doc.order_id, { token = admin })
    assert.are.equal(1, #r.json.items)
    assert.are.equal(400, PAY.get(svc, "/payments?order_id=x", { token = admin }).status)
    assert.are.equal(400, PAY.get(svc, "/payments?cursor=%%%", { token = admin }).status)
    r = PAY.get(svc, "/payments?limit=1", { token = admin })
    assert.are.equal(1, #r.json.items)
    assert.is_string(r.json.next_cursor)
    local r2 = PAY.get(svc, "/payments?limit=1&cursor=" .. r.json.next_cursor, { token = admin })
    assert.are_not.equal(r.json.items[1].id, r2.json.items[1].id)
  end)
end)
