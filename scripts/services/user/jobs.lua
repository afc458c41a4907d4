-- scripts/services/user/jobs.lua: start-up bootstrap (admin, internal OAuth client; both
-- idempotent, retried until the database answers), the purge of dead refresh tokens and the
-- re-publishing of token revocation records.
local db = require "db"
local log = require "log"
local accounts = require "services.user.accounts"
local outbox = require "lib.outbox"
local revocations = require "services.user.revocations"

return {
  {
    name = "bootstrap", every = 30,
    run = function()
      local ok, err = accounts.ensure_admin()
      if not ok then log.warn("admin bootstrap failed; retrying", { error = tostring(err) }) end
      ok, err = accounts.ensure_client()
      if not ok then log.warn("service client bootstrap failed; retrying", { error = tostring(err) }) end
    end,
  },
  {
    name = "purge-refresh-tokens", every = 3600,
    run = function()
      local n, err = db.exec("DELETE FROM refresh_tokens WHERE expires_at < now() - interval '7 days'")
      if err then log.warn("refresh token purge failed", { error = tostring(err) }) return end
      if n > 0 then log.info("expired refresh tokens purged", { count = n }) end
    end,
  },
  outbox.purge_entry(),
  -- Token revocation records changed in the last 16 min, written to Redis again: repairs a
  -- write that failed after its change committed, and a Redis that restarted empty.
  { name = "publish-revocations", every = 2, run = revocations.publish_recent },
}
