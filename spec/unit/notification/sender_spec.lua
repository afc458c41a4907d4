-- services.notification.sender: the retry schedule (exponential, capped, jittered) and the
-- configuration it reads.
-- Loaded by path: unit specs run without SERVICE, so only lib/ is in the module snapshot.
local sender = dofile("scripts/services/notification/sender.lua")

describe("notification sender", function()
  it("backs off exponentially from the base, capped, with half of each delay random", function()
    for n = 1, 12 do
      local full = math.min(600, 2 * 2 ^ (n - 1))
      local lo, hi = math.huge, 0
      for _ = 1, 200 do
        local d = sender.backoff(n, 2, 600)
        lo, hi = math.min(lo, d), math.max(hi, d)
      end
      assert.is_true(lo >= full / 2 and hi <= full, ("attempt %d: %g..%g outside %g..%g"):format(n, lo, hi, full / 2, full))
      assert.is_true(hi - lo > full / 10, "attempt " .. n .. " has no jitter")
    end
  end)

  it("reads its settings with sane defaults", function()
    local cfg = sender.config()
    assert.equal(8, cfg.max_attempts)
    assert.equal(2, cfg.base)
    assert.equal(600, cfg.cap)
    assert.equal(1, cfg.senders)
    assert.equal(0.1, cfg.poll)
    assert.matches("<no%-reply@", cfg.from)
  end)
end)
