-- spec/integration/stripe_standin_spec.lua: the local Stripe stand-in's wire format, checked by
-- luacheck: max line length 170
-- driving it with the official `stripe` npm library (spec/fixtures/payment/stripe_client.js):
-- PaymentIntents create/retrieve/confirm/cancel, the test cards, refunds, idempotency keys and
-- Stripe's error shapes as the library reads them. With STRIPE_TEST_KEY set, the same flow
-- runs against Stripe's test mode, so the stand-in's answers can be compared with the real ones.
local cjson = require "cjson"
local PAY = require "support.payment_helpers"

local function flow(base, key)
  local out, rc = PAY.sh(("node spec/fixtures/payment/stripe_client.js flow %s %s"):format(PAY.q(base), PAY.q(key)))
  assert(rc == 0, "the stripe client failed: " .. out)
  return cjson.decode(out)
end

-- What both Stripe and the stand-in must answer to the flow.
local function check(r)
  assert.is_true(r.create.ok)
  assert.is_truthy(r.create.value.id:match("^pi_"))
  assert.are.equal("requires_payment_method", r.create.value.status)
  assert.are.equal(2599, r.create.value.amount)
  assert.is_truthy(r.create.value.client_secret:find(r.create.value.id .. "_secret_", 1, true))
  assert.is_true(r.replay.ok)
  assert.are.equal(r.create.value.id, r.replay.value.id)               -- same Idempotency-Key: same intent
  assert.is_false(r.replay_other_params.ok)
  assert.are.equal("StripeIdempotencyError", r.replay_other_params.type)
  assert.are.equal(r.create.value.id, r.retrieve.value.id)
  assert.are.equal(404, r.missing.statusCode)
  assert.are.equal("resource_missing", r.missing.code)
  assert.are.equal("StripeInvalidRequestError", r.bad_amount.type)
  assert.is_true(r.confirm.ok)
  assert.are.equal("succeeded", r.confirm.value.status)
  assert.are.equal("table", type(r.confirm.value.latest_charge))       -- expand[]=latest_charge
  assert.are.equal("payment_intent_unexpected_state", r.cancel_succeeded.code)
  assert.are.equal(600, r.refund_partial.value.amount)
  assert.are.equal("StripeInvalidRequestError", r.refund_too_much.type)
  assert.are.equal(1999, r.refund_rest.value.amount)
  assert.are.equal("StripeCardError", r.decline.type)
  assert.are.equal(402, r.decline.statusCode)
  assert.are.equal("card_declined", r.decline.code)
  assert.are.equal("requires_payment_method", r.after_decline.value.status)
  assert.are.equal("canceled", r.cancel.value.status)
  assert.are.equal("StripeAuthenticationError", r.bad_key.type)
end

describe("the Stripe stand-in", function()
  it("answers the official stripe library as Stripe does", function()
    local s = PAY.start_standin("", { duplicate_rate = 0 })
    local ok, err = pcall(function() check(flow(s.url, PAY.API_KEY)) end)
    PAY.stop_standin(s)
    assert(ok, err)
  end)

  local live = os.getenv("STRIPE_TEST_KEY")
  local live_it = (live and live ~= "") and it or pending
  live_it("answers the same flow in Stripe's test mode (STRIPE_TEST_KEY)", function()
    check(flow("https://api.stripe.com", live))
  end)
end)
