-- Idempotency keys (lib.idempotency, for routes declaring `idempotency = true`): the first
-- answer to a key is stored here and replayed byte for byte for 24 h (CONTRACT §3, Stripe's
-- semantics). Not applied from here: a service copies this file, unchanged, into its own
-- migrations as the next number (services/<name>/migrations/NNN_idempotency.sql), beside the
-- business rows it protects.
CREATE TABLE idempotency_keys (
    caller        text        NOT NULL,     -- the token's sub ('' for an anonymous caller)
    route         text        NOT NULL,     -- "POST /orders": a key is scoped to caller and route
    key           text        NOT NULL CHECK (length(key) BETWEEN 1 AND 255),
    request_hash  text        NOT NULL,     -- sha256 of method, path, query and body
    locked_until  timestamptz,              -- in flight until then; past it, another try may take over
    status        integer,                  -- the stored answer (NULL while in flight)
    headers       jsonb,
    body          text,
    created_at    timestamptz NOT NULL DEFAULT now(),
    expires_at    timestamptz NOT NULL,
    PRIMARY KEY (caller, route, key)
);

-- lib.idempotency.purge: expired keys.
CREATE INDEX idempotency_keys_expires_at_idx ON idempotency_keys (expires_at);
