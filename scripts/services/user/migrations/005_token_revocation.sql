-- When a user's access tokens stopped being what they say: tokens issued before
-- tokens_revoked_at are refused (the account was disabled); tokens issued before role_changed_at
-- carry the current role. Every service's host reads the copy of these in Redis
-- (services/user/revocations.lua, host/revocation.c).
ALTER TABLE users ADD COLUMN tokens_revoked_at timestamptz, ADD COLUMN role_changed_at timestamptz;
CREATE INDEX users_token_changes ON users (greatest(tokens_revoked_at, role_changed_at))
    WHERE tokens_revoked_at IS NOT NULL OR role_changed_at IS NOT NULL;
