-- spec/integration/payment_webhooks_spec.lua: POST /webhooks/stripe — Stripe-Signature checked
-- luacheck: max line length 170
-- against headers made by Stripe's own helper (stripe.webhooks.generateTestHeaderString from
-- the npm library): valid, forged, stale, future, several v1, missing, malformed, one byte
-- changed; every order of five events of one PaymentIntent ends in Stripe's final state; 20
-- concurrent deliveries of one event make one change and one outbox event.
local cjson = require "cjson"
local crypto = require "crypto"
local PAY = require "support.payment_helpers"

describe("Stripe webhooks", function()
  local env, svc

  setup(function()
    env = PAY.start { standin = { duplicate_rate = 0 } }
    svc = env.svc
  end)
  teardown(function() PAY.stop(env) end)

  local function deliver(payload, header)
    local headers = { ["Content-Type"] = "application/json" }
    if header then headers["Stripe-Signature"] = header end
    return PAY.request(svc, "POST", "/webhooks/stripe", { body = payload, headers = headers })
  end

  local function event(etype, object, id)
    return cjson.encode { id = id or ("evt_" .. crypto.hex(crypto.random(12))), object = "event", type = etype,
      api_version = "2024-06-20", created = os.time(), livemode = false, data = { object = object } }
  end

  describe("signatures (made by Stripe's generateTestHeaderString)", function()
    local payload = event("customer.created", { id = "cus_1", object = "customer" })
    local now = os.time()
    local h = PAY.sign_headers {
      { payload = payload, secret = PAY.SECRET },
      { payload = payload, secret = "whsec_old_secret", timestamp = now },
      { payload = payload, secret = PAY.SECRET, timestamp = now },
      { payload = payload, secret = PAY.SECRET, timestamp = now - 200 },
    }

    it("accepts a valid one and acknowledges an unknown event type", function()
      local r = deliver(payload, h[1])
      assert.are.equal(200, r.status)
      assert.are.equal("ignored", r.json.outcome)
      assert.are.equal(200, deliver(payload, h[4]).status)   -- 200 s old: within the tolerance
    end)

    it("refuses a forged one, a stale one (301 s) and a future one (over 300 s) with 400", function()
      -- signed here, just before delivery: a "future" header signed earlier drifts into the window
      local t = os.time()
      local fresh = PAY.sign_headers {
        { payload = payload, secret = "whsec_forged" },
        { payload = payload, secret = PAY.SECRET, timestamp = t - 301 },
        { payload = payload, secret = PAY.SECRET, timestamp = t + 310 },
      }
      for i = 1, 3 do
        local r = deliver(payload, fresh[i])
        assert.are.equal(400, r.status)
        assert.are.equal("application/problem+json", r.headers["content-type"])
      end
      assert.is_truthy(deliver(payload, fresh[2]).json.detail:find("tolerance", 1, true))
      assert.is_truthy(deliver(payload, fresh[3]).json.detail:find("tolerance", 1, true))
      assert.is_truthy(deliver(payload, fresh[1]).json.detail:find("no signature matches", 1, true))
    end)

    it("accepts several v1 of which one is valid (secret rotation)", function()
      local old_sig = h[2]:match("v1=(%x+)")
      local t, new_sig = h[3]:match("^t=(%d+),v1=(%x+)")
      assert.are.equal(200, deliver(payload, ("t=%s,v1=%s,v1=%s"):format(t, old_sig, new_sig)).status)
      assert.are.equal(400, deliver(payload, ("t=%s,v1=%s,v1=%s"):format(t, old_sig, old_sig)).status)
    end)

    it("refuses a missing or malformed header, and a body changed by one byte", function()
      assert.are.equal(400, deliver(payload, nil).status)
      assert.are.equal(400, deliver(payload, "t=abc,v1=" .. string.rep("0", 64)).status)
      assert.are.equal(400, deliver(payload, "v1=" .. h[1]:match("v1=(%x+)")).status)
      assert.are.equal(400, deliver(payload, "garbage").status)
      local changed = payload:gsub("cus_1", "cus_2")
      assert.are.equal(#payload, #changed)
      assert.are.equal(400, deliver(changed, h[1]).status)
      assert.are.equal(200, deliver(payload, h[1]).status)
    end)

    it("refuses a signed body that is not an event with 400", function()
      local bad = PAY.sign_headers { { payload = "[1,2]", secret = PAY.SECRET } }
      assert.are.equal(400, deliver("[1,2]", bad[1]).status)
    end)
  end)

  describe("ordering and duplicates", function()
    -- Five events of one PaymentIntent, as Stripe may send them: a declined card, 3-D Secure,
    -- processing, success, a partial refund. Stripe's final state: succeeded, 500 refunded.
    local function five_events(p)
      local pi = { id = p.provider_id, object = "payment_intent", amount = 2599, currency = "eur", metadata = { payment_id = p.id } }
      local function with(status, extra)
        local o = {}
        for k, v in pairs(pi) do o[k] = v end
        o.status = status
        for k, v in pairs(extra or {}) do o[k] = v end
        return o
      end
      return {
        event("payment_intent.payment_failed", with("requires_payment_method",
          { last_payment_error = { code = "card_declined", decline_code = "insufficient_funds" } })),
        event("payment_intent.requires_action", with("requires_action")),
        event("payment_intent.processing", with("processing")),
        event("payment_intent.succeeded", with("succeeded", { amount_received = 2599 })),
        event("charge.refunded", { id = "ch_" .. p.id:sub(1, 8), object = "charge", payment_intent = p.provider_id,
          amount = 2599, amount_refunded = 500, refunded = false,
          refunds = { object = "list", data = { { id = "re_" .. crypto.hex(crypto.random(8)), amount = 500, status = "succeeded", metadata = {} } } } }),
      }
    end

    local function permutations(n)
      local out, a = {}, {}
      for i = 1, n do a[i] = i end
      local function gen(k)
        if k == 1 then out[#out + 1] = { unpack(a) } return end
        for i = 1, k do
          gen(k - 1)
          local j = (k % 2 == 0) and i or 1
          a[j], a[k] = a[k], a[j]
        end
      end
      gen(n)
      return out
    end

    it("ends every one of the 120 orders of five events in Stripe's final state, never going back", function()
      local perms = permutations(5)
      assert.are.equal(120, #perms)
      local payments, to_sign, payloads = {}, {}, {}
      for i = 1, #perms do
        payments[i] = PAY.create(env)
        payloads[i] = five_events(payments[i])
        for _, e in ipairs(payloads[i]) do to_sign[#to_sign + 1] = { payload = e, secret = PAY.SECRET } end
      end
      local headers = PAY.sign_headers(to_sign)
      for i, perm in ipairs(perms) do
        for _, k in ipairs(perm) do
          local r = deliver(payloads[i][k], headers[(i - 1) * 5 + k])
          assert.are.equal(200, r.status, r.body)
        end
      end
      local ids = {}
      for i, p in ipairs(payments) do ids[i] = "'" .. p.id .. "'" end
      local list = table.concat(ids, ",")
      local rows = PAY.sql(env, ("SELECT count(*) FROM payments WHERE id IN (%s) AND status = 'succeeded' AND refunded_cents = 500"):format(list))
      assert.are.equal("120", rows)
      assert.are.equal("120", PAY.sql(env, ("SELECT count(*) FROM outbox WHERE type = 'payment.completed' AND payload->'data'->>'payment_id' IN (%s)")
        :format(list:gsub("'", "'"))))
      assert.are.equal("120", PAY.sql(env, ("SELECT count(*) FROM outbox WHERE type = 'payment.refunded' AND payload->'data'->>'payment_id' IN (%s)"):format(list)))
      -- forward only: along each payment's history the rank only grows, and succeeded is last
      local regress = PAY.sql(env, ([[SELECT count(*) FROM (SELECT status, lag(status) OVER (PARTITION BY payment_id ORDER BY id) AS prev
        FROM payment_status_history WHERE payment_id IN (%s)) h WHERE prev = 'succeeded' OR (prev IN ('processing', 'requires_action')
        AND status IN ('failed', 'requires_payment_method'))]]):format(list))
      assert.are.equal("0", regress)
      print(("# 120 orders x 5 events: all succeeded with 500 refunded, 120 payment.completed, 120 payment.refunded"))
    end)

    it("makes one status change and one outbox event from 20 concurrent deliveries of one event", function()
      local p = PAY.create(env)
      local payload = event("payment_intent.succeeded", { id = p.provider_id, object = "payment_intent", status = "succeeded",
        amount = 2599, metadata = { payment_id = p.id } })
      local header = PAY.sign_headers { { payload = payload, secret = PAY.SECRET } }[1]
      local reqs = {}
      for i = 1, 20 do
        reqs[i] = { method = "POST", path = "/webhooks/stripe", body = payload,
          headers = { ["Content-Type"] = "application/json", ["Stripe-Signature"] = header } }
      end
      local res = PAY.concurrently(svc.port, reqs)
      local outcomes = {}
      for _, r in ipairs(res) do
        assert.are.equal(200, r.status, r.body)
        local o = cjson.decode(r.body).outcome
        outcomes[o] = (outcomes[o] or 0) + 1
      end
      assert.are.equal(1, outcomes.applied)
      assert.are.equal(19, outcomes.duplicate)
      assert.are.equal("1", PAY.sql(env, ("SELECT count(*) FROM payment_status_history WHERE payment_id = '%s' AND status = 'succeeded'"):format(p.id)))
      assert.are.equal("1", PAY.sql(env, ("SELECT count(*) FROM outbox WHERE type = 'payment.completed' AND payload->'data'->>'payment_id' = '%s'"):format(p.id)))
    end)
  end)
end)
