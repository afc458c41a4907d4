-- spec/integration/notification_reload_spec.lua: templates under hot reload and `mercato check`
-- — an edited template is used for the next event without a restart; a broken one is refused
-- with file:line by `mercato check` and by the reload, and the old templates keep working.
local N = require "support.notification_helpers"

local BIN = os.getenv("MERCATO_BIN") or "build/mercato"

local function write(path, text)
  local f = assert(io.open(path, "w"))
  f:write(text)
  f:close()
end

describe("notification templates", function()
  local dir, svc, subject_file

  setup(function()
    dir = ".run/test/notification-reload-" .. require("crypto").hex(require("crypto").random(3))
    assert(os.execute("mkdir -p " .. dir .. " && cp -r scripts/lib scripts/services " .. dir .. "/") == 0)
    subject_file = dir .. "/services/notification/templates/order.delivered.subject.txt"
    svc = N.start { scripts = dir, env = { HOT_RELOAD = 1, SCRIPTS_DIR = dir } }
  end)

  teardown(function()
    N.stop(svc)
    os.execute("rm -rf " .. dir)
  end)

  local function mail_subject(tag)
    local email = N.email(tag)
    N.publish(N.event("order.delivered", { order_id = require("crypto").uuid4(), email = email }))
    local m = N.wait_mails(function(x) return x.to[1].address == email end, 1)[1]
    assert.truthy(m, "no e-mail for " .. tag)
    return m.subject
  end

  it("picks up an edited template without a restart", function()
    assert.equal("Your order has been delivered", mail_subject("before"))
    write(subject_file, "Delivered: {{ order_id }} is at your door\n")
    local got
    for _ = 1, 50 do
      got = mail_subject("after")
      if got ~= "Your order has been delivered" then break end
      N.sleep(0.1)
    end
    assert.matches("^Delivered: %x+%-.* is at your door$", got)
  end)

  it("refuses a broken template with file:line, in `mercato check` and in a reload", function()
    write(subject_file, "Delivered {{#if order_id}} never closed\n")
    local out, rc = N.sh(("SERVICE=notification SCRIPTS_DIR=%s %s check"):format(dir, BIN))
    assert.are_not.equal(0, rc)
    assert.matches(subject_file:gsub("%p", "%%%0") .. ":1: {{#if}} is never closed", out)
    -- the service keeps the last good templates
    N.sleep(1)
    assert.matches("^Delivered: .* is at your door$", mail_subject("broken"))
    assert.matches("order.delivered.subject.txt:1: {{#if}} is never closed", svc:log())
    local out_ok, rc_ok = N.sh("SERVICE=notification " .. BIN .. " check")
    assert.equal(0, rc_ok, out_ok)
  end)
end)
