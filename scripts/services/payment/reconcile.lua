-- scripts/services/payment/reconcile.lua: compare the payments that are not final with Stripe,
-- luacheck: max line length 170
-- repair them (forward only, as a webhook would: the same store.advance, so a missed event is
-- emitted once, and never again when its webhook arrives late), finish refunds left pending
-- (same Idempotency-Key at Stripe) and record the run.
-- Run by the job (jobs.lua, every RECONCILE_EVERY_S) and by POST /payments/reconcile (admin).
local crypto = require "crypto"
local db = require "db"
local log = require "log"
local metrics = require "metrics"
local payments = require "services.payment.handlers.payments"
local provider = require "services.payment.provider"
local refunds = require "services.payment.handlers.refunds"
local store = require "services.payment.store"

local _M = {}

local BATCH = 200

-- The reconciliation-drift alert and the payments dashboard read these (helm/mercato/rules).
local runs = metrics.counter("payment_reconciliation_runs_total", "Reconciliation runs, by trigger", { "trigger" })
local repairs = metrics.counter("payment_reconciliation_repairs_total",
  "Payments and refunds a reconciliation run repaired (a webhook that never came, a create or refund left pending)")
local failures = metrics.counter("payment_reconciliation_failures_total", "Payments and refunds a reconciliation run could not check")

-- One payment: → "repaired" | "checked" | "failed".
local function check(p)
  local before = p.status
  if p.provider_id == nil or p.provider_id == db.null then
    -- Stripe never answered our create: ask again with the same Idempotency-Key (the order id).
    local row, err = payments.ensure_intent(p, "reconcile")
    if not row then
      log.warn("reconcile: create not repaired", { payment_id = p.id, error = tostring(err) })
      return "failed"
    end
    return row.status ~= before and "repaired" or "checked"
  end
  local pi, err = provider.retrieve_intent(p.provider_id)
  if not pi then
    log.warn("reconcile: retrieve failed", { payment_id = p.id, error = tostring(err) })
    return "failed"
  end
  local row, terr = payments.adopt_intent(p, pi, "reconcile")
  if not row then
    log.warn("reconcile: update failed", { payment_id = p.id, error = tostring(terr) })
    return "failed"
  end
  return row.status ~= before and "repaired" or "checked"
end

-- Run once; trigger "job" | "admin"; min_age_s: leave payments younger than this alone (their
-- webhooks are still on the way). → the run record, or nil, err, code.
function _M.run(trigger, min_age_s)
  local run, err, code = db.query_one("INSERT INTO reconciliation_runs (id, trigger) VALUES ($1, $2) RETURNING id, trigger, started_at",
    crypto.uuid7(), trigger)
  if not run then return nil, err, code end
  local rows
  rows, err, code = db.query("SELECT " .. store.COLUMNS .. [[ FROM payments
    WHERE status NOT IN ('succeeded', 'canceled') AND updated_at <= clock_timestamp() - make_interval(secs => $1)
    ORDER BY updated_at LIMIT $2]], min_age_s or 0, BATCH)
  local counts = { checked = 0, repaired = 0, failed = 0 }
  for _, p in ipairs(rows or {}) do
    local outcome = check(p)
    counts.checked = counts.checked + 1
    if outcome ~= "checked" then counts[outcome] = counts[outcome] + 1 end
  end
  if not rows then
    counts.failed = counts.failed + 1
    log.warn("reconcile: listing open payments failed", { error = tostring(err), code = code })
  end
  -- Refunds left pending (Stripe was down, or the request died): ask Stripe again, same key.
  local pending, perr, pcode = db.query([[SELECT id, payment_id, amount_cents FROM refunds WHERE status = 'pending'
    AND (locked_until IS NULL OR locked_until < clock_timestamp()) AND created_at <= clock_timestamp() - make_interval(secs => $1)
    ORDER BY created_at LIMIT $2]], min_age_s or 0, BATCH)
  if not pending then
    counts.failed = counts.failed + 1
    log.warn("reconcile: listing pending refunds failed", { error = tostring(perr), code = pcode })
  end
  for _, r in ipairs(pending or {}) do
    local outcome = refunds.resume(r)
    counts.checked = counts.checked + 1
    counts[outcome] = counts[outcome] + 1
  end
  local done, uerr, ucode = db.query_one([[UPDATE reconciliation_runs SET finished_at = clock_timestamp(), checked = $2,
    repaired = $3, failed = $4 WHERE id = $1 RETURNING id, trigger, started_at, finished_at, checked, repaired, failed]],
    run.id, counts.checked, counts.repaired, counts.failed)
  if not done then return nil, uerr, ucode end
  runs:inc(1, tostring(done.trigger))
  if counts.repaired > 0 then repairs:inc(counts.repaired) end
  if counts.failed > 0 then failures:inc(counts.failed) end
  if counts.repaired > 0 or counts.failed > 0 then log.info("reconciliation run", done) end
  return done
end

return _M
