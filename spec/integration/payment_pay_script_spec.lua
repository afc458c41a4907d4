-- spec/integration/payment_pay_script_spec.lua: scripts/dev/pay ORDER_ID [succeed|fail] — like
-- `stripe trigger`, it confirms the order's PaymentIntent at the stand-in with a test card and
-- returns once the signed webhook has moved the payment.
local PAY = require "support.payment_helpers"

describe("scripts/dev/pay", function()
  local env, dir

  setup(function()
    env = PAY.start()
    dir = ".run/test/payment/pay-" .. env.svc.port
    os.execute("mkdir -p " .. dir)
    local f = assert(io.open(dir .. "/env", "w"))
    f:write(("DATABASE_URL_PAYMENT=%s\nSTRIPE_API_BASE=%s\nSTRIPE_API_KEY=%s\n")
      :format(PAY.q(env.db_url), env.standin.url, PAY.API_KEY))
    f:close()
  end)
  teardown(function() PAY.stop(env) end)

  local function pay(...)
    return PAY.sh("RUN_DIR=" .. dir .. " scripts/dev/pay " .. table.concat({ ... }, " "))
  end

  it("completes an order's payment (succeed) and fails another one (fail)", function()
    local _, doc = PAY.create(env)
    local out, rc = pay(doc.order_id)
    assert.are.equal(0, rc, out)
    assert.is_truthy(out:find("succeeded", 1, true))
    assert.are.equal("succeeded", PAY.sql(env, ("SELECT status FROM payments WHERE order_id = '%s'"):format(doc.order_id)))
    local _, doc2 = PAY.create(env)
    out, rc = pay(doc2.order_id, "fail")
    assert.are.equal(0, rc, out)
    assert.are.equal("failed", PAY.sql(env, ("SELECT status FROM payments WHERE order_id = '%s'"):format(doc2.order_id)))
  end)

  it("refuses a bad order id, an unknown order and a bad outcome", function()
    local _, rc = pay("nope")
    assert.are.equal(2, rc)
    _, rc = pay("00000000-0000-4000-8000-000000000000")
    assert.are.equal(1, rc)
    _, rc = pay("00000000-0000-4000-8000-000000000000", "maybe")
    assert.are.equal(2, rc)
  end)
end)
