-- spec/integration/payment_reconcile_spec.lua: Stripe down and reconciliation — a create while
-- luacheck: max line length 170
-- the stand-in is stopped is 503 and keeps its row; once Stripe is back, reconciliation makes
-- its PaymentIntent (same Idempotency-Key), repairs a payment whose webhook never came and
-- emits its event once (not again when the webhook arrives late), and records every run.
local crypto = require "crypto"
local PAY = require "support.payment_helpers"

describe("Stripe down and reconciliation", function()
  local env, svc
  local admin = PAY.token("admin")

  setup(function()
    env = PAY.start { standin = { duplicate_rate = 0 } }
    svc = env.svc
  end)
  teardown(function() PAY.stop(env) end)

  local function reconcile()
    local r = PAY.post(svc, "/payments/reconcile", {}, { token = admin })
    assert.are.equal(200, r.status, r.body)
    return r.json
  end
  local function status_of(id) return PAY.sql(env, ("SELECT status FROM payments WHERE id = '%s'"):format(id)) end
  local function events_of(etype, id)
    return tonumber(PAY.sql(env, ("SELECT count(*) FROM outbox WHERE type = '%s' AND payload->'data'->>'payment_id' = '%s'"):format(etype, id)))
  end

  it("answers 503 on create while Stripe is down, keeps the payment, and finishes it once Stripe is back", function()
    local port = env.standin.port
    PAY.stop_standin(env.standin)
    local doc = { order_id = crypto.uuid4(), amount_cents = 1234, currency = "eur", customer_email = "b@example.com", user_id = crypto.uuid7() }
    local t0 = os.time()
    local r = PAY.post(svc, "/internal/payments", doc, { token = PAY.service_token() })
    assert.are.equal(503, r.status)
    assert.are.equal("application/problem+json", r.headers["content-type"])
    assert.is_truthy(r.headers["retry-after"])
    assert.is_truthy(os.time() - t0 <= 6)
    local id = PAY.sql(env, ("SELECT id FROM payments WHERE order_id = '%s'"):format(doc.order_id))
    assert.are.equal("creating", status_of(id))
    -- reconciliation while still down: counted as failed, nothing changes
    local run = reconcile()
    assert.is_truthy(run.failed >= 1)
    assert.are.equal("creating", status_of(id))
    env.standin = PAY.start_standin(svc.url .. "/webhooks/stripe", { port = port, duplicate_rate = 0 })
    run = reconcile()
    assert.is_truthy(run.repaired >= 1)
    assert.are.equal("requires_payment_method", status_of(id))
    local pi = PAY.sql(env, ("SELECT provider_id FROM payments WHERE id = '%s'"):format(id))
    assert.is_truthy(pi:match("^pi_"))
    -- the order service's retry finds the same payment
    r = PAY.post(svc, "/internal/payments", doc, { token = PAY.service_token() })
    assert.are.equal(200, r.status)
    assert.are.equal(pi, r.json.provider_id)
  end)

  it("cancels a payment Stripe never saw, without calling Stripe", function()
    local port = env.standin.port
    PAY.stop_standin(env.standin)
    local doc = { order_id = crypto.uuid4(), amount_cents = 500, currency = "eur", user_id = crypto.uuid7() }
    assert.are.equal(503, PAY.post(svc, "/internal/payments", doc, { token = PAY.service_token() }).status)
    local id = PAY.sql(env, ("SELECT id FROM payments WHERE order_id = '%s'"):format(doc.order_id))
    local r = PAY.post(svc, "/internal/payments/" .. id .. "/cancel", {}, { token = PAY.service_token() })
    assert.are.equal(200, r.status)
    assert.are.equal("canceled", r.json.status)
    env.standin = PAY.start_standin(svc.url .. "/webhooks/stripe", { port = port, duplicate_rate = 0 })
  end)

  it("repairs a payment whose webhook never came and emits its event once", function()
    PAY.standin_config(env.standin, { webhooks = false })
    local p = PAY.create(env)
    local st = PAY.confirm(env, p.provider_id)
    assert.are.equal(200, st)
    assert.are.equal("requires_payment_method", status_of(p.id))
    local run = reconcile()
    assert.is_truthy(run.repaired >= 1)
    assert.are.equal("admin", run.trigger)
    assert.is_string(run.finished_at)
    assert.are.equal("succeeded", status_of(p.id))
    assert.are.equal(1, events_of("payment.completed", p.id))
    assert.are.equal("reconcile", PAY.sql(env, ("SELECT source FROM payment_status_history WHERE payment_id = '%s' AND status = 'succeeded'"):format(p.id)))
    -- the late webhook changes nothing and emits nothing
    PAY.standin_config(env.standin, { webhooks = true })
    local evt
    for _, e in ipairs(PAY.standin_events(env.standin)) do
      if e.type == "payment_intent.succeeded" and e.data.object.id == p.provider_id then evt = e end
    end
    assert.is_truthy(evt)
    local r = PAY.post(env.standin, "/_standin/events/" .. evt.id .. "/resend", {})
    assert.are.equal(200, r.status)
    assert.is_truthy(PAY.eventually(function()
      return PAY.sql(env, ("SELECT count(*) FROM processed_events WHERE event_id = '%s'"):format(evt.id)) == "1"
    end))
    assert.are.equal(1, events_of("payment.completed", p.id))
    -- a second run finds nothing to repair for it, and every run is recorded
    run = reconcile()
    assert.are.equal(0, run.repaired)
    local runs = tonumber(PAY.sql(env, "SELECT count(*) FROM reconciliation_runs WHERE finished_at IS NOT NULL"))
    assert.is_truthy(runs >= 4)
  end)

  it("finishes a refund left pending while Stripe failed, once, and a retry with its key answers it", function()
    local p = PAY.create(env)
    PAY.confirm(env, p.provider_id)
    assert.is_truthy(PAY.eventually(function() return status_of(p.id) == "succeeded" end))
    PAY.standin_config(env.standin, { fail_next = 2 })   -- the attempt and its one retry answer 500
    local key = crypto.uuid4()
    local r = PAY.post(svc, "/payments/" .. p.id .. "/refunds", { amount_cents = 400 }, { token = admin, headers = { ["Idempotency-Key"] = key } })
    assert.are.equal(503, r.status)
    assert.are.equal("pending", PAY.sql(env, ("SELECT status FROM refunds WHERE payment_id = '%s'"):format(p.id)))
    local run = reconcile()
    assert.is_truthy(run.repaired >= 1)
    assert.are.equal("succeeded", PAY.sql(env, ("SELECT status FROM refunds WHERE payment_id = '%s'"):format(p.id)))
    assert.are.equal("400", PAY.sql(env, ("SELECT refunded_cents FROM payments WHERE id = '%s'"):format(p.id)))
    r = PAY.post(svc, "/payments/" .. p.id .. "/refunds", { amount_cents = 400 }, { token = admin, headers = { ["Idempotency-Key"] = key } })
    assert.are.equal(201, r.status)
    assert.are.equal(400, r.json.amount_cents)
    PAY.settle(env, p.provider_id)
    assert.are.equal(1, events_of("payment.refunded", p.id))
    local _, pi = PAY.stripe(env.standin, "GET", "/v1/payment_intents/" .. p.provider_id, { expand = { "latest_charge" } })
    assert.are.equal(400, pi.latest_charge.amount_refunded)
  end)

  it("lets only admins reconcile", function()
    assert.are.equal(403, PAY.post(svc, "/payments/reconcile", {}, { token = PAY.token("buyer") }).status)
    assert.are.equal(401, PAY.post(svc, "/payments/reconcile", {}).status)
    assert.are.equal(400, PAY.post(svc, "/payments/reconcile?min_age_s=x", {}, { token = admin }).status)
  end)
end)
