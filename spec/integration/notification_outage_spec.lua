-- spec/integration/notification_outage_spec.lua: the notification service through failures —
-- the SMTP server stopped for 60 s (retried with backoff, everything sent once it returns,
-- nothing twice), the process SIGKILLed mid-send (no e-mail lost, at most one duplicate per
-- kill, counted and reported), and a burst of 1,000 events (occurred_at → accepted by SMTP).
local cjson = require "cjson.safe"
local http = require "http"
local stats = require "support.stats"
local N = require "support.notification_helpers"

local function sh(cmd) return N.sh(cmd) end

local function count(svc, where)
  return tonumber(N.sql(svc, "SELECT count(*) FROM notifications WHERE " .. where))
end

local function wait_until(pred, timeout, step)
  local deadline = N.now() + timeout
  repeat
    if pred() then return true end
    N.sleep(step or 0.2)
  until N.now() > deadline
  return pred()
end

-- How many e-mails maildev holds per recipient, for recipients with the given prefix.
local function per_recipient(prefix)
  local r = http.request { method = "GET", url = os.getenv("SMTP_API_URL"), timeout_ms = 30000 }
  assert(r and r.status == 200, "maildev did not answer")
  local counts = {}
  for _, m in ipairs(cjson.decode(r.body) or {}) do
    local a = m.to and m.to[1] and m.to[1].address or ""
    if a:sub(1, #prefix) == prefix then counts[a] = (counts[a] or 0) + 1 end
  end
  return counts
end

local function clear_mailbox()
  http.request { method = "DELETE", url = os.getenv("SMTP_API_URL") .. "/all", timeout_ms = 30000 }
end

local function publish_many(n, prefix, etype)
  local emails = {}
  for i = 1, n do
    local email = ("%s%04d@example.com"):format(prefix, i)
    emails[i] = email
    N.publish(N.event(etype or "order.delivered", { order_id = require("crypto").uuid4(), email = email }))
  end
  return emails
end

describe("notification service under failure", function()
  it("retries with backoff while SMTP is down for 60 s, then sends everything exactly once", function()
    local svc = N.start { env = { NOTIFY_RETRY_BASE_S = 1, NOTIFY_RETRY_MAX_S = 8, NOTIFY_MAX_ATTEMPTS = 50 } }
    local ok, err = pcall(function()
      sh("scripts/dev/stack.sh stop maildev")
      local down_at = N.now()
      local prefix = "outage-" .. require("crypto").hex(require("crypto").random(3)) .. "-"
      local emails = publish_many(10, prefix)
      assert.is_true(wait_until(function() return count(svc, "attempts >= 1 AND status = 'queued'") == 10 end, 15),
        "the deliveries were not attempted")
      local q = "SELECT last_error FROM notifications WHERE last_error IS NOT NULL LIMIT 1"
      assert.matches("^smtp: ", N.sql(svc, q))
      N.sleep(math.max(0, 60 - (N.now() - down_at)))
      -- backoff, not a busy loop: with base 1 s, cap 8 s, 60 s allow about 6 + 45/6 ≈ 13 attempts
      local attempts = N.sql(svc, "SELECT min(attempts) || ' ' || max(attempts) FROM notifications")
      local lo, hi = attempts:match("(%d+) (%d+)")
      print(("# SMTP down 60 s: attempts per delivery %s–%s (a busy loop would make thousands)"):format(lo, hi))
      assert.is_true(tonumber(lo) >= 4 and tonumber(hi) <= 20, "attempts " .. attempts)
      assert.equal(0, count(svc, "status <> 'queued'"))
      -- the jitter spreads the retries: not every row is due at the same instant
      assert.is_true(tonumber(N.sql(svc, "SELECT count(DISTINCT next_attempt_at) FROM notifications")) > 1)
      sh("scripts/dev/stack.sh start maildev")
      local back_at = N.now()
      assert.is_true(wait_until(function() return count(svc, "status = 'sent'") == 10 end, 30), "not everything was sent")
      local recovery = N.now() - back_at
      print(("# all 10 sent %.1f s after SMTP returned"):format(recovery))
      -- the first success makes the other deferred deliveries due at once (cap 8 s: at most ~8 s + sending)
      assert.is_true(recovery < 15, "recovery took " .. recovery .. " s")
      N.sleep(0.5)
      local got = per_recipient(prefix)
      for _, e in ipairs(emails) do assert.equal(1, got[e], e) end
      local metrics = N.get(svc, "/metrics").body
      assert.matches('notifications_retried_total{type="order.delivered"} %d+', metrics)
    end)
    sh("scripts/dev/stack.sh start maildev")
    N.stop(svc)
    assert(ok, err)
  end)

  it("loses no e-mail and duplicates at most one per SIGKILL mid-send", function()
    clear_mailbox()
    local svc = N.start()
    local ok, err = pcall(function()
      local prefix = "kill-" .. require("crypto").hex(require("crypto").random(3)) .. "-"
      -- The sender keeps up with a publisher (a few ms an e-mail), so the kills come while
      -- events are still arriving: each lands while the consumer and the sender are busy.
      local total, kills, emails = 300, 0, {}
      for round = 1, 3 do
        local batch = publish_many(100, prefix .. round .. "-")
        for _, e in ipairs(batch) do emails[#emails + 1] = e end
        local sent = count(svc, "status = 'sent'")
        svc:stop("KILL")
        kills = kills + 1
        print(("# SIGKILL %d with %d of %d published events sent"):format(kills, sent, round * 100))
        N.restart(svc)
      end
      assert.is_true(wait_until(function() return count(svc, "status = 'sent'") == total end, 120), "not all were sent")
      assert.equal(total, count(svc, "true"))   -- one delivery per event: the inbox held across the kills
      N.sleep(0.5)
      local got = per_recipient(prefix)
      local lost, dups = 0, 0
      for _, e in ipairs(emails) do
        local c = got[e] or 0
        if c == 0 then lost = lost + 1 end
        if c > 1 then dups = dups + c - 1 end
      end
      print(("# %d kills: %d e-mails lost, %d duplicates (at most one per kill allowed)"):format(kills, lost, dups))
      assert.equal(0, lost)
      assert.is_true(dups <= kills, dups .. " duplicates for " .. kills .. " kills")
    end)
    N.stop(svc)
    assert(ok, err)
  end)

  it("mails a burst of 1,000 events and reports occurred_at → SMTP accepted", function()
    clear_mailbox()
    local svc = N.start()
    local ok, err = pcall(function()
      local prefix = "burst-" .. require("crypto").hex(require("crypto").random(3)) .. "-"
      local t0 = N.now()
      publish_many(1000, prefix)
      local published = N.now() - t0
      local all_sent = wait_until(function() return count(svc, "status = 'sent'") == 1000 end, 180)
      assert.is_true(all_sent, "the burst was not sent")
      local took = N.now() - t0
      local rows = N.sql(svc, "SELECT extract(epoch FROM sent_at - occurred_at) FROM notifications")
      local lat = {}
      for v in rows:gmatch("[^\n]+") do lat[#lat + 1] = tonumber(v) end
      table.sort(lat)
      print(("# burst of 1000: published in %.1f s, all sent in %.1f s; occurred_at → SMTP accepted p50 %s, p99 %s, max %s")
        :format(published, took, stats.ms(stats.percentile(lat, 0.5)), stats.ms(stats.percentile(lat, 0.99)),
          stats.ms(lat[#lat])))
      assert.equal(1000, #lat)
      assert.equal(0, count(svc, "attempts <> 1"))
    end)
    clear_mailbox()
    N.stop(svc)
    assert(ok, err)
  end)
end)
