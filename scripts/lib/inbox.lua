-- scripts/lib/inbox.lua: at-most-once processing of at-least-once deliveries. A consumer claims
-- the event id inside the transaction of its work; a redelivered event finds its claim and is
-- skipped, and a rolled-back attempt leaves no claim behind (ARCHITECTURE.md "Reliability
-- rules": the `redelivered` flag is a hint, the inbox table is the truth).
--
--   db.tx(function()
--     if not assert(inbox.claim(event.id, "notifications")) then return end   -- seen before
--     ... the work ...
--   end)
--
-- Tables: copy scripts/lib/sql/inbox.sql unchanged into services/<name>/migrations/NNN_inbox.sql.
-- lib.consumer does all of this for you; use lib.inbox directly only in your own loops.
local db = require "db"

local _M = {}

local CLAIM = "INSERT INTO inbox (event_id, consumer) VALUES ($1, $2) ON CONFLICT DO NOTHING"
local PURGE = "DELETE FROM inbox WHERE processed_at < now() - make_interval(secs => $1)"

-- inbox.claim(event_id, consumer) → true (first time), false (already processed), or nil, err,
-- code. Must run inside the db.tx of the work (checked when the db binding has db.in_tx).
function _M.claim(event_id, consumer)
  if type(event_id) ~= "string" or type(consumer) ~= "string" or consumer == "" then
    error("inbox.claim: expecting an event id and a consumer name (strings)", 2)
  end
  if db.in_tx and not db.in_tx() then
    error("inbox.claim must run inside the db.tx of the consumer's work", 2)
  end
  local n, err, code = db.exec(CLAIM, event_id, consumer)
  if not n then return nil, err, code end
  return n == 1
end

-- inbox.purge(keep_seconds) → rows deleted: claims older than keep_seconds (default 30 days;
-- keep them far longer than any message can sit in a queue or DLQ before being replayed).
function _M.purge(keep_seconds)
  return db.exec(PURGE, keep_seconds or 30 * 86400)
end

return _M
