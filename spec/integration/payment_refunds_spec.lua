-- spec/integration/payment_refunds_spec.lua: refunds — full and partial, never more than
-- luacheck: max line length 170
-- captured (also under 20 concurrent requests with different keys), Idempotency-Key honoured
-- (20 concurrent requests with one key → one refund; same key + other body → 422), admin and
-- the order service only, payment.refunded once per refund even when Stripe's charge.refunded
-- webhook arrives too.
local cjson = require "cjson"
local crypto = require "crypto"
local PAY = require "support.payment_helpers"

describe("refunds", function()
  local env, svc
  local admin = PAY.token("admin")

  setup(function()
    env = PAY.start()
    svc = env.svc
  end)
  teardown(function() PAY.stop(env) end)

  local function paid(amount)
    local p = PAY.create(env, { amount_cents = amount or 2599 })
    PAY.confirm(env, p.provider_id)
    assert.is_truthy(PAY.eventually(function()
      return PAY.sql(env, ("SELECT status FROM payments WHERE id = '%s'"):format(p.id)) == "succeeded"
    end))
    return p
  end

  local function refund(p, doc, key, token)
    local headers = key and { ["Idempotency-Key"] = key } or nil
    return PAY.post(svc, "/payments/" .. p.id .. "/refunds", doc, { token = token or admin, headers = headers })
  end

  local function sql_n(fmt, ...) return tonumber(PAY.sql(env, fmt:format(...))) end

  it("refunds partially, then the rest by default, then refuses more with 409", function()
    local p = paid(2000)
    local r = refund(p, { amount_cents = 700 })
    assert.are.equal(201, r.status, r.body)
    assert.are.equal(700, r.json.amount_cents)
    assert.are.equal("succeeded", r.json.status)
    assert.are.equal(p.id, r.json.payment_id)
    r = refund(p, {})
    assert.are.equal(201, r.status, r.body)
    assert.are.equal(1300, r.json.amount_cents)
    r = refund(p, { amount_cents = 1 })
    assert.are.equal(409, r.status)
    assert.are.equal(2000, sql_n("SELECT refunded_cents FROM payments WHERE id = '%s'", p.id))
    PAY.settle(env, p.provider_id)   -- charge.refunded webhooks (some twice) answered: they must not add events
    assert.are.equal(2, sql_n("SELECT count(*) FROM outbox WHERE type = 'payment.refunded' AND payload->'data'->>'payment_id' = '%s'", p.id))
    assert.are.equal(2000, sql_n([[SELECT max((payload->'data'->>'refunded_total_cents')::int) FROM outbox
      WHERE type = 'payment.refunded' AND payload->'data'->>'payment_id' = '%s']], p.id))
    local _, pi = PAY.stripe(env.standin, "GET", "/v1/payment_intents/" .. p.provider_id, { expand = { "latest_charge" } })
    assert.are.equal(2000, pi.latest_charge.amount_refunded)
  end)

  it("refuses bad requests: unpaid payment 409, bad amount 422, buyer 403, unknown 404", function()
    local p = PAY.create(env)
    assert.are.equal(409, refund(p, {}).status)
    local q = paid()
    assert.are.equal(422, refund(q, { amount_cents = 0 }).status)
    assert.are.equal(422, refund(q, { amount_cents = "5" }).status)
    assert.are.equal(400, refund(q, { amount = 5 }).status)
    assert.are.equal(403, refund(q, {}, nil, PAY.token("buyer")).status)
    assert.are.equal(404, PAY.post(svc, "/payments/" .. crypto.uuid4() .. "/refunds", {}, { token = admin }).status)
    assert.are.equal(409, refund(q, { amount_cents = 999999 }).status)
    assert.are.equal(400, refund(q, {}, string.rep("k", 300)).status)
  end)

  it("answers the first refund again for the same Idempotency-Key, and 422 for another body", function()
    local p = paid()
    local key = crypto.uuid4()
    local a = refund(p, { amount_cents = 100 }, key)
    local b = refund(p, { amount_cents = 100 }, key)
    assert.are.equal(201, a.status)
    assert.are.equal(201, b.status)
    assert.are.equal(a.json.id, b.json.id)
    assert.are.equal(422, refund(p, { amount_cents = 200 }, key).status)
    assert.are.equal(1, sql_n("SELECT count(*) FROM refunds WHERE payment_id = '%s'", p.id))
  end)

  it("makes one refund from 20 concurrent requests with one Idempotency-Key", function()
    local p = paid()
    local key = crypto.uuid4()
    local reqs = {}
    for i = 1, 20 do
      reqs[i] = { method = "POST", path = "/payments/" .. p.id .. "/refunds", body = '{"amount_cents": 300}',
        headers = { Authorization = "Bearer " .. admin, ["Content-Type"] = "application/json", ["Idempotency-Key"] = key } }
    end
    local res = PAY.concurrently(svc.port, reqs)
    local by, ids = {}, {}
    for _, r in ipairs(res) do
      by[r.status] = (by[r.status] or 0) + 1
      if r.status == 201 then ids[cjson.decode(r.body).id] = true end
    end
    assert.is_truthy((by[201] or 0) >= 1)
    assert.are.equal(20, (by[201] or 0) + (by[409] or 0))
    local n = 0
    for _ in pairs(ids) do n = n + 1 end
    assert.are.equal(1, n)
    assert.are.equal(1, sql_n("SELECT count(*) FROM refunds WHERE payment_id = '%s'", p.id))
    assert.are.equal(300, sql_n("SELECT refunded_cents FROM payments WHERE id = '%s'", p.id))
    print(("# 20 concurrent refunds, one key: %d x 201 (one refund), %d x 409 in progress"):format(by[201] or 0, by[409] or 0))
  end)

  it("never refunds more than captured under 20 concurrent requests with different keys", function()
    local p = paid(1000)
    local reqs = {}
    for i = 1, 20 do
      reqs[i] = { method = "POST", path = "/internal/payments/" .. p.id .. "/refunds", body = '{"amount_cents": 150}',
        headers = { Authorization = "Bearer " .. PAY.service_token(), ["Content-Type"] = "application/json", ["Idempotency-Key"] = crypto.uuid4() } }
    end
    local res = PAY.concurrently(svc.port, reqs)
    local by = {}
    for _, r in ipairs(res) do by[r.status] = (by[r.status] or 0) + 1 end
    assert.are.equal(6, by[201])        -- 6 x 150 = 900 <= 1000 < 7 x 150
    assert.are.equal(14, by[409])
    assert.are.equal(900, sql_n("SELECT refunded_cents FROM payments WHERE id = '%s'", p.id))
    local _, pi = PAY.stripe(env.standin, "GET", "/v1/payment_intents/" .. p.provider_id, { expand = { "latest_charge" } })
    assert.are.equal(900, pi.latest_charge.amount_refunded)
    print(("# 20 concurrent refunds of 150 on 1000, different keys: %d x 201, %d x 409, 900 refunded"):format(by[201], by[409]))
  end)
end)
