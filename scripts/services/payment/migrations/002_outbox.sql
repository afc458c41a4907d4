-- The transactional outbox (lib.outbox; ARCHITECTURE.md "Events and the saga"). Not applied from
-- here: a service that publishes events copies this file, unchanged, into its own migrations
-- as the next number (services/<name>/migrations/NNN_outbox.sql). Migrations are checksummed,
-- so a later change to this file is a new migration in each service, never an edit.
CREATE TABLE outbox (
    id          uuid        PRIMARY KEY,                 -- the envelope id (uuid v7), AMQP message_id
    type        text        NOT NULL,                    -- routing key and AMQP type
    payload     jsonb       NOT NULL,                    -- the whole CONTRACT §7 envelope
    created_at  timestamptz NOT NULL DEFAULT clock_timestamp(),
    sent_at     timestamptz,                             -- NULL until the broker confirmed it
    attempts    integer     NOT NULL DEFAULT 0,          -- failed publish attempts
    last_error  text
);

-- The relay reads only unsent rows, oldest first: keep that index small.
CREATE INDEX outbox_unsent_idx ON outbox (created_at, id) WHERE sent_at IS NULL;
-- lib.outbox.purge deletes sent rows past their retention.
CREATE INDEX outbox_sent_at_idx ON outbox (sent_at) WHERE sent_at IS NOT NULL;
